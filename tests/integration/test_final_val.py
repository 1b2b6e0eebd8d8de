"""The value a sweep minimizes is the val/loss of the final weights, however the run ends."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from ta_train.final_val import LastValidationStep, final_val_loss
from ta_train.train import fit


@pytest.mark.slow  # a whole epoch of the demo course at micro-batch 8: ~25 s of CPU
def test_an_epoch_run_whose_schedule_skips_the_end_is_validated_once_more(make_cfg):
    # 62 demo examples / micro 8 = 8 micro-batches = 4 optimizer steps; validation every 100 steps never fires
    cfg = make_cfg("trainer.max_steps=-1", "trainer.max_epochs=1", "trainer.val_check_interval=100",
                   "trainer.limit_val_batches=1", "batch.micro_size=8", "batch.global_size=16", "data.max_seq_len=128")
    last = LastValidationStep()
    trainer, module, _ = fit(cfg, [last])
    assert trainer.global_step == 4 and last.step is None
    value = final_val_loss(trainer, module, last)
    with (Path(cfg.run_dir) / "metrics.csv").open() as fh:
        logged = [float(r["val/loss"]) for r in csv.DictReader(fh) if r.get("val/loss")]
    assert math.isfinite(value) and logged == [value]


def test_no_validation_means_no_value(make_cfg):
    cfg = make_cfg("trainer.max_steps=1", "trainer.limit_val_batches=0", "data.max_seq_len=128")
    last = LastValidationStep()
    trainer, module, _ = fit(cfg, [last])
    assert final_val_loss(trainer, module, last) is None
