"""metrics.csv of a run folder (ta_train.csv_metrics): Lightning's CSV logger with the run folder's rules."""
from __future__ import annotations

import csv
import logging
import warnings

from ta_train.csv_metrics import RunCSVLogger, kept_rows


def write(run_dir, resuming, rows, resume_step=None):
    logger = RunCSVLogger(run_dir, resuming)
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
        logger.save()  # held while resuming until the resumed step is known
    if resuming:
        logger.experiment.resume_step = resume_step
        logger.save()


def read(run_dir):
    with (run_dir / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(fh)]


def test_a_fresh_run_in_a_hydra_folder_does_not_warn_and_replaces_an_old_metrics_file(tmp_path, caplog):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "exists and is not empty" warning would raise here
        write(tmp_path, False, [(0, {"train/loss": 2.0})])
    assert read(tmp_path) == [{"train/loss": "2.0", "step": "0"}]
    with caplog.at_level(logging.WARNING, logger="ta_train.csv_metrics"):
        write(tmp_path, False, [(0, {"train/loss": 1.5})])
    assert read(tmp_path) == [{"train/loss": "1.5", "step": "0"}]
    assert "an earlier run's metrics in this folder, replaced" in caplog.text


def test_a_resumed_run_keeps_the_rows_before_its_step_less_those_it_logs_again(tmp_path):
    data = {"data/rows": 62.0}
    write(tmp_path, False, [(0, data)] + [(s, {"train/loss": 10.0 - s}) for s in range(5)] + [(4, {"val/loss": 7.0})])
    # resumed from the checkpoint of step 3: the data report again, steps 3 and 4 again, a new column
    write(tmp_path, True, [(0, data), (3, {"train/loss": 6.5, "perf/mfu": 0.4}), (4, {"train/loss": 5.5}),
                           (5, {"train/loss": 4.5})], resume_step=3)
    rows = read(tmp_path)
    assert [(r["step"], r.get("train/loss"), r.get("perf/mfu"), r.get("data/rows")) for r in rows] == [
        ("0", "10.0", None, None), ("1", "9.0", None, None), ("2", "8.0", None, None),
        ("0", None, None, "62.0"), ("3", "6.5", "0.4", None), ("4", "5.5", None, None), ("5", "4.5", None, None)]
    with (tmp_path / "metrics.csv").open() as fh:
        assert csv.DictReader(fh).fieldnames == ["data/rows", "perf/mfu", "step", "train/loss", "val/loss"]


def test_a_resume_without_an_earlier_file_writes_a_new_one(tmp_path):
    write(tmp_path, True, [(3, {"train/loss": 1.0})], resume_step=3)
    assert read(tmp_path) == [{"step": "3", "train/loss": "1.0"}]


def test_kept_rows_drops_steps_from_the_resumed_one_and_rows_logged_again():
    rows = [{"step": "0", "data/rows": "5"}, {"step": "0", "train/loss": "1"}, {"step": "2.0", "train/loss": "2"},
            {"step": "3", "train/loss": "3"}, {"step": "", "x": "1"}, {"step": "7", "train/loss": "4"}]
    again = [{"step": 0, "data/rows": 5.0}]
    assert kept_rows(rows, 3, again) == [{"step": "0", "train/loss": "1"}, {"step": "2.0", "train/loss": "2"}]
    assert kept_rows(rows, 3, []) == rows[:3]
