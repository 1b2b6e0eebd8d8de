"""`python -m ta_train [overrides]`: compose `conf/train.yaml`, type it, call `ta_train.train.run`.

Only Hydra and the schemas are imported here, so `--cfg job` and `--help` never load torch.
"""
from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ta_train.config import TrainConfig, register_configs

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


def check_torchrun_output_dir(env: dict[str, str], mode: RunMode, hydra_overrides: list[str]) -> None:
    """Under torchrun each rank composes its own config; `${now:...}` in the default run (or sweep)
    dir can then differ by a second between ranks and split one run over two folders. Refuse unless
    the folder is pinned on the command line.
    """
    under_torchrun = "GROUP_RANK" in env and "LOCAL_WORLD_SIZE" in env and int(env.get("WORLD_SIZE", "1")) > 1
    key = "hydra.sweep.dir" if mode == RunMode.MULTIRUN else "hydra.run.dir"
    if under_torchrun and not any(o.lstrip("+~").startswith(key + "=") for o in hydra_overrides):
        raise SystemExit(f"torchrun with WORLD_SIZE={env['WORLD_SIZE']}: pass {key}=DIR so that every rank writes to the same folder")


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    """Returns the final `val/loss`, which `-m` sweeps (basic grid, Optuna) minimize."""
    hydra_cfg = HydraConfig.get()
    check_torchrun_output_dir(dict(os.environ), hydra_cfg.mode, list(hydra_cfg.overrides.hydra))
    config: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    from ta_train.train import run  # heavy imports start here

    return run(config)


def main() -> None:
    """Console-script entry point (`ta-train`)."""
    _main()


if __name__ == "__main__":
    main()
