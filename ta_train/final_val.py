"""The number a sweep minimizes: `val/loss` of the weights the run ends with.

The last scheduled validation can be steps before the end (max_steps not a multiple of
`trainer.val_check_interval`). `LastValidationStep` then asks Lightning to stop at the final step,
which makes the fit loop validate there (logged, and seen by the `best` checkpoint, like any other
validation); runs that end on epochs instead get one `trainer.validate` pass after fit. Either way
every job of a sweep is scored on its final weights. Under DDP every rank takes the same branch
(they share `global_step`), and `val/loss` is already summed over ranks before it is logged.
"""
from __future__ import annotations

from typing import Any

import lightning as L

METRIC = "val/loss"


class LastValidationStep(L.Callback):
    """Remembers the optimizer step of the last validation run during fit (sanity checks excluded)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """At max_steps, a requested stop makes Lightning validate before it leaves the loop."""
        at_end = 0 < trainer.max_steps <= trainer.global_step
        if at_end and self.step != trainer.global_step and trainer.limit_val_batches != 0:
            trainer.should_stop = True


def final_val_loss(trainer: L.Trainer, module: L.LightningModule, last: LastValidationStep) -> float | None:
    """`val/loss` at the final step, validating once more when the last validation was earlier.

    None when validation is switched off (`trainer.limit_val_batches=0`) or the run has no
    validation examples: there is nothing to score.
    """
    if trainer.limit_val_batches == 0:
        return None
    if last.step != trainer.global_step:
        trainer.validate(module, datamodule=trainer.datamodule, verbose=False)
    value = trainer.callback_metrics.get(METRIC)
    return None if value is None else float(value)  # NaN stays NaN: sweepers count it as a failed trial
