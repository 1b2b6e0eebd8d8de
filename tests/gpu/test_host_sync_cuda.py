"""Host-device synchronizations of the training step on CUDA: none in the bookkeeping and scoring of a
micro-batch that does not close its accumulation window, one transfer in the window's last (see
tests/integration/test_host_metadata.py for the same structure checked on CPU).

torch.cuda.set_sync_debug_mode("warn") warns at each synchronizing CUDA call, from the Python line
that made it; the warnings from ta_train/module.py (named by the function holding the line),
ta_train/losses.py and ta_train/fused_ce.py are counted, with and without perf.fused_ce. The model's
own forward (transformers' mask building) and Lightning's logging are not ours and not counted.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

import ta_train.fused_ce
import ta_train.losses
from ta_train.module import CausalLMModule
from ta_train.train import fit

pytestmark = pytest.mark.gpu

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=2", "trainer.limit_val_batches=0",
       "precision=bf16-mixed", "hw.accelerator=gpu", "batch.global_size=6", "batch.micro_size=2"]
FUNCTIONS = ("training_step", "_score", "_log_step")  # of CausalLMModule
SCORING = {Path(inspect.getsourcefile(m)).resolve(): Path(inspect.getsourcefile(m)).name for m in (ta_train.losses, ta_train.fused_ce)}


def line_ranges() -> dict[str, range]:
    out = {}
    for name in FUNCTIONS:
        lines, first = inspect.getsourcelines(getattr(CausalLMModule, name))
        out[name] = range(first, first + len(lines))
    return out


class SyncProbe(L.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[bool, list[str]]] = []

    def on_train_start(self, trainer, pl_module):
        step, ranges, path = pl_module.training_step, line_ranges(), Path(inspect.getsourcefile(CausalLMModule)).resolve()

        def probed_step(batch, batch_idx):
            # the metadata are Python values (no transfer moves them); the model inputs are on the GPU
            assert isinstance(batch["window_tokens"], int) and isinstance(batch["window_end"], bool)
            assert batch["input_ids"].device.type == "cuda" and batch["trained_index"].device.type == "cuda"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    loss = step(batch, batch_idx)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            ours = []
            for w in caught:
                if "synchroniz" not in str(w.message):
                    continue
                where = Path(w.filename).resolve()
                if where == path:
                    ours += [name for name, lines in ranges.items() if w.lineno in lines] or [f"module.py:{w.lineno}"]
                elif where in SCORING:
                    ours.append(f"{SCORING[where]}:{w.lineno}")
            self.steps.append((batch["window_end"], ours))
            return loss

        pl_module.training_step = probed_step


@pytest.mark.parametrize("fused", [False, True])
def test_bookkeeping_and_scoring_sync_once_per_optimizer_step(make_cfg, fused):
    probe = SyncProbe()
    _, module, _ = fit(make_cfg(*GPU, f"perf.fused_ce={str(fused).lower()}"), [probe])
    assert (module._fused is not None) == fused
    assert [end for end, _ in probe.steps] == [False, False, True] * 2
    for end, syncs in probe.steps:
        assert syncs == (["_log_step"] if end else []), probe.steps


class PinProbe(L.Callback):
    """Records whether the training loader's batches are page-locked before Lightning moves them."""

    def on_train_start(self, trainer, pl_module):
        self.pinned: list[bool] = []
        dm = trainer.datamodule
        before = dm.on_before_batch_transfer

        def probed(batch, dataloader_idx):
            self.pinned.append(all(v.is_pinned() for v in batch.values() if isinstance(v, torch.Tensor)))
            return before(batch, dataloader_idx)

        dm.on_before_batch_transfer = probed


@pytest.mark.parametrize("depth", [0, 2])  # inline (the default) or collated ahead in the thread
def test_batches_are_page_locked_on_cuda(make_cfg, depth):
    probe = PinProbe()
    fit(make_cfg(*GPU, f"data.prefetch={depth}"), [probe])
    assert probe.pinned and all(probe.pinned), probe.pinned


class StepEndProbe(L.Callback):
    """CUDA syncs from the optimizer-step hooks to the next micro-batch, split at on_train_batch_end:
    after the update is launched the host must not wait for it (the logged values are host tensors,
    the next batch is prefetched and page-locked), so it can queue the next forward meanwhile."""

    def __init__(self) -> None:
        self.before_end: list[list[str]] = []
        self.after_end: list[list[str]] = []
        self._caught: list | None = None
        self._ctx = None

    def on_fit_start(self, trainer, pl_module):
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)  # first in every hook: sees the other callbacks' logging

    def _start(self):
        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def _take(self) -> list[str]:
        torch.cuda.set_sync_debug_mode("default")
        caught = [f"{Path(w.filename).name}:{w.lineno}" for w in self._caught if "synchroniz" in str(w.message)]
        self._ctx.__exit__(None, None, None)
        self._ctx = self._caught = None
        return caught

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._ctx is not None:
            self.before_end.append(self._take())
            self._start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._ctx is not None:
            self.after_end.append(self._take())

    def on_train_end(self, trainer, pl_module):
        if self._ctx is not None:
            self._take()


def test_the_host_does_not_wait_for_the_update_before_queueing_the_next_step(make_cfg):
    probe = StepEndProbe()
    fit(make_cfg(*GPU, "batch.global_size=2", "trainer.max_steps=4"), [probe])
    assert len(probe.after_end) == 3
    assert all(not syncs for syncs in probe.after_end), probe.after_end
    # before the update: the gradient norm, read once (guards, train/grad_norm, clipping)
    assert all(len(syncs) <= 1 for syncs in probe.before_end), probe.before_end
