"""Script for test_ddp_cpu: train the tiny model under DDP, then save each rank's trainable weights.

Run as `python tests/integration/ddp_probe.py RUN_DIR [overrides...]`; Lightning's DDP launcher
re-runs this same command line for rank 1 (LOCAL_RANK=1), so both ranks compose the same config.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from tests.conftest import FAST, compose
from ta_train.train import fit, save_outputs


class SaveRankWeights(L.Callback):
    """rank<N>.pt: every trainable parameter as this rank holds it when training ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = {n: p.detach().cpu().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}
        torch.save({"world_size": trainer.world_size, "weights": weights}, self.run_dir / f"rank{trainer.global_rank}.pt")


def main(run_dir: str, *overrides: str) -> None:
    cfg, _ = compose([*FAST, f"run_dir={run_dir}", *overrides])
    config = OmegaConf.to_object(cfg)
    trainer, module, tokenizer = fit(config, [SaveRankWeights(Path(run_dir))])
    save_outputs(config, trainer, module, tokenizer)


if __name__ == "__main__":
    main(*sys.argv[1:])
