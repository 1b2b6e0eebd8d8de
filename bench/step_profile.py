"""Where a training step's device time goes: CUDA kernels by kind, and how long the device sat idle.

bench/gpu_check.py runs PROFILE_STEPS more optimizer steps after a case's timed ones under
torch.profiler and stores `summarize(...)` of their kernels in the case's JSON ("profile"). The
kinds come from kernel names (`kernel_kind`), which vary with the library versions; whatever no rule
matches is counted as "other" and listed among the top kernels, so a new name shows up rather than
hiding in a wrong bucket. Idle time is the span of the profiled steps minus the union of kernel
intervals: the device waiting for the host (launches, syncs, data).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

PROFILE_STEPS = 2

# (kind, name fragments), first match wins: the order settles names that fit several kinds
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimizer", ("adam", "multi_tensor_apply", "foreach")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "softmax")),
    ("attention", ("flash", "fmha", "sdpa", "attention", "cudnn")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul")),
    ("compiled", ("triton_",)),  # inductor's fused kernels (perf.compile): names list the ops they fuse
    ("copy", ("memcpy", "memset", "copy", "cast")),
    ("reduction", ("reduce", "norm")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "index", "scatter", "gather")),
)


def kernel_kind(name: str) -> str:
    """The kind of a CUDA kernel by its (lower-cased) name; "other" when no fragment matches."""
    low = name.lower()
    for kind, fragments in KINDS:
        if any(f in low for f in fragments):
            return kind
    return "other"


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals, overlaps counted once."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def summarize(kernels: Sequence[tuple[str, float, float]], steps: int, top: int = 12) -> dict[str, Any]:
    """kernels: (name, start_us, end_us) of every CUDA kernel in `steps` optimizer steps.

    Per step, in ms: the span from the first kernel's start to the last one's end, the time the
    device ran kernels (busy) and did not (idle), and the kernel time of each kind (kinds can
    overlap in time on several streams, so they may add up to more than busy); the `top` kernels
    by total time with their kind.
    """
    if not kernels:
        return {"steps": steps, "kernels": 0}
    steps = max(steps, 1)
    span = max(e for _, _, e in kernels) - min(s for _, s, _ in kernels)
    busy = union_length((s, e) for _, s, e in kernels)
    by_kind: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for name, start, end in kernels:
        kind = kernel_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + (end - start)
        by_name[name] = by_name.get(name, 0.0) + (end - start)
    per_step = 1e-3 / steps  # us over all steps -> ms per step
    return {
        "steps": steps,
        "kernels": len(kernels),
        "span_ms": round(span * per_step, 2),
        "busy_ms": round(busy * per_step, 2),
        "idle_ms": round((span - busy) * per_step, 2),
        "kinds_ms": {k: round(v * per_step, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [
            {"name": n[:120], "kind": kernel_kind(n), "ms": round(t * per_step, 3)}
            for n, t in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
        ],
    }


def cuda_kernels(prof: Any) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of the CUDA kernels a finished torch.profiler.profile recorded."""
    from torch.autograd import DeviceType

    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start]


def make_profiler(start_step: int, steps: int = PROFILE_STEPS):
    """A Lightning callback profiling optimizer steps [start_step, start_step + steps) on CUDA;
    its `summary` holds `summarize(...)` afterwards (None when nothing was profiled)."""
    import lightning as L
    import torch

    class StepProfiler(L.Callback):
        def __init__(self) -> None:
            self.prof = None
            self.summary: dict[str, Any] | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.prof is None and self.summary is None and trainer.global_step == start_step and torch.cuda.is_available():
                torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                self.prof.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.prof is not None and trainer.global_step >= start_step + steps:
                self._finish(trainer.global_step - start_step)

        def on_train_end(self, trainer, pl_module) -> None:
            if self.prof is not None:  # ended early (max_steps, max_epochs): the steps that did run
                self._finish(trainer.global_step - start_step)

        def _finish(self, done: int) -> None:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            self.summary = summarize(cuda_kernels(self.prof), done)
            self.prof = None

    return StepProfiler()
