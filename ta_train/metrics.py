"""Training-health numbers: token accuracy as a distributed metric, robust z-scores, data statistics.

Pure functions (shapes and units in the docstrings) plus one torchmetrics `Metric`. The guards
(ta_train.guards) and the live metrics (ta_train.throughput) are built on them.
"""
from __future__ import annotations

import statistics
from collections import deque
from typing import Any, Sequence

import torch
from torchmetrics import Metric

from ta_train.losses import IGNORE_INDEX, token_accuracy_counts

# Reject reasons (ta_train.chat, ta_train.data) that mean "every label would be -100".
NO_TRAINED_TOKEN_REASONS = ("no trained token", "no non-empty assistant turn")

# 1 / Phi^-1(3/4): scales the median absolute deviation to the standard deviation of a normal
# distribution, so a robust z-score reads like an ordinary one (Iglewicz & Hoaglin 1993).
MAD_TO_SIGMA = 0.6745


class TokenAccuracy(Metric):
    """Next-token argmax accuracy over trained positions (labels != -100).

    States are the integer counts `correct` and `total`, summed across ranks before dividing
    (dist_reduce_fx="sum"), so the distributed value equals the single-process one. Updated from
    logits inside the step; the logits are never returned from the step.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits: (B, T, V); labels: (B, T), IGNORE_INDEX on untrained positions."""
        correct, total = token_accuracy_counts(logits.detach(), labels)
        self.correct += correct.to(self.correct.device)
        self.total += total.to(self.total.device)

    def update_counts(self, correct: torch.Tensor, total: torch.Tensor) -> None:
        """Add counts computed elsewhere (the fused loss counts without logits, ta_train.fused_ce)."""
        self.correct += correct.detach().to(self.correct.device, torch.long)
        self.total += total.detach().to(self.total.device, torch.long)

    def compute(self) -> torch.Tensor:
        """correct / total as a float scalar; 0 when nothing was counted."""
        return self.correct.double() / max(int(self.total), 1)


def host_scalar(value: float) -> torch.Tensor:
    """A number to log, as a CPU tensor.

    Lightning turns a Python number given to `self.log` into a tensor on the module's device
    (`torch.tensor(value, device=...)`); on CUDA that blocking copy waits for all queued work, e.g.
    the optimizer step just launched. A CPU tensor stays on the host until the logger reads it.
    """
    return torch.tensor(float(value), dtype=torch.float64)


def robust_zscore(value: float, history: Sequence[float]) -> float:
    """0.6745 * (value - median) / MAD of `history` (MAD: median absolute deviation).

    Median and MAD ignore the outliers a mean and standard deviation would chase, so one earlier
    spike does not hide the next. MAD == 0 (a constant history): 0 when value equals the median,
    else +/-inf. Needs a non-empty history.
    """
    if not history:
        raise ValueError("robust_zscore needs at least one past value")
    med = statistics.median(history)
    mad = statistics.median(abs(h - med) for h in history)
    if mad == 0:
        return 0.0 if value == med else float("inf") if value > med else float("-inf")
    return MAD_TO_SIGMA * (value - med) / mad


class SpikeDetector:
    """Flags losses whose robust z-score over the last `window` step losses exceeds `threshold`.

    Only upward spikes count (a falling loss is progress). Spikes are not added to the history, so
    a burst of bad batches does not raise the baseline it is judged against.
    """

    def __init__(self, window: int, threshold: float, min_history: int) -> None:
        self.history: deque[float] = deque(maxlen=window)
        self.threshold, self.min_history = threshold, min_history

    def observe(self, loss: float) -> tuple[bool, float | None]:
        """(is_spike, z-score or None while the history is shorter than min_history)."""
        if len(self.history) < self.min_history:
            self.history.append(loss)
            return False, None
        z = robust_zscore(loss, list(self.history))
        spike = z > self.threshold
        if not spike:
            self.history.append(loss)
        return spike, z


def length_histogram(lengths: Sequence[int], max_len: int, bins: int = 8) -> list[dict[str, int]]:
    """Counts of `lengths` (tokens) in `bins` equal buckets over [1, max_len].

    Bucket k covers (k * w, (k + 1) * w] with w = ceil(max_len / bins); lengths above max_len land
    in the last bucket. Returns [{"lo", "hi", "count"}] with lo exclusive and hi inclusive.
    """
    width = -(-max_len // bins)
    counts = [0] * bins
    for n in lengths:
        counts[min(max(n - 1, 0) // width, bins - 1)] += 1
    return [{"lo": k * width, "hi": (k + 1) * width, "count": c} for k, c in enumerate(counts)]


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (q in [0, 100]) of an ascending sequence; 0 when empty."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * q // 100))
    return int(sorted_values[int(rank) - 1])


def data_report(examples: Sequence[dict[str, list[int]]], reject_reasons: Sequence[str], max_seq_len: int) -> dict[str, Any]:
    """What is about to be trained, before step 1.

    examples: encoded (unpacked) training examples; reject_reasons: the reason of every rejected
    record. Counts tokens (all, and trained: labels != -100 after the one-token shift), the
    rejects whose labels would all be -100, and the sequence-length histogram.
    """
    lengths = sorted(len(e["input_ids"]) for e in examples)
    tokens = sum(lengths)
    trained = sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in examples)
    no_trained = sum(1 for r in reject_reasons if any(s in r for s in NO_TRAINED_TOKEN_REASONS))
    return {
        "examples": len(examples),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": trained / tokens if tokens else 0.0,
        "rejected_all_masked": no_trained,
        "rejected_other": len(reject_reasons) - no_trained,
        "len_p50": percentile(lengths, 50),
        "len_p95": percentile(lengths, 95),
        "len_max": lengths[-1] if lengths else 0,
        "len_histogram": length_histogram(lengths, max_seq_len),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable report with the histogram as text bars (printed before step 1)."""
    lines = [
        f"data: {report['examples']} training examples, {report['tokens']} tokens, "
        f"{report['trained_tokens']} trained ({report['trained_share']:.1%})",
        f"data: rejected {report['rejected_all_masked']} with every label -100, {report['rejected_other']} for other reasons",
        f"data: sequence length p50 {report['len_p50']}, p95 {report['len_p95']}, max {report['len_max']} tokens",
    ]
    if "val_sources" in report:  # data.val_sources set (the datamodule adds these keys)
        lines.append(f"data: validation {report['val_examples']} examples from {', '.join(report['val_sources'])}, "
                     f"{report['val_overlap_train']} identical to a training example")
    top = max((b["count"] for b in report["len_histogram"]), default=0) or 1
    for b in report["len_histogram"]:
        lines.append(f"  ({b['lo']:>6}, {b['hi']:>6}]  {'#' * round(30 * b['count'] / top):<30} {b['count']}")
    return "\n".join(lines)
