"""ta_train.metrics against naive references: token accuracy, robust z-score, spikes, data report."""
from __future__ import annotations

import math
import random

import pytest
import torch

from ta_train.losses import IGNORE_INDEX
from ta_train.metrics import SpikeDetector, TokenAccuracy, data_report, format_report, length_histogram, percentile, robust_zscore


def naive_token_accuracy(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, int]:
    correct = total = 0
    for logits, labels in batches:
        for b in range(labels.shape[0]):
            for t in range(labels.shape[1] - 1):
                target = int(labels[b, t + 1])
                if target == IGNORE_INDEX:
                    continue
                total += 1
                correct += int(int(logits[b, t].argmax()) == target)
    return correct, total


def random_batch(g: torch.Generator, b: int = 3, t: int = 9, v: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(b, t, v, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.4] = IGNORE_INDEX
    return logits, labels


def test_token_accuracy_metric_matches_a_naive_loop_over_micro_batches():
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(g) for _ in range(5)]
    metric = TokenAccuracy()
    for logits, labels in batches:
        metric.update(logits, labels)
    correct, total = naive_token_accuracy(batches)
    assert (int(metric.correct), int(metric.total)) == (correct, total) and total > 0
    assert float(metric.compute()) == pytest.approx(correct / total)
    metric.reset()
    assert int(metric.total) == 0 and float(metric.compute()) == 0.0


def test_token_accuracy_summed_over_shards_equals_one_process():
    """What dist_reduce_fx="sum" does across ranks: counts add, then one division."""
    g = torch.Generator().manual_seed(1)
    batches = [random_batch(g, b=1 + i) for i in range(4)]
    whole, left, right = TokenAccuracy(), TokenAccuracy(), TokenAccuracy()
    for i, (logits, labels) in enumerate(batches):
        whole.update(logits, labels)
        (left if i % 2 else right).update(logits, labels)
    assert left._reductions["correct"] is not None
    merged = (left.correct + right.correct).double() / (left.total + right.total)
    assert float(merged) == pytest.approx(float(whole.compute()))
    ratio_of_means = (float(left.compute()) + float(right.compute())) / 2
    assert float(merged) != pytest.approx(ratio_of_means)  # a mean of rank ratios would be wrong


def naive_median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def test_robust_zscore_matches_the_definition():
    rng = random.Random(3)
    for _ in range(50):
        hist = [rng.gauss(2.0, 0.3) for _ in range(rng.randint(2, 40))]
        x = rng.gauss(2.0, 1.0)
        med = naive_median(hist)
        mad = naive_median([abs(h - med) for h in hist])
        assert robust_zscore(x, hist) == pytest.approx(0.6745 * (x - med) / mad)


def test_robust_zscore_constant_history_and_outlier_resistance():
    assert robust_zscore(1.0, [1.0, 1.0]) == 0.0
    assert robust_zscore(1.5, [1.0, 1.0]) == math.inf and robust_zscore(0.5, [1.0]) == -math.inf
    calm = [1.0, 1.1, 0.9, 1.05, 0.95]
    assert robust_zscore(1.2, calm + [50.0]) == pytest.approx(robust_zscore(1.2, calm + [1.1]), rel=0.5)
    with pytest.raises(ValueError):
        robust_zscore(1.0, [])


def test_spike_detector_flags_upward_jumps_only_and_keeps_them_out_of_the_history():
    det = SpikeDetector(window=20, threshold=6.0, min_history=5)
    losses = [2.0 - 0.01 * i + 0.02 * (-1) ** i for i in range(10)]
    assert all(det.observe(x) == (False, None) for x in losses[:5])
    assert not any(det.observe(x)[0] for x in losses[5:])
    assert det.observe(0.5)[0] is False  # a sudden drop is not a spike
    n = len(det.history)
    spike, z = det.observe(9.0)
    assert spike and z > 6 and len(det.history) == n
    assert det.observe(9.0)[0]  # a second bad batch is judged against the same baseline


