"""Script for test_ddp_cpu's guard test: under DDP, rank 1 alone sees a loss spike at SPIKE_STEP and a
NaN micro-batch at NAN_STEP; each rank writes what it saw to `guard_rank<N>.json`.

Run as `python tests/integration/ddp_guard_probe.py RUN_DIR [overrides...]` (Lightning re-runs the same
command line for rank 1). The guard is expected to stop both ranks with TrainingStopped.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from tests.conftest import FAST, compose
from ta_train.guards import TrainingStopped
from ta_train.train import fit

SPIKE_STEP, NAN_STEP, BAD_RANK = 4, 6, 1


class RankOneTrouble(L.Callback):
    """On BAD_RANK: logits x30 for the whole window of SPIKE_STEP, NaN embeddings for the first
    micro-batch of NAN_STEP. Every rank records its rank, its train_origins and the ids of each step."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {"seen": {}, "poisoned": []}
        self.hook = None

    def on_train_start(self, trainer, pl_module):
        self.record.update(rank=trainer.global_rank, origins=list(trainer.datamodule.train_origins))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step, ids = trainer.global_step, list(batch["example_ids"])
        self.record["seen"].setdefault(str(step), []).extend(ids)
        if trainer.global_rank != BAD_RANK:
            return
        if step == SPIKE_STEP:
            self.hook = pl_module.model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * 30)
        elif step == NAN_STEP and not self.record["poisoned"]:
            self.record["poisoned"] = ids
            self.hook = pl_module.model.get_input_embeddings().register_forward_hook(lambda m, i, out: out * float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def main(run_dir: str, *overrides: str) -> None:
    cfg, _ = compose([*FAST, f"run_dir={run_dir}", *overrides])
    trouble = RankOneTrouble()
    try:
        fit(OmegaConf.to_object(cfg), [trouble])
    except TrainingStopped as err:
        trouble.record.update(stopped_at=err.step, examples=err.examples)
    out, rank = Path(run_dir), trouble.record["rank"]
    tmp = out / f"guard_rank{rank}.tmp"
    tmp.write_text(json.dumps(trouble.record), encoding="utf-8")
    tmp.rename(out / f"guard_rank{rank}.json")
    if rank == 0:  # rank 1 is a child of this process: wait until it has written its record
        deadline = time.time() + 300
        while not (out / "guard_rank1.json").exists() and time.time() < deadline:
            time.sleep(0.5)


if __name__ == "__main__":
    main(*sys.argv[1:])
