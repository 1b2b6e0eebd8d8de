"""Host-device synchronizations of the training step on CUDA: none in the bookkeeping of a micro-batch
that does not close its accumulation window, one transfer in the window's last (see
tests/integration/test_host_metadata.py for the same structure checked on CPU).

torch.cuda.set_sync_debug_mode("warn") warns at each synchronizing CUDA call, from the Python line
that made it; the warnings from the bookkeeping functions of ta_train/module.py are counted. The
scoring (loss and accuracy from the logits) is not bookkeeping and is not counted here.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from ta_train.module import CausalLMModule
from ta_train.train import fit

pytestmark = pytest.mark.gpu

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=2", "trainer.limit_val_batches=0",
       "precision=bf16-mixed", "hw.accelerator=gpu", "batch.global_size=6", "batch.micro_size=2"]
BOOKKEEPING = ("transfer_batch_to_device", "training_step", "_log_step")


def line_ranges() -> dict[str, range]:
    out = {}
    for name in BOOKKEEPING:
        lines, first = inspect.getsourcelines(getattr(CausalLMModule, name))
        out[name] = range(first, first + len(lines))
    return out


class SyncProbe(L.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[bool, list[str]]] = []

    def on_train_start(self, trainer, pl_module):
        step, ranges, path = pl_module.training_step, line_ranges(), Path(inspect.getsourcefile(CausalLMModule)).resolve()

        def probed_step(batch, batch_idx):
            assert batch["window_tokens"].device.type == "cpu" and batch["input_ids"].device.type == "cuda"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    loss = step(batch, batch_idx)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            ours = [name for w in caught if "synchroniz" in str(w.message) and Path(w.filename).resolve() == path
                    for name, lines in ranges.items() if w.lineno in lines]
            self.steps.append((bool(batch["window_end"]), ours))
            return loss

        pl_module.training_step = probed_step


def test_bookkeeping_syncs_once_per_optimizer_step(make_cfg):
    probe = SyncProbe()
    fit(make_cfg(*GPU), [probe])
    assert [end for end, _ in probe.steps] == [False, False, True] * 2
    for end, syncs in probe.steps:
        assert syncs == (["_log_step"] if end else []), probe.steps