def test_length_histogram_matches_a_naive_count():
    rng = random.Random(4)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    hist = length_histogram(lengths, 256, bins=8)
    assert [(b["lo"], b["hi"]) for b in hist] == [(32 * k, 32 * (k + 1)) for k in range(8)]
    for k, b in enumerate(hist):
        naive = sum(1 for n in lengths if b["lo"] < n <= b["hi"] or (k == 7 and n > 256))
        assert b["count"] == naive
    assert sum(b["count"] for b in hist) == len(lengths)


def test_data_report_counts_trained_tokens_and_all_masked_rejects():
    examples = [
        {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4]},
        {"input_ids": [1, 2], "labels": [1, 2]},  # position 0 is never predicted: 1 trained token
    ]
    reasons = ["no trained token left within max_seq_len=8", "conversation has no non-empty assistant turn to train on", "bad JSON"]
    report = data_report(examples, reasons, max_seq_len=8)
    assert report["tokens"] == 6 and report["trained_tokens"] == 3 and report["trained_share"] == pytest.approx(0.5)
    assert report["rejected_all_masked"] == 2 and report["rejected_other"] == 1
    assert (report["len_p50"], report["len_max"]) == (2, 4)
    assert "3 trained (50.0%)" in format_report(report)
    assert percentile([1, 2, 3, 4], 95) == 4 and percentile([], 50) == 0


def test_overfit_stopping_needs_val_stalled_and_train_falling():
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    from ta_train.guards import OverfitStopping

    def evaluate(cb, val, train_losses):
        cb._recent = list(train_losses)
        return cb._evaluate_stopping_criteria(torch.tensor(val))

    plateau = OverfitStopping(patience=2, min_delta=0.0)
    assert evaluate(plateau, 2.0, [3.0, 2.9])[0] is False  # best
    assert evaluate(plateau, 2.1, [2.9, 3.0])[0] is False
    stop, reason = evaluate(plateau, 2.2, [3.0, 3.1])  # patience out, but train is not falling
    assert not stop and "not falling" in reason and plateau.stopping_reason == EarlyStoppingReason.NOT_STOPPED

    overfit = OverfitStopping(patience=2, min_delta=0.0)
    evaluate(overfit, 2.0, [3.0, 2.9])
    evaluate(overfit, 2.1, [2.5])
    stop, reason = evaluate(overfit, 2.3, [2.0, 1.8])
    assert stop and reason.startswith("overfitting: val/loss has not improved on its best 2.0000 for 2 validations")
    assert "train loss fell from 2.9500 to 1.9000" in reason


def test_shard_norms_combine_into_the_norm_of_all_gradients():
    import torch

    from ta_train.module import combine_shard_norms

    shards = [torch.randn(7), torch.randn(5), torch.randn(3)]
    local = [torch.linalg.vector_norm(s) for s in shards]
    # every rank sees the sum over ranks, as strategy.reduce(..., "sum") gives it
    total = sum(n.float() ** 2 for n in local)
    combined = combine_shard_norms(local[0], lambda t: total)
    assert torch.allclose(combined, torch.linalg.vector_norm(torch.cat(shards)))


def test_replicated_shards_are_counted_once_in_the_global_norm():
    """HYBRID_SHARD on 2 nodes x 2 devices: the 2 shards live on both nodes; NO_SHARD: whole gradients."""
    import torch

    from ta_train.module import combine_shard_norms, shard_replicas

    shards = [torch.randn(7), torch.randn(5)]
    ranks = shards + shards  # node 0 holds shards 0 and 1, node 1 the same two
    total = sum(torch.linalg.vector_norm(s).float() ** 2 for s in ranks)
    replicas = shard_replicas("HYBRID_SHARD", world_size=4, num_nodes=2)
    assert replicas == 2 and shard_replicas("_HYBRID_SHARD_ZERO2", 4, 2) == 2
    combined = combine_shard_norms(torch.linalg.vector_norm(ranks[0]), lambda t: total, replicas)
    assert torch.allclose(combined, torch.linalg.vector_norm(torch.cat(shards)))
    assert shard_replicas("FULL_SHARD", 4, 2) == shard_replicas("SHARD_GRAD_OP", 2, 1) == 1
    assert shard_replicas("NO_SHARD", 4, 2) == 0  # every rank holds the all-reduced gradients: the local norm
    assert shard_replicas("FULL_SHARD", 1, 1) == 0
