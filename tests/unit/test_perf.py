"""ta_train.perf: training FLOPs per token against torch's own FLOP counter on a real Llama."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ta_train.config import ArchConfig, ModelConfig
from ta_train.model import random_llama
from ta_train.perf import matmul_params, mfu, train_flops_per_token
from ta_train.plan_memory import lora_params

ARCH = ArchConfig(n_params=0, n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=4,
                  intermediate_size=128, vocab_size=512, max_positions=256, tie_embeddings=False)


def _model(tied: bool):
    arch = ArchConfig(**{**ARCH.__dict__, "tie_embeddings": tied})
    cfg = ModelConfig(name="t", name_or_path="t", chat_family="chatml", arch=arch, random_init=True)
    model = random_llama(cfg, torch.float32, "eager")
    arch.n_params = sum(p.numel() for p in model.parameters())
    return model, arch


def _counted_flops(model, seq_len: int, batch: int = 2) -> float:
    ids = torch.randint(0, 512, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.float().sum().backward()
    return counter.get_total_flops() / (batch * seq_len)


@pytest.mark.parametrize("tied", [False, True])
def test_full_finetune_flops_match_torch_counter(tied):
    model, arch = _model(tied)
    counted = _counted_flops(model, seq_len=64)
    # The counter sees matmuls only (no norms, softmax, rotary): PaLM's formula counts the same terms.
    assert train_flops_per_token(arch, 64) == pytest.approx(counted, rel=0.01)


def test_lora_flops_drop_frozen_weight_gradients():
    from peft import LoraConfig, get_peft_model

    model, arch = _model(False)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(targets), lora_dropout=0.0))
    # As training with gradient checkpointing does: the embedding output requires grad, so the first
    # layer's input gradients are computed too (without it autograd skips them: 1/L of the q/k/v term).
    model.enable_input_require_grads()
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_adapter == lora_params(arch, targets, 8)
    counted = _counted_flops(model, seq_len=64)
    assert train_flops_per_token(arch, 64, adapter_params=n_adapter) == pytest.approx(counted, rel=0.01)


def test_matmul_params_excludes_only_untied_embedding():
    arch = ArchConfig(**{**ARCH.__dict__, "n_params": 1000_000})
    assert matmul_params(arch) == 1000_000 - 512 * 64
    arch.tie_embeddings = True
    assert matmul_params(arch) == 1000_000


def test_mfu_arithmetic_and_missing_peak():
    # 1e4 tokens/s x 1e9 FLOPs/token = 1e13 FLOP/s over 2 x 10 TFLOP/s = 0.5
    assert mfu(1e4, 1e9, 10.0, devices=2) == pytest.approx(0.5)
    assert mfu(1e4, 1e9, None) is None
    assert mfu(1e4, 1e9, 0.0) is None
