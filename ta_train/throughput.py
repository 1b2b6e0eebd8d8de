"""Live `perf/*` metrics: throughput, achieved TFLOP/s, MFU, peak memory, GPU utilization.

Each optimizer step is timed with a monotonic clock from the start of its first micro-batch to the
end of its last one (after the optimizer update). Validation and checkpoint writes run after that
point and before the next step starts, so they are not in the window. The FLOPs arithmetic lives
in ta_train.perf; this module only measures and logs.

Logged every optimizer step (the loggers write every `trainer.log_every_n_steps`-th):
- perf/tokens_per_s: tokens the model processed (prompt and answer, padding excluded), all devices;
- perf/trained_tokens_per_s: of those, tokens with a label (the loss is computed on them);
- perf/tflops: achieved model TFLOP/s (all devices) = tokens_per_s x FLOPs per token;
- perf/mfu: perf/tflops over devices x peak; only with a peak (hw.peak_tflops, or a measured one
  with perf.measure_peak=true), never a guessed one;
- perf/step_s: seconds of the step's window;
- perf/max_memory_gb: GiB, torch.cuda.max_memory_allocated on CUDA, else the process's peak RSS;
- perf/gpu_util: percent of the last NVML sample period a kernel ran (needs nvidia-ml-py).
"""
from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ta_train.config import ArchConfig, PeftMethod, TrainConfig
from ta_train.metrics import host_scalar
from ta_train.perf import mfu, train_flops_per_token

log = logging.getLogger(__name__)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far in GiB: CUDA allocator peak on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def gpu_utilization(device: torch.device) -> float | None:
    """GPU busy percent from NVML via torch (maps CUDA_VISIBLE_DEVICES); None without NVML."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # nvidia-ml-py missing, or no NVML driver library: simply not reported
        return None


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype a Lightning precision runs in."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Best achieved TFLOP/s of an n x n matmul in `dtype` (2 n^3 FLOPs each), best of 3 timings.

    A measured stand-in for the datasheet peak where there is none (CPUs): MFU against it says how
    much of what this machine's matmul reaches the training uses.
    """
    n = n or (4096 if device.type == "cuda" else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best / 1e12


class PerfMonitor(L.Callback):
    """Times optimizer steps and logs perf/* (see the module docstring)."""

    def __init__(self, arch: ArchConfig, peak_tflops: float, measure_peak: bool, gpu_util: bool, precision: str) -> None:
        self.arch, self.peak, self.measure_peak = arch, peak_tflops, measure_peak
        self.gpu_util, self.precision = gpu_util, precision
        self.adapter_params: int | None = None
        self._start: float | None = None
        self._done_step = -1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if pl_module.cfg.peft.method != PeftMethod.none:  # LoRA FLOPs need the adapter size: count it
            # ds_numel: the full size of a parameter ZeRO-3 has partitioned
            self.adapter_params = sum(getattr(p, "ds_numel", p.numel()) for p in pl_module.model.parameters() if p.requires_grad)
        if self.measure_peak:
            self.peak = measure_peak_tflops(pl_module.device, precision_dtype(self.precision))
            for logger in trainer.loggers:
                logger.log_metrics({"perf/peak_tflops_measured": self.peak}, step=0)
        kind = "full fine-tune" if self.adapter_params is None else f"LoRA, {self.adapter_params:,} adapter params"
        source = "measured" if self.measure_peak else "hw.peak_tflops"
        where = f"{self.peak:g} TFLOP/s per device ({source})" if self.peak > 0 else "no peak known: MFU not reported (perf.measure_peak=true measures one)"
        log.info("perf: model FLOPs of a %s (ta_train.perf); %s", kind, where)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            self._start = time.monotonic()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        stats = pl_module.last_step
        if self._start is None or stats is None or stats.step == self._done_step:
            return  # the accumulation window is still open
        seconds = time.monotonic() - self._start
        self._start, self._done_step = None, stats.step
        metrics = self.step_metrics(stats, seconds, pl_module.device, trainer.world_size)
        pl_module.log_dict({k: host_scalar(v) for k, v in metrics.items()},
                           on_step=True, on_epoch=False, rank_zero_only=True)

    def step_metrics(self, stats: Any, seconds: float, device: torch.device, devices: int) -> dict[str, float]:
        """perf/* of one step: `stats` (module.StepStats) counts all devices' tokens."""
        seconds = max(seconds, 1e-9)
        tokens_per_s = stats.tokens / seconds
        seq_len = stats.tokens_sq / stats.tokens if stats.tokens else 0.0  # token-weighted mean length
        flops_per_token = train_flops_per_token(self.arch, round(seq_len), self.adapter_params)
        out = {
            "perf/tokens_per_s": tokens_per_s,
            "perf/trained_tokens_per_s": stats.trained_tokens / seconds,
            "perf/tflops": tokens_per_s * flops_per_token / 1e12,
            "perf/step_s": seconds,
            "perf/max_memory_gb": peak_memory_gib(device),
        }
        utilization = mfu(tokens_per_s, flops_per_token, self.peak, devices)
        if utilization is not None:
            out["perf/mfu"] = utilization
        busy = gpu_utilization(device) if self.gpu_util else None
        if busy is not None:
            out["perf/gpu_util"] = busy
        return out


def monitor_callbacks(cfg: TrainConfig, run_dir: Path) -> list[Any]:
    """The perf monitor and the W&B dashboard set-up, for build_trainer."""
    from ta_train.dashboard import Dashboard

    peak = cfg.hw.peak_tflops if cfg.hw is not None else 0.0
    return [
        PerfMonitor(cfg.model.arch, peak, cfg.perf.measure_peak, cfg.perf.gpu_util, cfg.precision.name),
        Dashboard(cfg, run_dir),
    ]
