"""`run(cfg)`: data, module, callbacks, loggers, trainer, fit; then save the HF adapter and answer.

Builds the objects in that order (the lightning-hydra-template recipe) and returns the final
validation loss (`val/loss` of the weights the run ends with), which Hydra sweepers minimize.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ta_train.config import PeftMethod, TrainConfig

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: Path) -> str | None:
    """`last` means this run's checkpoints/last.ckpt; a missing file is an error, not a fresh start."""
    if ckpt_path is None:
        return None
    path = ckpt_dir / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path).expanduser()
    if not path.exists():  # DeepSpeed checkpoints are folders
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return str(path)


def build_trainer(cfg: TrainConfig, run_dir: Path, extra_callbacks: list[Any] | None = None) -> Any:
    import lightning as L

    from ta_train.callbacks import AtomicCheckpointIO, EpochProgressBar, checkpoint_callbacks
    from ta_train.csv_metrics import ResumedAt
    from ta_train.guards import guard_callbacks
    from ta_train.strategy import build_loggers, build_strategy
    from ta_train.throughput import monitor_callbacks

    t = cfg.trainer
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg.strategy, _deepspeed_json(cfg, run_dir)),
        precision=cfg.precision.name,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        accumulate_grad_batches=cfg.batch.accumulation(t.devices * t.num_nodes),
        gradient_clip_val=t.gradient_clip_val,
        val_check_interval=_val_interval(cfg),
        check_val_every_n_epoch=None if t.val_check_interval else 1,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=t.num_sanity_val_steps,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        callbacks=[
            *([EpochProgressBar()] if t.enable_progress_bar else []),
            *checkpoint_callbacks(cfg.checkpoint, run_dir / "checkpoints"),
            *monitor_callbacks(cfg, run_dir),
            *guard_callbacks(cfg, run_dir),
            *([ResumedAt()] if cfg.ckpt_path is not None else []),
            *(extra_callbacks or []),
        ],
        logger=build_loggers(cfg.logger, run_dir, resuming=cfg.ckpt_path is not None),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def _deepspeed_json(cfg: TrainConfig, run_dir: Path) -> dict[str, Any] | None:
    """Under DeepSpeed: the config generated from the run's plan, written as run_dir/deepspeed.json."""
    if cfg.strategy.name != "deepspeed":
        return None
    from ta_train.plan import make_plan
    from ta_train.zero import deepspeed_config, write_deepspeed_json

    ds = deepspeed_config(make_plan(cfg, strict=True), cfg)  # cfg already carries the plan's choices
    write_deepspeed_json(ds, run_dir)
    return ds


def _val_interval(cfg: TrainConfig) -> int | None:
    """Lightning counts val_check_interval in micro-batches; the config counts optimizer steps."""
    if not cfg.trainer.val_check_interval:
        return None
    return cfg.trainer.val_check_interval * cfg.batch.accumulation(cfg.trainer.devices * cfg.trainer.num_nodes)


def answer(module: Any, tokenizer: Any, question: str, cfg: TrainConfig, *, base: bool = False) -> str:
    """Greedy answer to one question, prompted exactly as training encoded it.

    base=True answers with the adapter switched off (the untuned model), for comparison.
    """
    import contextlib

    import torch

    from ta_train.chat import render_prompt
    from ta_train.chat_families import end_of_turn_token

    messages = [{"role": "user", "content": question}]
    if cfg.data.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.data.system_prompt})
    ids = torch.tensor([render_prompt(tokenizer, messages)], device=module.device)
    model = module.model
    model.eval()
    adapter_off = model.disable_adapter() if base else contextlib.nullcontext()
    # compiled layers (perf.compile) would recompile for every generated token's new shape
    stance = contextlib.nullcontext()
    if cfg.perf.compile:
        from ta_train.regional_compile import eager_stance

        stance = eager_stance()
    with torch.no_grad(), adapter_off, stance:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=cfg.demo.max_new_tokens,
            do_sample=False,
            repetition_penalty=cfg.demo.repetition_penalty,
            eos_token_id=sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))}),
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,  # training turned the KV cache off in the model config
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def fit(cfg: TrainConfig, extra_callbacks: list[Any] | None = None) -> tuple[Any, Any, Any]:
    """Build data, module and trainer from `cfg` and train; returns (trainer, module, tokenizer)."""
    import lightning as L

    from ta_train.datamodule import SFTDataModule
    from ta_train.model import load_tokenizer
    from ta_train.module import CausalLMModule

    if cfg.data.packing and cfg.model.trust_remote_code:
        raise ValueError(
            "data.packing=true needs transformers' own model code (it isolates packed examples by "
            "position_ids); remote-code models would attend across examples"
        )
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.hw is not None and cfg.hw.env:  # before CUDA and the process group start
        from ta_train.strategy import apply_env

        log.info("hw env set: %s", apply_env(cfg.hw.env, cfg.hw.env_override))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    devices = cfg.trainer.devices * cfg.trainer.num_nodes
    accumulation = cfg.batch.accumulation(devices)

    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    datamodule = SFTDataModule(
        cfg.data,
        tokenizer,
        micro_size=cfg.batch.micro_size,
        accumulation=accumulation,
        train_on=cfg.objective.train_on.value,
        work_dir=run_dir / "data",
    )
    module = CausalLMModule(cfg, accumulation, vocab_size=len(tokenizer))
    trainer = build_trainer(cfg, run_dir, extra_callbacks)
    _write_json(run_dir / "run.json", {"config": _plain(cfg), "accumulation": accumulation, "devices": devices})
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir / "checkpoints"))
    return trainer, module, tokenizer


