"""Packing: several examples per row of max_seq_len tokens, each attending only to itself.

Rows carry `position_ids` that restart at 0 for every example and no attention mask: transformers
then builds a block-diagonal causal mask (sdpa, eager, flex) or calls FlashAttention-2's varlen
kernel on GPU, so no token attends across examples. The first token of every example has its label
set to IGNORE_INDEX, so the previous example's last token is never trained to predict it: the loss
over a packed row equals the token-weighted loss over its examples computed alone.
"""
from __future__ import annotations

import bisect
from typing import Sequence

from ta_train.chat import IGNORE_INDEX


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length <= capacity.

    Longest first, each into the bin with the least room that still fits it (a new bin when none
    does). O(n log n) searches over a sorted list of (free room, bin). Deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"item {i} has length {size} > capacity {capacity}")
        pos = bisect.bisect_left(free, (size, -1))
        if pos == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - size, len(bins) - 1))
        else:
            room, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (room - size, b))
    return bins


def pack_examples(examples: Sequence[dict[str, list[int]]], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Rows of concatenated examples with restarting position_ids (no attention_mask); `members`
    lists the indices of the examples in each row."""
    rows = []
    for members in best_fit_decreasing([len(e["input_ids"]) for e in examples], max_seq_len):
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "lengths": [], "members": list(members)}
        for i in members:
            ex = examples[i]
            n = len(ex["input_ids"])
            row["input_ids"] += ex["input_ids"]
            row["labels"] += [IGNORE_INDEX, *ex["labels"][1:]]
            row["position_ids"] += list(range(n))
            row["lengths"].append(n)
        rows.append(row)
    return rows


def pad_packed(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-pad packed rows; the padding is one more segment (positions from 0, no labels)."""
    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for r in rows:
        gap = width - len(r["input_ids"])
        out["input_ids"].append(list(r["input_ids"]) + [pad_id] * gap)
        out["labels"].append(list(r["labels"]) + [IGNORE_INDEX] * gap)
        out["position_ids"].append(list(r["position_ids"]) + list(range(gap)))
    return out


def padding_waste(batches: Sequence[Sequence[int]], widths: Sequence[int]) -> float:
    """Padded tokens / all tokens, for batches given as their members' lengths and padded widths."""
    real = sum(sum(b) for b in batches)
    total = sum(w * len(b) for b, w in zip(batches, widths))
    return 1.0 - real / total if total else 0.0
