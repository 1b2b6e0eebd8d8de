"""Guards against wasted runs (seed section 3.1): check the data before step 1, stop on a broken
loss or gradient with the likely cause named, log (and optionally skip) loss spikes, and stop
early when validation loss rises while training loss still falls.

A fatal check runs before the optimizer applies the step's update and raises `TrainingStopped`:
the update is not applied and no checkpoint is written after it. A checkpoint is *good* once the
weights it holds gave a finite, non-zero loss and finite gradients on the next step; the guard then
hard-links it as `checkpoints/last-good.ckpt`. When `last.ckpt` was written right before the bad
step, its weights may be what broke (or the batch was): the stop moves it to
`last-unverified.ckpt` and puts the last good checkpoint back as `last.ckpt`. The reason is printed
and written to `<run_dir>/summary.json`.

Under DDP, FSDP and DeepSpeed each rank trains different examples: when a guard fires, the example ids
of every rank are gathered (`gather_ids`, a collective) so the report names them all. Every guard
decides on values that are equal on all ranks (the step loss summed over ranks, the gradient norm
after the all-reduce or the shard reduce), so all ranks enter the gather and stop together.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from ta_train.config import GuardsConfig, TrainConfig
from ta_train.metrics import SpikeDetector, format_report, host_scalar

log = logging.getLogger(__name__)

DATA_SCALARS = ("examples", "trained_tokens", "trained_share", "rejected_all_masked", "rejected_other", "len_p50", "len_p95", "len_max")


class TrainingStopped(RuntimeError):
    """A guard stopped training; `reason` names the cause and what to do."""

    def __init__(self, reason: str, step: int, examples: list[str]) -> None:
        super().__init__(reason)
        self.reason, self.step, self.examples = reason, step, examples


def example_origins(trainer: Any, ids: list[int], limit: int = 20) -> list[str]:
    """`file:line` of training rows (the datamodule's train_origins), else the row numbers."""
    origins = getattr(trainer.datamodule, "train_origins", None) if trainer.datamodule is not None else None
    unique = list(dict.fromkeys(ids))[:limit]
    return [origins[i] if origins and i < len(origins) else f"row {i}" for i in unique]


def gather_ids(trainer: Any, *mine: list[int]) -> list[list[int]]:
    """Each of this rank's id lists joined with the same list of every other rank, in rank order.

    A collective under a multi-process strategy: every rank must call it at the same point, so call
    it only on a decision all ranks share. One process (or no process group): the lists as given.
    """
    import torch.distributed as dist

    lists = [list(ids) for ids in mine]
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return lists
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, lists)
    return [[i for rank in gathered for i in rank[k]] for k in range(len(lists))]


