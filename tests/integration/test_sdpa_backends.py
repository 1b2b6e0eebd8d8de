"""perf.sdpa_backends through the real training path: settled on the device at fit start, logged,
and training the same model as PyTorch's own kernel order."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.integration.test_train_tiny import read_metrics
from ta_train.train import fit

COMMON = ["trainer.max_steps=3", "trainer.limit_val_batches=0", "checkpoint.every_n_steps=0", "peft=none", "optim.lr=1e-3"]


def test_a_run_with_a_kernel_order_trains_like_the_default_and_says_which_kernel_ran(make_cfg, tmp_path, caplog):
    default = make_cfg(*COMMON, f"run_dir={tmp_path / 'default'}")
    fit(default)
    ordered = make_cfg(*COMMON, f"run_dir={tmp_path / 'math'}", "perf.sdpa_backends=[math]")
    with caplog.at_level(logging.INFO, logger="ta_train.attention"):
        _, module, _ = fit(ordered)
    choice = module.attention_choice
    assert (choice.unmasked, choice.masked) == ("math", "math")
    assert module.model.config._attn_implementation == "ta_sdpa_math"
    assert any("sdpa kernels math: unmasked rows run math" in r.getMessage() for r in caplog.records)
    a, b = read_metrics(Path(default.run_dir)), read_metrics(Path(ordered.run_dir))
    assert sorted(a) == sorted(b) == [0, 1, 2]
    for step in a:  # same data, same weights; only the kernel's summation order differs
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-4), step
        assert b[step]["train/tokens"] == a[step]["train/tokens"]
