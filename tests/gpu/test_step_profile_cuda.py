"""bench/step_profile.py on CUDA: every kernel of a real profiled step is linked to the operator that
launched it, the kinds come from there (the same foreach kernels split between the gradient norm /
clip and AdamW's foreach update), and record_function ranges are not counted as kernels."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from bench.step_profile import cuda_kernels, make_profiler, summarize
from ta_train.train import fit

pytestmark = pytest.mark.gpu

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=3", "trainer.limit_val_batches=0",
       "precision=bf16-mixed", "hw.accelerator=gpu", "trainer.gradient_clip_val=1.0", "peft=none"]


class KeepProfile(L.Callback):
    """Profiles optimizer step 1 with CPU and CUDA activity and keeps the profile."""

    def __init__(self) -> None:
        self.prof = None

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == 1 and self.prof is None:
            torch.cuda.synchronize()
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, *_):
        if self.prof is not None and trainer.global_step == 2 and not getattr(self, "done", False):
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            self.done = True


def test_kernels_take_the_kind_of_their_launching_operator(make_cfg):
    keep, profiler = KeepProfile(), make_profiler(start_step=2, steps=1)  # one profiler at a time
    fit(make_cfg(*GPU), [keep, profiler])
    kernels = cuda_kernels(keep.prof)
    assert kernels
    names = {k.name for k in kernels}
    assert not {"ta.loss", "ta.training_step", "ta.grad_norm", "ta.clip"} & names  # ranges are not kernels
    assert not any(n.startswith("Optimizer.step#") for n in names)
    launched = [k for k in kernels if k.op is not None]
    assert len(launched) >= 0.95 * len(kernels), [k for k in kernels if k.op is None][:10]
    kinds = {k.kind for k in kernels}
    assert {"gemm", "attention", "loss", "grad_norm", "optimizer", "elementwise", "copy"} <= kinds
    foreach = {(k.op, k.kind) for k in kernels if "multi_tensor_apply" in k.name}
    assert ("aten::_foreach_norm", "grad_norm") in foreach  # the total norm
    assert ("aten::_foreach_mul_", "grad_norm") in foreach  # the clip
    assert any(kind == "optimizer" for _, kind in foreach)  # AdamW's foreach update
    assert all(k.kind == "gemm" for k in kernels if k.op in ("aten::mm", "aten::addmm"))
    summary = summarize(kernels, steps=1)
    assert summary["by_op_ms"] >= 0.95 * sum(summary["kinds_ms"].values())
    assert summary["idle_ms"] >= 0 and summary["busy_ms"] <= summary["span_ms"]
    # the bench's own callback profiled the next step the same way
    assert profiler.summary is not None and profiler.summary["kernels"] > 0 and "by_op_ms" in profiler.summary
