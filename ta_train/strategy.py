"""Lightning strategy and loggers from their config groups (the edges of the run)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, MutableMapping

from ta_train.config import LoggerConfig, StrategyConfig

log = logging.getLogger(__name__)


def build_strategy(cfg: StrategyConfig, deepspeed_json: dict[str, Any] | None = None) -> Any:
    """`auto`/`ddp` by name; FSDP and DeepSpeed ZeRO as configured strategy objects.

    deepspeed_json: the run's DeepSpeed config (ta_train.zero.deepspeed_config); without it the
    strategy falls back to Lightning's own config for the stage and offload flags.
    """
    if cfg.name in ("auto", "ddp"):
        return cfg.name
    if cfg.name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(sharding_strategy=cfg.fsdp_sharding, auto_wrap_policy=_decoder_layer_policy())
    if cfg.name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if cfg.zero_stage not in (1, 2, 3):
            raise ValueError(f"strategy.zero_stage must be 1, 2 or 3 for deepspeed, got {cfg.zero_stage}")
        if deepspeed_json is not None:
            from ta_train.zero import lightning_config

            return DeepSpeedStrategy(config=lightning_config(deepspeed_json))
        return DeepSpeedStrategy(
            stage=cfg.zero_stage,
            offload_optimizer=cfg.offload_optimizer,
            offload_parameters=cfg.offload_parameters,
        )
    raise ValueError(f"strategy.name={cfg.name!r}: expected auto, ddp, fsdp or deepspeed")


def apply_env(env: dict[str, str], override: bool = False, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the hw profile's environment variables; returns the ones it set.

    A variable already in the environment is kept (the user's export wins) unless `override`.
    Must run before CUDA initializes (PYTORCH_CUDA_ALLOC_CONF is read at the first allocation) and
    before the process group starts (NCCL reads its variables at communicator creation).
    """
    environ = os.environ if environ is None else environ
    applied = {}
    for key, value in env.items():
        if key in environ and not override:
            if environ[key] != str(value):
                log.info("env %s=%s kept (the hw profile says %s; hw.env_override=true replaces it)", key, environ[key], value)
            continue
        environ[key] = applied[key] = str(value)
    return applied


def is_decoder_layer(module: Any) -> bool:
    """A transformer block, by class name: native families end in "DecoderLayer"; remote-code
    Baichuan2 and Qwen-1 name theirs BaichuanLayer and QWenBlock."""
    name = type(module).__name__
    return name.endswith("DecoderLayer") or name in ("BaichuanLayer", "QWenBlock")


def _decoder_layer_policy() -> Any:
    """FSDP wraps each transformer block as one unit (the whole model as one unit would gather
    every parameter at once)."""
    import functools

    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    return functools.partial(lambda_auto_wrap_policy, lambda_fn=is_decoder_layer)


def fsdp_full_state_dict(trainer: Any) -> dict[str, Any]:
    """The network's full weights under FSDP on rank 0 ({} on the other ranks); every rank must call it.

    Lightning's full state dict (what its checkpoints hold: each FSDP unit gathered in turn, FSDP's
    wrapper prefixes removed), keyed as the network's own state dict (the LightningModule's `model.`
    prefix dropped). After training the network holds only this rank's flat shards, so saving it
    directly would write partial tensors, and its state_dict() starts a gather that rank 0 alone would
    wait in (seen: it failed once rank 1 had exited). Rank 0 holds the whole network on the host,
    frozen base included (Lightning offloads each gathered unit to the CPU there). Raises RuntimeError
    if a weight on rank 0 is still empty.
    """
    full = trainer.strategy.lightning_module_state_dict()
    state = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
    empty = [k for k, v in state.items() if v.numel() == 0]
    if trainer.is_global_zero and (empty or not state):
        raise RuntimeError(f"FSDP full state dict: {len(empty)} empty weights of {len(state)}, e.g. {empty[:3]}")
    return state if trainer.is_global_zero else {}


def build_loggers(cfg: LoggerConfig, run_dir: Path, resuming: bool = False) -> list[Any]:
    """metrics.csv always (kept across a resume: ta_train.csv_metrics); TensorBoard or W&B on top
    when the logger group says so."""
    from ta_train.csv_metrics import RunCSVLogger

    loggers: list[Any] = [RunCSVLogger(run_dir, resuming)]
    if cfg.name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    elif cfg.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(project=cfg.project, name=run_dir.name, save_dir=str(run_dir), offline=cfg.mode == "offline")
        )
    elif cfg.name != "csv":
        raise ValueError(f"logger.name={cfg.name!r}: expected csv, tensorboard or wandb")
    return loggers
