"""The training step reads its batch metadata on the host and synchronizes with the device once per
optimizer step: the structure, on CPU (tests/gpu/test_host_sync_cuda.py counts real CUDA syncs).

On a GPU, a read of a device tensor's value (.item(), .tolist(), .cpu(), bool(), int(), a boolean
mask) stalls the host until the device catches up, and so does a tensor built from host values with
a device (torch.tensor(n, device=...)). Here every tensor is on the CPU, so a torch function mode
records those calls with the function of ta_train/module.py that made them and the file outside
torch that called; reads of what a .cpu() returned, and of what is computed from those alone, are
not syncs. The batch metadata are plain Python values (ta_train.data.WindowedLoader), so no device
transfer (Lightning's, or DDP's forward, which moves every tensor of the batch) can move them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.distributed.utils import _recursive_to
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from ta_train.data import WindowedLoader
from ta_train.module import HOST_KEYS, CausalLMModule
from ta_train.train import fit

MODULE_FILE = str(Path(sys.modules[CausalLMModule.__module__].__file__))
READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}
OURS = {"module.py", "losses.py", "fused_ce.py", "metrics.py"}  # files of the step's bookkeeping and scoring
TORCH_DIR = str(Path(torch.__file__).parent)
TA_TRAIN_DIR = Path(MODULE_FILE).parent


def _module_caller() -> tuple[str | None, str | None]:
    """(innermost ta_train/module.py function on the stack, file of the code outside torch that made
    the call: its name when in ta_train/, else its whole path, e.g. Lightning's own module.py)."""
    frame, origin = sys._getframe(2), None
    while frame is not None:
        name = frame.f_code.co_filename
        if origin is None and not name.startswith(TORCH_DIR):
            origin = Path(name).name if Path(name).parent == TA_TRAIN_DIR else name
        if name == MODULE_FILE:
            return frame.f_code.co_name, origin
        frame = frame.f_back
    return None, origin


class ValueReads(TorchFunctionMode):
    """Records (module.py function, file making the call, op) for each value read of a device tensor
    and each tensor made from host values on a device."""

    def __init__(self) -> None:
        super().__init__()
        self.host: dict[int, torch.Tensor] = {}  # what .cpu() returned and what came of it; kept alive: ids stay unique
        self.reads: list[tuple[str | None, str | None, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        tensors = [a for a in [*args, *(kwargs or {}).values()] if isinstance(a, torch.Tensor)]
        on_host = bool(tensors) and all(id(t) in self.host for t in tensors)
        masked = name == "__getitem__" and len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
        to_host = name == "cpu"  # .to(device) is not counted: here the device is the host, so no call tells them apart
        if tensors and not on_host and (name in READS or masked or to_host):
            self.reads.append((*_module_caller(), name))
        if name in ("tensor", "as_tensor") and (kwargs or {}).get("device") is not None:  # a host-to-device copy
            self.reads.append((*_module_caller(), f"{name}(device=)"))
        out = func(*args, **(kwargs or {}))
        made_on_host = name in ("tensor", "as_tensor") and (kwargs or {}).get("device") is None
        if isinstance(out, torch.Tensor) and (on_host or to_host or made_on_host):
            self.host[id(out)] = out
        return out


class Probe(L.Callback):
    """Wraps the module's training_step (value reads, strategy.reduce calls) for each micro-batch."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_start(self, trainer, pl_module):
        step, reduce = pl_module.training_step, trainer.strategy.reduce
        calls = []

        def counting_reduce(*args, **kwargs):
            calls.append(_module_caller()[0])
            return reduce(*args, **kwargs)

        def probed_step(batch, batch_idx):
            # as DDP's forward does on a GPU (device_ids set): every tensor of the batch moves, here to
            # new tensors on the same device; whatever is not a tensor is passed on as it is
            meta = {k: batch[k] for k in HOST_KEYS}
            batch = tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, batch)
            batch = _recursive_to((batch,), torch.device("cpu"), False)[0][0]
            assert {k: batch[k] for k in HOST_KEYS} == meta
            calls.clear()
            with ValueReads() as mode:
                loss = step(batch, batch_idx)
            self.steps.append({"window_end": batch["window_end"], "reads": mode.reads, "reduces": list(calls),
                               "meta_types": {k: type(batch[k]).__name__ for k in HOST_KEYS}})
            return loss

        trainer.strategy.reduce = counting_reduce
        pl_module.training_step = probed_step


def test_metadata_are_host_values_that_a_device_transfer_leaves_alone():
    examples = [{"input_ids": [5] * n, "labels": [-100] * 2 + [7] * (n - 2), "attention_mask": [1] * n} for n in (4, 6, 5, 7)]
    loader = WindowedLoader(examples, micro_size=2, accumulation=2, pad_id=0, seed=1)
    for batch in loader:
        meta = {k: batch[k] for k in HOST_KEYS}
        assert not any(isinstance(v, torch.Tensor) for v in meta.values()), meta
        moved = _recursive_to((batch,), torch.device("meta"), False)[0][0]  # DDP's move, to a device that is not the host
        assert {k: moved[k] for k in HOST_KEYS} == meta
        assert {k: v.device.type for k, v in moved.items() if k not in HOST_KEYS} == dict.fromkeys(
            ("input_ids", "labels", "attention_mask", "trained_index"), "meta")
        assert CausalLMModule.transfer_batch_to_device is L.LightningModule.transfer_batch_to_device  # no override needed


@pytest.mark.parametrize("fused", [False, True])
def test_one_reduce_and_no_device_read_per_micro_batch_except_at_the_window_end(make_cfg, fused):
    cfg = make_cfg("trainer.max_steps=3", "batch.global_size=6", "batch.micro_size=2", "trainer.limit_val_batches=0",
                   "data.max_seq_len=128", f"perf.fused_ce={str(fused).lower()}")
    probe = Probe()
    _, module, _ = fit(cfg, [probe])
    assert (module._fused is not None) == fused  # the path under test really ran
    assert [s["window_end"] for s in probe.steps] == [False, False, True] * 3
    for s in probe.steps:
        assert s["meta_types"] == {"window_tokens": "int", "window_end": "bool", "position": "tuple",
                                   "example_ids": "tuple", "token_counts": "tuple"}
        if s["window_end"]:
            assert s["reduces"] == ["_log_step"]  # one collective per optimizer step
            # sums, token-accuracy counts, host counts and finite flags come back in one transfer
            assert [r for r in s["reads"] if r[1] in OURS] == [("_log_step", "module.py", "cpu")], s
        else:  # neither the bookkeeping nor the scoring (losses.py, fused_ce.py) waits for the device
            assert s["reduces"] == [], s
            assert [r for r in s["reads"] if r[1] in OURS] == [], s
    assert module.last_step is not None and module.last_step.step == 2


class LoggedValues(L.Callback):
    """Every value the module logs during training, and whether it is host data (made on the host or
    read back by a .cpu()): Lightning makes a device tensor of a Python number (a blocking copy on
    CUDA) and its logger reads device tensors back, both waiting for all queued work."""

    def on_train_start(self, trainer, pl_module):
        self.mode, self.logged = ValueReads(), []
        self.mode.__enter__()
        log = pl_module.log

        def spy(name, value, *args, **kwargs):
            host = isinstance(value, torch.Tensor) and id(value) in self.mode.host
            self.logged.append((name, type(value).__name__, host))
            return log(name, value, *args, **kwargs)

        pl_module.log = spy

    def on_train_end(self, trainer, pl_module):
        self.mode.__exit__(None, None, None)


def test_every_training_metric_is_logged_as_a_host_tensor(make_cfg):
    cfg = make_cfg("trainer.max_steps=3", "batch.global_size=4", "batch.micro_size=2", "trainer.limit_val_batches=0",
                   "data.max_seq_len=128", "guards.spike_min_history=1")
    spy = LoggedValues()
    fit(cfg, [spy])
    names = {name for name, _, _ in spy.logged}
    assert {"train/loss", "train/token_acc", "train/lr", "train/grad_norm", "train/loss_zscore", "perf/tokens_per_s"} <= names, names
    assert [x for x in spy.logged if not x[2]] == [], sorted(set(spy.logged))
