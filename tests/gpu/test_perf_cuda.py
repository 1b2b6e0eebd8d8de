"""perf/* on CUDA: allocator peak memory, MFU against hw.peak_tflops and a measured bf16 peak, NVML utilization."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.integration.test_live_metrics import columns
from ta_train.throughput import measure_peak_tflops
from ta_train.train import fit

pytestmark = pytest.mark.gpu

GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=3", "trainer.limit_val_batches=0",
       "precision=bf16-mixed", "hw.accelerator=gpu", "hw.peak_tflops=989"]


def test_perf_metrics_on_cuda(make_cfg):
    cfg = make_cfg(*GPU)
    fit(cfg)
    cols = columns(Path(cfg.run_dir))
    assert len(cols["perf/mfu"]) == 3 and all(0 < m < 1 for m in cols["perf/mfu"])
    assert all(0 < g < 200 for g in cols["perf/max_memory_gb"])  # torch.cuda.max_memory_allocated, GiB
    if importlib.util.find_spec("pynvml") is not None:
        assert all(0 <= u <= 100 for u in cols["perf/gpu_util"])


def test_measured_bf16_peak_is_plausible():
    peak = measure_peak_tflops(torch.device("cuda"), torch.bfloat16)
    assert 1 < peak < 2000  # TFLOP/s of a 4096^3 bf16 matmul on any current card
