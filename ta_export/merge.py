"""Merge a run's LoRA/QLoRA adapter into its base: one plain HF model with tokenizer and chat template.

LoRA: the base loads in the dtype training froze it in (`precision.frozen_dtype`), so the merged
weights are what training's forward pass computed. QLoRA: the base loads *unquantized* in the
compute dtype (bf16, fp16 on T4) and the adapter merges into those weights; merging into nf4
weights would add a second rounding and lose the adapter's small updates.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ta_export.runs import ExportError, Run
from ta_train.config import PeftMethod

log = logging.getLogger(__name__)


def merge_dtype(run: Run) -> str:
    """torch dtype name the base is loaded and merged in (see the module docstring)."""
    from ta_train.model import qlora_compute_dtype

    cfg = run.cfg
    if cfg.peft.method == PeftMethod.qlora:
        return qlora_compute_dtype(cfg.peft.compute_dtype, cfg.precision.name)
    if cfg.peft.method == PeftMethod.lora:
        return cfg.precision.frozen_dtype
    return "float32"  # full fine-tunes keep fp32 master weights


def load_run_tokenizer(run: Run) -> Any:
    """The tokenizer the run saved (chat template, pad), prepared for its family as training did."""
    from transformers import AutoTokenizer

    from ta_train.chat_families import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(str(run.hf_dir), trust_remote_code=run.cfg.model.trust_remote_code)
    return prepare_tokenizer(tok, run.cfg.model.chat_family)  # pad as saved (pad_token=None keeps it)


def base_source(run: Run) -> str:
    """Where the base weights are: the run's `base/` for a random-init model, else the model config's."""
    from ta_train.model import weights_source

    if run.cfg.model.random_init:
        base = run.path / "base"
        if not (base / "config.json").is_file():
            raise ExportError(f"run={run.path}: random-init model but {base}/config.json is missing")
        return str(base)
    return weights_source(run.cfg.model, run.cfg.cache_dir)


def load_unmerged(run: Run, tokenizer: Any, dtype: str | None = None) -> Any:
    """Base (unquantized, in `dtype` or merge_dtype) with the run's adapter on top, in eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ta_train.model import resize_embeddings, torch_dtype

    if run.adapter_dir is None:
        raise ExportError(f"run={run.path}: no adapter/ to merge (a full fine-tune saves model/; export it as is)")
    base = AutoModelForCausalLM.from_pretrained(
        base_source(run), dtype=torch_dtype(dtype or merge_dtype(run)), trust_remote_code=run.cfg.model.trust_remote_code
    )
    resize_embeddings(base, len(tokenizer))  # training grew them when model.pad_token=add
    return PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()


def merge_run(run: Run, out_dir: Path, *, progress: bool = True) -> Path:
    """Write the merged HF model + tokenizer + chat template to `out_dir` (must not exist); returns it."""
    from ta_train.chat_families import end_of_turn_token

    if out_dir.exists():
        raise ExportError(f"{out_dir} exists; exports never overwrite")
    if run.adapter_dir is None:
        log.info("full fine-tune: copying %s as the merged model", run.model_dir)
        shutil.copytree(run.model_dir, out_dir)  # type: ignore[arg-type]
        return out_dir
    tokenizer = load_run_tokenizer(run)
    log.info("merging %s into %s in %s", run.adapter_dir, base_source(run), merge_dtype(run))
    merged = load_unmerged(run, tokenizer).merge_and_unload(progressbar=progress)
    # Generation stops at the family's end-of-turn token as well as eos (they differ for ChatML, Llama-3).
    stops = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))})
    merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.use_cache = True  # training switched the KV cache off
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
