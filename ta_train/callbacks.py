"""Checkpointing that never leaves a half-written file, and the run's checkpoint callbacks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ta_train.config import CheckpointConfig


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to `<name>.tmp` in the same folder, fsync, then rename over the target.

    A crash mid-write leaves the previous checkpoint intact instead of a truncated file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def checkpoint_callbacks(cfg: CheckpointConfig, ckpt_dir: Path) -> list[ModelCheckpoint]:
    """`last.ckpt` every `every_n_steps` optimizer steps and `best.ckpt` at each validation."""
    last = ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", save_top_k=0, save_last=True, every_n_train_steps=cfg.every_n_steps
    )
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=cfg.monitor,
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    return [last, best]


class EpochProgressBar(TQDMProgressBar):
    """Shows micro-batches out of the epoch's real length.

    Lightning caps the bar's total at max_steps, which counts optimizer steps, not micro-batches.
    """

    @property
    def total_train_batches(self) -> int | float:
        try:
            return len(self.trainer.train_dataloader)
        except TypeError:
            return super().total_train_batches
