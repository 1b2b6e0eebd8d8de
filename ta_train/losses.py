"""Loss and token metrics for causal-LM fine-tuning: pure functions, shapes in the docstrings.

The SFT loss is a *sum* over trained tokens; the caller divides by the number of trained tokens in
the whole optimizer step (all micro-batches of the accumulation window, all ranks), so a window of
unequal-length micro-batches gives exactly the loss and gradient of one big batch: not a mean of
micro-batch means, which over-weights tokens of short micro-batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSS_RANGE = "ta.loss"  # the profiler range around the loss's work (bench/step_profile.py)


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1 by shifting the labels, not the logits.

    logits: (B, T, V); labels: (B, T) with IGNORE_INDEX where nothing is trained.
    Returns logits (B*T, V), a view when `logits` is contiguous (slicing off the last position
    instead would copy all B*T*V values), and targets (B*T,): labels[:, 1:] with IGNORE_INDEX
    appended to each row, so each row's last position trains nothing.
    """
    vocab = logits.size(-1)
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return logits.reshape(-1, vocab), targets.reshape(-1)


@torch.profiler.record_function(LOSS_RANGE)
def trained_rows(
    logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits rows that predict a trained token, and those tokens: (N, V) and (N,).

    Only these rows are cast and scored: with prompts masked, a fraction of B*T*V. index: their
    flat positions b * T + t, (N,) long on the logits' device, when the caller knows them (the
    training batches carry them as `trained_index`, ta_train.data.trained_index): then selecting
    them waits for nothing. Without it a boolean mask selects the same rows, in the same order; on
    a GPU that waits for the device to count them.
    """
    flat_logits, targets = shift_for_next_token(logits, labels)
    if index is not None:
        return flat_logits.index_select(0, index), targets.index_select(0, index)
    keep = targets != IGNORE_INDEX  # never all True: each row's last position trains nothing
    return flat_logits[keep], targets[keep]


@torch.profiler.record_function(LOSS_RANGE)
def sum_token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over trained positions, and how many there were.

    logits: (B, T, V) float; labels: (B, T) long, IGNORE_INDEX on untrained positions; index: the
    trained positions' flat indices, as in trained_rows.
    Per trained token the loss is (1 - eps) * -log p(y) + eps * mean_v(-log p(v))
    (label smoothing, Szegedy et al. 2016, eq. for q'(k)), computed in fp32.
    Returns (loss_sum: scalar tensor, n_tokens: scalar long tensor, filled on the device: no copy).
    """
    rows, targets = trained_rows(logits, labels, index)
    loss_sum = F.cross_entropy(rows.float(), targets, reduction="sum", label_smoothing=label_smoothing)
    return loss_sum, torch.full((), targets.numel(), dtype=torch.long, device=targets.device)


@torch.profiler.record_function(LOSS_RANGE)
def token_accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) argmax next-token predictions over trained positions.

    Counts, not a ratio, so ranks and micro-batches can be summed before dividing.
    logits: (B, T, V); labels: (B, T). Returns two scalar long tensors.
    """
    flat_logits, targets = shift_for_next_token(logits, labels)  # a view: argmax reads, copies nothing
    trained = targets != IGNORE_INDEX
    correct = (flat_logits.argmax(dim=-1) == targets) & trained
    return correct.sum(), trained.sum()


def window_scale(accumulation: int, world_size: int, window_tokens: int, engine_divides: bool = False) -> float:
    """Factor that turns a micro-batch's loss *sum* into its share of the step's token mean.

    Lightning divides each micro-batch loss by `accumulation` and DDP averages gradients over
    `world_size` ranks, so multiplying the sum by accumulation * world_size / window_tokens
    (window_tokens: trained tokens in the whole optimizer step, all micro-batches, all ranks)
    leaves exactly sum_i loss_sum_i / window_tokens after both divisions. engine_divides: the
    strategy's engine divides by `accumulation` once more (DeepSpeed's backward, scale_wrt_gas).
    """
    if window_tokens <= 0:
        return 0.0
    return accumulation * (accumulation if engine_divides else 1) * world_size / window_tokens
