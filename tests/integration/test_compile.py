"""perf.compile trains the tiny Llama for real: the same losses as eager, the same saved names.

Tolerance: fp32 on CPU. Inductor fuses RMSNorm, rotary and the MLP's elementwise ops into C++
loops that sum in a different order than ATen's kernels, so each op differs from eager by float32
rounding (~1e-7 relative); over a forward/backward and three AdamW steps these stay below 1e-5
relative on a 9-13 cross-entropy (measured with inductor: at most 5.1e-7 LoRA, 7.6e-8 full). A wrong graph (a lost LoRA branch,
a missing recompute, a stale gradient) moves the loss by far more than that after one update.
The aot_eager backend runs the same dynamo + AOTAutograd graph with ATen kernels (no generated C++,
seconds instead of ~40 s of cold compilation on 2 cores), so the default tests use it; the inductor
cases are slow. The loss comparisons drive build_model's network with a plain loop (a Lightning
fit costs ~15 s of CPU here); one Lightning run checks checkpoints and the saved adapter.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ta_train.regional_compile import decoder_layers
from ta_train.train import fit, save_outputs

# dropout off: generated code draws its random numbers differently from eager, a rate of 0 keeps
# the two runs the same function
REL = 1e-5


def train_losses(make_cfg, *overrides: str, steps: int = 3) -> list[float]:
    """Losses of `steps` real AdamW steps of the built model (ta_train.model.build_model) on one
    fixed batch (2 x 48 tokens, the first 16 untrained), with the run's token-summed loss."""
    from ta_train.losses import sum_token_cross_entropy
    from ta_train.model import build_model

    cfg = make_cfg("peft.dropout=0.0", *overrides)
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn from the global generator
    model = build_model(cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    ids = torch.randint(0, cfg.model.arch.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :16] = -100
    losses = []
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        loss_sum, n = sum_token_cross_entropy(logits, labels, 0.05)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss_sum / n))
    return losses


def assert_same_losses(compiled: list[float], eager: list[float]) -> None:
    assert compiled == pytest.approx(eager, rel=REL), (compiled, eager)
    assert eager[-1] < eager[0]  # the steps did update the weights


@pytest.mark.parametrize("opts", [["peft=lora", "optim.lr=2e-2"], ["peft=none", "optim.lr=1e-3"]], ids=["lora", "full"])
def test_compiled_layers_with_checkpointing_train_like_eager(make_cfg, opts):
    """aot_eager: dynamo + AOTAutograd + the checkpoint higher-order op, without C++ compilation."""
    opts = [*opts, "gradient_checkpointing=true"]
    compiled = train_losses(make_cfg, *opts, "perf.compile=true", "perf.compile_backend=aot_eager")
    assert_same_losses(compiled, train_losses(make_cfg, *opts))


@pytest.mark.slow
@pytest.mark.parametrize("opts", [["peft=lora", "optim.lr=2e-2"], ["peft=none", "optim.lr=1e-3"]], ids=["lora", "full"])
@pytest.mark.parametrize("ckpt", ["gradient_checkpointing=false", "gradient_checkpointing=true"])
def test_inductor_compiled_layers_train_like_eager(make_cfg, opts, ckpt):
    compiled = train_losses(make_cfg, *opts, ckpt, "perf.compile=true")
    assert_same_losses(compiled, train_losses(make_cfg, *opts, ckpt))


def test_a_compiled_lightning_run_saves_unchanged_names_and_a_loadable_adapter(make_cfg, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg("trainer.max_steps=2", "trainer.limit_val_batches=0", "checkpoint.every_n_steps=100",
                   "gradient_checkpointing=true", "perf.compile=true", "perf.compile_backend=aot_eager")
    trainer, module, tokenizer = fit(cfg)
    assert trainer.global_step == 2
    assert all(x._compiled_call_impl is not None for x in decoder_layers(module.model))
    state = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k and "_orig_mod" not in k for k in state)
    assert set(state) == module._trainable_keys()

    adapter = save_outputs(cfg, trainer, module, tokenizer)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(saved["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    trained = {n: p for n, p in module.model.named_parameters() if "lora_" in n}
    reloaded = dict(loaded.named_parameters())
    assert trained and all(torch.equal(p.detach().cpu(), reloaded[n]) for n, p in trained.items())


@pytest.mark.slow
def test_a_compiled_run_answers_the_demo_question_eagerly(make_cfg, tmp_path):
    """Generation changes shapes every token; under eager_stance nothing is traced."""
    import torch._dynamo.utils as dynamo_utils

    from ta_train.train import answer

    cfg = make_cfg("trainer.max_steps=1", "trainer.limit_val_batches=0", "perf.compile=true", "perf.compile_backend=aot_eager")
    trainer, module, tokenizer = fit(cfg)
    before = dict(dynamo_utils.counters["stats"])
    assert isinstance(answer(module, tokenizer, "What is a gradient?", cfg), str)
    assert dict(dynamo_utils.counters["stats"]) == before


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_compiled_layers_feed_the_fused_loss_like_eager_full_logits(make_cfg, peft):
    """perf.compile + perf.fused_ce together (the GPU check's fastest case): the fused path calls
    the decoder body, whose layers are the compiled ones; 3 AdamW steps through
    CausalLMModule._score give the eager, unfused losses and the same token counts."""
    from ta_train.module import CausalLMModule

    ids = torch.randint(0, 49152, (2, 40), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :12] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    runs = {}
    for fast in (False, True):
        flags = ["perf.fused_ce=true", "perf.ce_chunk_rows=16", "perf.compile=true", "perf.compile_backend=aot_eager"] if fast else []
        cfg = make_cfg(f"peft={peft}", "peft.dropout=0.0", "optim.lr=1e-3", *flags)
        torch.manual_seed(cfg.seed)
        module = CausalLMModule(cfg, accumulation=1)
        module.configure_model()
        assert (module._resolve_fused() is not None) == fast
        if fast:
            assert all(layer._compiled_call_impl is not None for layer in decoder_layers(module.model))
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.optim.lr)
        losses, counts = [], []
        for _ in range(3):
            loss_sum, n, correct, total = module._score(batch, 0.05)
            (loss_sum / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss_sum / n))
            counts.append((int(n), int(total)))
        runs[fast] = (losses, counts)
    assert runs[True][1] == runs[False][1] == [(2 * 28, 2 * 28)] * 3
    assert_same_losses(runs[True][0], runs[False][0])
