"""Tiny merged models for the GGUF tests: a briefly trained Llama (SmolLM2's tokenizer) and random ones."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TRAIN_STEPS = 12  # real LoRA steps for the tiny model the GGUF tests export


def save_merged(model: Any, tokenizer: Any, out: Path) -> Path:
    """An HF folder the way a merge writes it: fp32 weights, tokenizer, chat template."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_and_merge(tmp: Path, steps: int = 12, *overrides: str) -> tuple[Path, Any]:
    """Train the `tiny` Llama with LoRA for `steps` real steps, merge the adapter, save; (dir, tokenizer)."""
    from omegaconf import OmegaConf

    from tests.conftest import FAST, compose
    from ta_train.train import fit

    cfg, _ = compose([*FAST, f"run_dir={tmp / 'run'}", f"trainer.max_steps={steps}", "optim.lr=2e-2",
                      "trainer.limit_val_batches=0", "checkpoint.every_n_steps=1000", *overrides])
    cfg = OmegaConf.to_object(cfg)
    _, module, tokenizer = fit(cfg)
    model = module.model
    merged = (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).eval()
    merged.config.use_cache = True
    return save_merged(merged, tokenizer, tmp / "merged"), tokenizer


def random_llama_dir(tokenizer: Any, out: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights sized to `tokenizer` (std 0.25: logits with a real range)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.25, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return save_merged(LlamaForCausalLM(config).eval(), tokenizer, out)


def random_qwen2_dir(tokenizer: Any, out: Path, *, seed: int = 0) -> Path:
    """A 2-layer Qwen2 (q/k/v biases, untied head) with random weights sized to `tokenizer`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, initializer_range=0.25, rope_theta=1_000_000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases, so a wrong (permuted) bias layout would show in the logits
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return save_merged(model, tokenizer, out)


def hf_logits(merged: Path, ids: list[int]) -> Any:
    """fp32 logits [len(ids), vocab] of the merged HF model (eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> tuple[Path, Any, Path]:
    """(merged dir, tokenizer, run dir) of the tiny Llama trained with LoRA, shared by the GGUF tests."""
    tmp = tmp_path_factory.mktemp("trained")
    merged, tok = train_and_merge(tmp, TRAIN_STEPS)
    return merged, tok, tmp / "run"


def training_ids(tok: Any, run_dir: Path, n_examples: int = 6, max_tokens: int = 500) -> list[int]:
    """The first examples the run trained on, encoded as training encoded them, concatenated."""
    import json

    from ta_train.chat import encode_messages, from_alpaca, from_sharegpt

    ids: list[int] = []
    for line in (run_dir / "data" / "sft.jsonl").read_text(encoding="utf-8").splitlines()[:n_examples]:
        record = json.loads(line)
        messages = from_sharegpt(record) if "conversations" in record else from_alpaca(record)
        ids += encode_messages(tok, messages, max_seq_len=512)["input_ids"]
    return ids[:max_tokens]
