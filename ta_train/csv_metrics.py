"""metrics.csv of a run folder: Lightning's CSV logger, kept across a resume.

Lightning's writer deletes an existing metrics.csv (and warns) whenever its folder is not empty,
which a run folder never is: Hydra writes `.hydra/` first. So every fresh run warned, and a run
resumed in place (`hydra.run.dir=runs/<old> ckpt_path=last`) lost the rows of the steps before its
checkpoint. Here a fresh run replaces only an existing metrics.csv, with a log line saying so, and a
resumed run keeps the earlier rows except those it logs again: the steps from its checkpoint's on
(trained again) and rows it repeats (the data report at step 0). ResumedAt tells the writer the
checkpoint's step once Lightning has restored it; the writer holds its rows until then.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)


def _columns(row: dict[str, Any]) -> frozenset[str]:
    return frozenset(k for k, v in row.items() if k != "step" and v not in (None, ""))


def kept_rows(rows: list[dict[str, str]], resume_step: int, new: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The earlier rows (metrics.csv as csv.DictReader reads it) a run resumed at `resume_step` keeps:
    those logged before it, less any the resumed run logs again (`new`: same step, same columns)."""
    again = {(int(m["step"]), _columns(m)) for m in new}
    kept = []
    for r in rows:
        if r.get("step") in (None, ""):
            continue
        step = int(float(r["step"]))
        if step < resume_step and (step, _columns(r)) not in again:
            kept.append(r)
    return kept


class RunMetricsWriter(ExperimentWriter):
    """ExperimentWriter that keeps a resumed run's earlier rows (see the module docstring)."""

    def __init__(self, log_dir: str, resuming: bool) -> None:
        self.resuming = resuming
        self.resume_step: int | None = None  # the checkpoint's global step (ResumedAt)
        self._trimmed = False  # the earlier rows are trimmed once, at the first save after resume_step is known
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        if self.resuming:  # append to it; the header grows as Lightning's writer grows it
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = sorted(csv.DictReader(fh).fieldnames or [])
            return
        log.warning("%s: an earlier run's metrics in this folder, replaced by this run's (ckpt_path=last resumes "
                    "that run and keeps them)", self.metrics_file_path)
        self._fs.rm_file(self.metrics_file_path)

    def save(self) -> None:
        if self.resuming and not self._trimmed:
            if self.resume_step is None:
                return  # hold the rows until the checkpoint's step is known
            if self._fs.isfile(self.metrics_file_path):
                self._trim()
            self._trimmed = True
        super().save()

    def _trim(self) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = list(reader.fieldnames or []), list(reader)
        kept = kept_rows(rows, self.resume_step, self.metrics)
        if len(kept) == len(rows):
            return
        log.info("metrics.csv: %d earlier rows are logged again by the run resumed at step %d", len(rows) - len(kept),
                 self.resume_step)
        with self._fs.open(self.metrics_file_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)


class RunCSVLogger(CSVLogger):
    """metrics.csv directly in the run folder, written by RunMetricsWriter."""

    def __init__(self, run_dir: Path, resuming: bool) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")
        self._resuming = resuming

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = RunMetricsWriter(self.log_dir, self._resuming)
        return self._experiment


class ResumedAt(L.Callback):
    """Tells the run's RunCSVLogger the step training resumed at (Lightning has restored it by
    on_train_start), so it can keep the earlier rows before it."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.experiment.resume_step = trainer.global_step
                logger.save()
