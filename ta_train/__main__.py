"""`python -m ta_train [overrides]`: compose `conf/train.yaml`, type it, call `ta_train.train.run`.

Only Hydra and the schemas are imported here, so `--cfg job` and `--help` never load torch.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ta_train.config import TrainConfig, register_configs

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    config: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    from ta_train.train import run  # heavy imports start here

    return run(config)


def main() -> None:
    """Console-script entry point (`ta-train`)."""
    _main()


if __name__ == "__main__":
    main()
