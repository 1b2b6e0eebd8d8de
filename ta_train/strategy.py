"""Lightning strategy and loggers from their config groups (the edges of the run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ta_train.config import LoggerConfig, StrategyConfig


def build_strategy(cfg: StrategyConfig) -> Any:
    """`auto`/`ddp` by name; FSDP and DeepSpeed ZeRO as configured strategy objects."""
    if cfg.name in ("auto", "ddp"):
        return cfg.name
    if cfg.name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(sharding_strategy=cfg.fsdp_sharding, auto_wrap_policy=_decoder_layer_policy())
    if cfg.name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if cfg.zero_stage not in (1, 2, 3):
            raise ValueError(f"strategy.zero_stage must be 1, 2 or 3 for deepspeed, got {cfg.zero_stage}")
        return DeepSpeedStrategy(
            stage=cfg.zero_stage,
            offload_optimizer=cfg.offload_optimizer,
            offload_parameters=cfg.offload_parameters,
        )
    raise ValueError(f"strategy.name={cfg.name!r}: expected auto, ddp, fsdp or deepspeed")


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


def build_loggers(cfg: LoggerConfig, run_dir: Path) -> list[Any]:
    """metrics.csv always; TensorBoard or W&B on top when the logger group says so."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
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
