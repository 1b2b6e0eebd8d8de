"""Make a run readable on its loggers: the composed config everywhere, W&B panels and files.

Every logger gets the composed config (CSV: hparams.yaml, TensorBoard: hparams, W&B: run config).
On W&B, metrics are grouped by prefix (train/, val/, perf/, data/ become panel sections) and plotted
against the optimizer step, `plan.json` and `data_stats.json` are attached as files and as a `plan`
artifact, and with `logger.log_model=true` the saved adapter (or full model) becomes a `model`
artifact.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from ta_train.config import TrainConfig

log = logging.getLogger(__name__)

METRIC_GROUPS = ("train", "val", "perf", "data")
STEP_AXIS = "trainer/global_step"  # Lightning's WandbLogger logs it with every row
SUMMARIES = {"val/loss": "min", "val/token_acc": "max", "train/loss": "min", "perf/mfu": "mean", "perf/tokens_per_s": "mean"}
RUN_FILES = ("plan.json", "data_stats.json")


def wandb_runs(trainer: Any) -> list[Any]:
    """The wandb Run of every WandbLogger of the trainer (none when W&B is off)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def define_panels(run: Any) -> None:
    """One step axis for every group, and the summary each headline metric keeps."""
    run.define_metric(STEP_AXIS)
    for group in METRIC_GROUPS:
        run.define_metric(f"{group}/*", step_metric=STEP_AXIS)
    for key, summary in SUMMARIES.items():
        run.define_metric(key, step_metric=STEP_AXIS, summary=summary)


def attach_files(run: Any, run_dir: Path, names: tuple[str, ...] = RUN_FILES) -> list[str]:
    """Copy the run's plan and data statistics into the W&B run and log them as a `plan` artifact."""
    import wandb

    present = [run_dir / n for n in names if (run_dir / n).is_file()]
    if not present:
        return []
    artifact = wandb.Artifact(f"plan-{run.id}", type="plan", description="memory plan and data statistics of the run")
    for path in present:
        run.save(str(path), base_path=str(run_dir), policy="now")
        artifact.add_file(str(path))
    run.log_artifact(artifact)
    return [p.name for p in present]


def log_model_artifact(trainer: Any, model_dir: Path) -> int:
    """Upload the saved HF adapter/model folder as a `model` artifact to each W&B run; returns how many."""
    import wandb

    runs = wandb_runs(trainer) if trainer.is_global_zero else []
    for run in runs:
        artifact = wandb.Artifact(f"{model_dir.name}-{run.id}", type="model", description=f"HF {model_dir.name} saved by ta_train")
        artifact.add_dir(str(model_dir))
        run.log_artifact(artifact, aliases=["latest"])
    return len(runs)


class Dashboard(L.Callback):
    """At fit start: config to every logger; W&B panels and run files (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from ta_train.train import _plain

        sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in pl_module.model.parameters()]  # ZeRO-3: full sizes
        trainable, total = sum(n for n, t in sizes if t), sum(n for n, _ in sizes)
        params = {**_plain(self.cfg), "params": {"trainable": trainable, "total": total}}
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
        for run in wandb_runs(trainer) if trainer.is_global_zero else []:
            define_panels(run)  # before anything is logged (the guards log data/* at fit start)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # after on_fit_start, so the guards' data_stats.json exists
        for run in wandb_runs(trainer) if trainer.is_global_zero else []:
            attached = attach_files(run, self.run_dir)
            log.info("wandb: panels %s, files %s", ", ".join(f"{g}/*" for g in METRIC_GROUPS), attached)
