"""The training step reads its batch metadata on the host and synchronizes with the device once per
optimizer step: the structure, on CPU (tests/gpu/test_host_sync_cuda.py counts real CUDA syncs).

On a GPU, a read of a device tensor's value (.item(), .tolist(), .cpu(), bool(), int(), a boolean
mask) stalls the host until the device catches up. Here every tensor is on the CPU, so a torch
function mode records those reads with the function of ta_train/module.py that made them; reads of
host tensors (the batch's metadata, the module's host counts, what a .cpu() returned and what is
computed from those alone) are not syncs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.overrides import TorchFunctionMode

from ta_train.module import HOST_KEYS, CausalLMModule
from ta_train.train import fit

MODULE_FILE = str(Path(sys.modules[CausalLMModule.__module__].__file__))
READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}
BOOKKEEPING = {"training_step", "_log_step"}
TORCH_DIR = str(Path(torch.__file__).parent)


def _module_caller() -> tuple[str | None, str | None]:
    """(innermost ta_train/module.py function on the stack, file of the code outside torch that made the call)."""
    frame, origin = sys._getframe(2), None
    while frame is not None:
        name = frame.f_code.co_filename
        if origin is None and not name.startswith(TORCH_DIR):
            origin = Path(name).name
        if name == MODULE_FILE:
            return frame.f_code.co_name, origin
        frame = frame.f_back
    return None, origin


class ValueReads(TorchFunctionMode):
    """Records (module.py function, file making the call, op) for each value read of a device tensor."""

    def __init__(self, host: list[torch.Tensor]) -> None:
        super().__init__()
        self.host = {id(t): t for t in host}  # kept alive: ids stay unique
        self.reads: list[tuple[str | None, str | None, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        tensors = [a for a in [*args, *(kwargs or {}).values()] if isinstance(a, torch.Tensor)]
        on_host = bool(tensors) and all(id(t) in self.host for t in tensors)
        masked = name == "__getitem__" and len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
        to_host = name == "cpu"  # .to(device) is not counted: here the device is the host, so no call tells them apart
        if tensors and not on_host and (name in READS or masked or to_host):
            self.reads.append((*_module_caller(), name))
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and (on_host or to_host):
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
            host = [batch[k] for k in HOST_KEYS if k in batch] + [pl_module._step_counts]
            calls.clear()
            with ValueReads(host) as mode:
                loss = step(batch, batch_idx)
            self.steps.append({"window_end": bool(batch["window_end"]), "reads": mode.reads, "reduces": list(calls),
                               "meta_devices": {k: batch[k].device.type for k in HOST_KEYS}})
            return loss

        trainer.strategy.reduce = counting_reduce
        pl_module.training_step = probed_step


def test_metadata_stays_on_the_host_after_transfer(make_cfg):
    module = CausalLMModule(make_cfg(), accumulation=2)
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": torch.ones(2, 4, dtype=torch.long),
             "attention_mask": torch.ones(2, 4, dtype=torch.long), "window_tokens": torch.tensor(6),
             "window_end": torch.tensor(False), "position": torch.tensor([0, 3]), "example_ids": torch.tensor([4, 9]),
             "token_counts": torch.tensor([8, 32])}
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)  # "meta": a device that is not the host
    assert list(moved) == list(batch)
    assert {k: moved[k].device.type for k in ("input_ids", "labels", "attention_mask")} == dict.fromkeys(("input_ids", "labels", "attention_mask"), "meta")
    assert all(moved[k] is batch[k] for k in HOST_KEYS)


def test_one_reduce_and_no_device_read_per_micro_batch_except_at_the_window_end(make_cfg):
    cfg = make_cfg("trainer.max_steps=3", "batch.global_size=6", "batch.micro_size=2", "trainer.limit_val_batches=0",
                   "data.max_seq_len=128")
    probe = Probe()
    _, module, _ = fit(cfg, [probe])
    assert [s["window_end"] for s in probe.steps] == [False, False, True] * 3
    for s in probe.steps:
        assert set(s["meta_devices"].values()) == {"cpu"}
        if s["window_end"]:
            assert s["reduces"] == ["_log_step"]  # one collective per optimizer step
            # sums, counts and finite flags come back in one transfer (the token accuracy's
            # compute and Lightning's log read theirs on the way, in their own code)
            assert [r for r in s["reads"] if r[1] == "module.py"] == [("_log_step", "module.py", "cpu")], s
        else:  # the scoring (ta_train/losses.py) is not bookkeeping: its reads are its own business
            assert s["reduces"] == [], s
            assert [r for r in s["reads"] if r[0] in BOOKKEEPING and r[1] != "losses.py"] == [], s
    assert module.last_step is not None and module.last_step.step == 2
