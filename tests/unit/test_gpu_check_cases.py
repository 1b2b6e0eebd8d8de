"""bench/gpu_check.py's CUDA cases compose what their names say (composed here; nothing runs)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("name, fused", [
    ("full_bf16", False),  # the foreach-AdamW baseline, though the h200 profile turns optim.fused on
    ("full_zero2", False),  # fit() without apply_plan: DeepSpeed gets the unfused AdamW the plan counts
    ("full_bf16_fused_adamw", True),
    ("full_bf16_fast", True),
])
def test_cuda_cases_use_fused_adamw_only_where_named(name, fused):
    from bench.gpu_check import case_overrides, compose

    cfg = compose(case_overrides(name, "1b", "cuda", Path("/tmp/unused.jsonl")))
    assert cfg.optim.fused is fused