def save_outputs(cfg: TrainConfig, trainer: Any, module: Any, tokenizer: Any) -> Path:
    """Write the adapter (or the full model) in HF format with the tokenizer; returns its folder."""
    from ta_train.model import random_llama, save_fsdp_adapter, save_hf, torch_dtype

    run_dir = Path(cfg.run_dir)
    hf_dir = run_dir / ("model" if cfg.peft.method == PeftMethod.none else "adapter")
    state = None
    if cfg.strategy.name == "deepspeed" and cfg.strategy.zero_stage == 3:
        from ta_train.zero import gathered_state_dict

        # ZeRO-3 leaves Size([0]) placeholders in the module: every rank joins the gather, rank 0 writes
        state = gathered_state_dict(
            module.model, trainable_only=cfg.peft.method != PeftMethod.none, keep=trainer.is_global_zero
        )
    elif cfg.strategy.name == "fsdp":
        from ta_train.strategy import fsdp_full_state_dict

        state = fsdp_full_state_dict(trainer)  # a gather every rank joins
    if not trainer.is_global_zero:
        return hf_dir
    if cfg.model.random_init and cfg.peft.method != PeftMethod.none:
        # A random base exists nowhere else: save it so the adapter loads with plain peft.
        base_dir = run_dir / "base"
        random_llama(cfg.model, torch_dtype(cfg.precision.frozen_dtype), "sdpa").save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        module.model.peft_config["default"].base_model_name_or_path = str(base_dir)
    if cfg.strategy.name == "fsdp" and cfg.peft.method != PeftMethod.none:
        return save_fsdp_adapter(module.model, tokenizer, hf_dir, state)
    return save_hf(module.model, tokenizer, hf_dir, state_dict=state)


def run(cfg: TrainConfig) -> float | None:
    """The main job: train, save checkpoint + HF adapter/model, answer the demo question, summarize.

    Returns the final `val/loss` (None with validation off, or with plan_only): the objective of
    `python -m ta_train -m ...` sweeps.
    """
    from ta_train.final_val import LastValidationStep, final_val_loss
    from ta_train.guards import stop_reason
    from ta_train.model import count_parameters
    from ta_train.plan import apply_plan, format_plan, plan_for

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    run_dir = Path(cfg.run_dir)
    plan = plan_for(cfg)
    print(format_plan(plan))
    if cfg.plan_only:
        print(plan.to_json())
        return None
    cfg = apply_plan(cfg, plan)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(plan.to_json() + "\n", encoding="utf-8")
    last_val = LastValidationStep()
    trainer, module, tokenizer = fit(cfg, [last_val])
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    final = final_val_loss(trainer, module, last_val)

    hf_dir = save_outputs(cfg, trainer, module, tokenizer)
    if cfg.logger.log_model:
        from ta_train.dashboard import log_model_artifact

        log_model_artifact(trainer, hf_dir)
    trainable, total = count_parameters(module.model)
    out_name = hf_dir.name
    best = _best_val_loss(trainer)
    summary = {
        "run_dir": str(run_dir),
        "config": str(run_dir / ".hydra" / "config.yaml"),
        "checkpoints": str(run_dir / "checkpoints"),
        out_name: str(hf_dir),
        "metrics": str(run_dir / "metrics.csv"),
        "rejects": str(run_dir / "data" / "rejects.jsonl"),
        "steps": trainer.global_step,
        "trainable_params": trainable,
        "total_params": total,
        "best_val_loss": best,
        "stop_reason": stop_reason(trainer) or "finished",
        "final_val_loss": final,
    }
    # Generation on rank 0 alone would hang where a forward needs every rank (ZeRO-3, FSDP).
    sharded = (cfg.strategy.name == "deepspeed" and cfg.strategy.zero_stage == 3) or cfg.strategy.name == "fsdp"
    if cfg.demo.question and sharded:
        log.info("demo answers skipped: strategy %s shards the weights (load the saved %s to ask)", cfg.strategy.name, hf_dir.name)
    if cfg.demo.question and trainer.is_global_zero and not sharded:
        summary["demo_question"] = cfg.demo.question
        if cfg.peft.method != PeftMethod.none:
            summary["base_answer"] = answer(module, tokenizer, cfg.demo.question, cfg, base=True)
        summary["demo_answer"] = answer(module, tokenizer, cfg.demo.question, cfg)
    if trainer.is_global_zero:  # other ranks hold no demo answers: one writer
        _write_json(run_dir / "summary.json", summary)
        _print_summary(summary)
    return final


def _best_val_loss(trainer: Any) -> float | None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    scores = [cb.best_model_score for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
    return float(scores[0]) if scores and scores[0] is not None else None


def _plain(cfg: TrainConfig) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if hasattr(value, "value") and value.__class__.__module__ == "ta_train.config":
            return value.value
        return value

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return convert(obj)

    return walk(dataclasses.asdict(cfg))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def _print_summary(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    print("\n== TeachingAssistant run finished ==")
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