def last_checkpoint(trainer: Any) -> tuple[Path | None, int]:
    """(the `last.ckpt` a ModelCheckpoint wrote, the global_step stored in it), or (None, -1)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.last_model_path and Path(cb.last_model_path).exists():
            return Path(cb.last_model_path), int(getattr(cb, "_last_global_step_saved", -1))
    return None, -1


class GuardCallback(L.Callback):
    """Data report before step 1; per optimizer step: non-finite / zero loss, non-finite gradients, spikes."""

    def __init__(self, cfg: GuardsConfig, run_dir: Path, precision: str, lr: float) -> None:
        self.cfg, self.run_dir, self.precision, self.lr = cfg, Path(run_dir), precision, lr
        self.spikes = SpikeDetector(cfg.spike_window, cfg.spike_zscore, cfg.spike_min_history)
        self.stop_reason: str | None = None
        self.skipped_fp16_steps = 0
        self._checked_step = -1
        self._good_step = -1  # global_step of checkpoints/last-good.ckpt

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        report = getattr(trainer.datamodule, "report", None) if trainer.datamodule is not None else None
        if not report or not trainer.is_global_zero:
            return
        print(format_report(report))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "data_stats.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for logger in trainer.loggers:
            logger.log_metrics({f"data/{k}": float(report[k]) for k in DATA_SCALARS}, step=0)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        stats = pl_module.last_step
        # once per optimizer step (DeepSpeed calls this hook on every micro-batch)
        if stats is None or stats.step != trainer.global_step or self._checked_step == stats.step:
            return
        self._checked_step = stats.step
        if not math.isfinite(stats.loss):  # summed over ranks: a NaN micro-batch on one rank stops them all
            bad, seen = gather_ids(trainer, stats.nonfinite_ids, stats.example_ids)
            self._stop(trainer, f"the training loss is {stats.loss}", bad or seen, self._nonfinite_causes())
        norm = pl_module.grad_norm_host()
        if norm is not None and not bool(norm.isfinite()):
            if self.precision == "16-mixed":  # the loss scaler skips this update and lowers its scale
                self.skipped_fp16_steps += 1
                pl_module.log("train/fp16_skipped_steps", host_scalar(self.skipped_fp16_steps), on_step=True, on_epoch=False, rank_zero_only=True)
            else:
                ids = gather_ids(trainer, stats.example_ids)[0]  # the norm of all-reduced gradients: same on all ranks
                self._stop(trainer, f"the gradient norm is {float(norm)} (loss {stats.loss:.4f})", ids, self._nonfinite_causes())
        if stats.loss == 0.0:
            cause = (
                "this step has no trained token (every label is -100): a data or masking bug in its examples"
                if stats.trained_tokens == 0
                else f"{stats.trained_tokens} trained tokens predicted with probability 1: logits overflowed (lower optim.lr={self.lr:g})"
            )
            self._stop(trainer, "the training loss is exactly 0", gather_ids(trainer, stats.example_ids)[0], cause)
        self._keep_good(trainer, stats.step)
        self._check_spike(trainer, pl_module, stats)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """DeepSpeed holds the gradients in its engine (grad_norm() above sees none): check the
        engine's global norm once it stepped, before ModelCheckpoint (Lightning runs it last) saves."""
        if not (trainer.strategy.handles_gradient_accumulation and bool(batch.get("window_end", True))):
            return
        from ta_train.zero import engine_grad_norm

        norm = engine_grad_norm(trainer)
        stats = pl_module.last_step
        if norm is None or math.isfinite(norm) or self.precision == "16-mixed" or stats is None:
            return  # under fp16 DeepSpeed's loss scaler skips the step itself
        ids = gather_ids(trainer, stats.example_ids)[0]  # the engine's global norm: same on all ranks
        self._stop(trainer, f"the gradient norm is {norm} (loss {stats.loss:.4f})", ids, self._nonfinite_causes())

    def _keep_good(self, trainer: Any, step: int) -> None:
        """last.ckpt holds the weights this step just ran without trouble: hard-link it as last-good.ckpt
        (no copy; the atomic writer replaces last.ckpt by rename, so the link keeps the old file)."""
        last, saved_step = last_checkpoint(trainer)
        if last is None or not last.is_file() or saved_step != step or not trainer.is_global_zero:
            return
        good, tmp = last.with_name("last-good.ckpt"), last.with_name("last-good.ckpt.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.link(last, tmp)
            os.replace(tmp, good)
            self._good_step = step
        except OSError as err:  # a filesystem without hard links: no last-good copy
            log.warning("could not link %s as %s: %s", last, good, err)

    def _restore_good(self, trainer: Any) -> str:
        """Put the last good checkpoint back as last.ckpt if last.ckpt holds the weights of the bad step."""
        last, saved_step = last_checkpoint(trainer)
        if last is None:
            return "none written yet"
        if saved_step < trainer.global_step:
            return f"{last} (step {saved_step})"
        good = last.with_name("last-good.ckpt")
        if self._good_step >= 0 and good.is_file() and trainer.is_global_zero:
            unverified = last.with_name("last-unverified.ckpt")
            os.replace(last, unverified)
            os.replace(good, last)
            return (f"{last} (step {self._good_step}); the checkpoint of step {saved_step}, written just before the bad "
                    f"step, holds the weights it ran with (unverified): {unverified}")
        return f"none verified: {last} holds the weights the bad step ran with"
    def _nonfinite_causes(self) -> str:
        fp16 = "fp16 overflow (use precision=bf16-mixed on cards that have it, or a lower optim.lr)"
        lr = f"an exploding update (lower optim.lr={self.lr:g}, keep trainer.gradient_clip_val set)"
        data = "bad data in the examples listed"
        return "; ".join([fp16, lr, data] if self.precision == "16-mixed" else [lr, data, fp16])

    def _check_spike(self, trainer: Any, pl_module: Any, stats: Any) -> None:
        spike, z = self.spikes.observe(stats.loss)
        if z is not None:
            pl_module.log("train/loss_zscore", host_scalar(max(min(z, 1e6), -1e6)), on_step=True, on_epoch=False, rank_zero_only=True)
        if not spike:  # judged on the loss summed over ranks: every rank takes the same branch
            return
        ids = gather_ids(trainer, stats.example_ids)[0]
        skipped = self.cfg.skip_spikes and trainer.strategy.__class__.__name__ != "DeepSpeedStrategy"
        if skipped:  # the optimizer sees no gradient: weights, Adam moments and weight decay stay put
            for p in pl_module.parameters():
                p.grad = None
        record = {"step": stats.step, "loss": stats.loss, "zscore": z, "skipped": skipped,
                  "example_ids": ids, "examples": example_origins(trainer, ids)}
        log.warning("loss spike at step %d: loss %.4f, robust z %.1f%s; examples %s", stats.step, stats.loss, z,
                    " (update skipped)" if skipped else "", record["examples"])
        if trainer.is_global_zero:
            with (self.run_dir / "spikes.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _stop(self, trainer: Any, what: str, ids: list[int], causes: str) -> None:
        examples = example_origins(trainer, ids)
        checkpoint = self._restore_good(trainer)
        self.stop_reason = (
            f"training stopped at step {trainer.global_step}: {what}. Likely causes: {causes}. "
            f"Examples in this step: {', '.join(examples) or 'unknown'}. "
            f"Last good checkpoint: {checkpoint}; nothing is written after this step."
        )
        if trainer.is_global_zero:
            print(f"\n== guard: {self.stop_reason}", flush=True)
            summary = {"stopped": True, "stop_reason": self.stop_reason, "step": trainer.global_step,
                       "examples": examples, "last_checkpoint": checkpoint}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        raise TrainingStopped(self.stop_reason, trainer.global_step, examples)


class OverfitStopping(EarlyStopping):
    """Lightning EarlyStopping on val/loss that stops only while training loss is still falling.

    Patience runs out after `patience` validations without a val/loss improvement; the run stops if
    the mean training loss since the last validation is below the one at the best validation
    (overfitting, seed 3.1). A plateau of both losses keeps training.

    Checkpoints keep its history (EarlyStopping's counters plus the training losses it compares), so
    a run resumed from `last.ckpt` stops where the uninterrupted run would. The state is stored under
    a key naming patience and min_delta: two instances do not overwrite each other's state, and a run
    resumed with other settings starts their history afresh.
    """

    def __init__(self, patience: int, min_delta: float) -> None:
        super().__init__(monitor="val/loss", mode="min", patience=patience, min_delta=min_delta, strict=False,
                         verbose=True, check_on_train_epoch_end=False)
        self._settings = {"patience": patience, "min_delta": min_delta}
        self._recent: list[float] = []
        self._seen_step = -1
        self.train_at_best: float | None = None
        self.train_now: float | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, **self._settings)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "recent_train_losses": list(self._recent), "seen_step": self._seen_step,
                "train_at_best": self.train_at_best, "train_now": self.train_now}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._recent = list(state_dict["recent_train_losses"])
        self._seen_step = state_dict["seen_step"]
        self.train_at_best, self.train_now = state_dict["train_at_best"], state_dict["train_now"]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        stats = pl_module.last_step
        if stats is not None and stats.step != self._seen_step:
            self._seen_step = stats.step
            self._recent.append(stats.loss)

    def _evaluate_stopping_criteria(self, current: Any) -> tuple[bool, str | None]:
        if self._recent:
            self.train_now = sum(self._recent) / len(self._recent)
            self._recent = []
        best_before = float(self.best_score)
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if self.wait_count == 0:  # improved: remember the training loss at the best validation
            self.train_at_best = self.train_now
        if should_stop and self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
            falling = self.train_now is not None and self.train_at_best is not None and self.train_now < self.train_at_best
            if not falling:
                self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
                return False, f"val/loss has not improved for {self.wait_count} validations, but train loss is not falling either: continuing"
            reason = (
                f"overfitting: val/loss has not improved on its best {best_before:.4f} for {self.wait_count} validations "
                f"(now {float(current):.4f}) while train loss fell from {self.train_at_best:.4f} to {self.train_now:.4f}. "
                f"The best checkpoint is checkpoints/best.ckpt. Seed 3.1: raise optim.weight_decay (0.1), peft.dropout "
                f"(0.05-0.1), or train fewer epochs."
            )
        return should_stop, reason


def guard_callbacks(cfg: TrainConfig, run_dir: Path) -> list[Any]:
    """The guards the config turns on, for build_trainer."""
    callbacks: list[Any] = []
    if cfg.guards.enabled:
        callbacks.append(GuardCallback(cfg.guards, run_dir, cfg.precision.name, cfg.optim.lr))
    if cfg.guards.early_stopping.enabled and cfg.trainer.limit_val_batches != 0:
        callbacks.append(OverfitStopping(cfg.guards.early_stopping.patience, cfg.guards.early_stopping.min_delta))
    return callbacks


def stop_reason(trainer: Any) -> str | None:
    """Why the run stopped before its planned end (a guard or early stopping), None otherwise."""
    for cb in trainer.callbacks:
        if isinstance(cb, GuardCallback) and cb.stop_reason:
            return cb.stop_reason
        if isinstance(cb, OverfitStopping) and cb.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            return f"early stopping at step {trainer.global_step}: {cb.stopping_reason_message}"
    return None
