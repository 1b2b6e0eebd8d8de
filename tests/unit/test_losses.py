"""Loss and metric math against naive per-token references."""
from __future__ import annotations

import math

import pytest
import torch

from ta_train.losses import IGNORE_INDEX, sum_token_cross_entropy, token_accuracy_counts, trained_rows, window_scale


def naive_loss(logits, labels, eps):
    """Per-token loop: (1-eps) * -log p(y) + eps * mean_v -log p(v), summed over trained tokens."""
    total, n = 0.0, 0
    B, T, V = logits.shape
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            logp = torch.log_softmax(logits[b, t].double(), dim=-1)
            total += float((1 - eps) * -logp[y] + eps * -logp.mean())
            n += 1
    return total, n


def masked_batch(seed: int, T: int, V: int, prompt: int, pad_from: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (3, T, V) logits and labels: row 0's first `prompt` labels and row 2's labels from
    `pad_from` on are IGNORE_INDEX."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, T, V, generator=g)
    labels = torch.randint(0, V, (3, T), generator=g)
    labels[0, :prompt] = IGNORE_INDEX
    labels[2, pad_from:] = IGNORE_INDEX
    return logits, labels


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_sum_cross_entropy_matches_naive_loop(eps):
    logits, labels = masked_batch(0, T=7, V=11, prompt=4, pad_from=5)
    loss, n = sum_token_cross_entropy(logits, labels, eps)
    ref, ref_n = naive_loss(logits, labels, eps)
    assert int(n) == ref_n
    assert float(loss) == pytest.approx(ref, rel=1e-5)


def test_position_zero_label_is_never_trained():
    logits = torch.zeros(1, 3, 5)
    labels = torch.tensor([[2, IGNORE_INDEX, IGNORE_INDEX]])
    loss, n = sum_token_cross_entropy(logits, labels)
    assert int(n) == 0 and float(loss) == 0.0


def test_uniform_logits_give_log_vocab():
    logits = torch.zeros(2, 4, 8)
    labels = torch.randint(0, 8, (2, 4))
    loss, n = sum_token_cross_entropy(logits, labels, 0.05)
    assert float(loss) / int(n) == pytest.approx(math.log(8), rel=1e-6)


def test_token_accuracy_counts_match_naive():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=g)
    labels = torch.randint(0, 5, (2, 6), generator=g)
    labels[1, 2] = IGNORE_INDEX
    correct, total = token_accuracy_counts(logits, labels)
    ref_c = ref_t = 0
    for b in range(2):
        for t in range(5):
            y = int(labels[b, t + 1])
            if y != IGNORE_INDEX:
                ref_t += 1
                ref_c += int(logits[b, t].argmax()) == y
    assert (int(correct), int(total)) == (ref_c, ref_t)


def test_window_scale_undoes_lightning_and_ddp_averaging():
    # loss_sum * scale / accumulation (Lightning) / world (DDP mean) == loss_sum / window_tokens
    for acc, world, tokens in [(1, 1, 10), (4, 1, 37), (8, 2, 1000)]:
        assert 5.0 * window_scale(acc, world, tokens) / acc / world == pytest.approx(5.0 / tokens)
    assert window_scale(4, 1, 0) == 0.0
    # DeepSpeed: Lightning divides by accumulation, then engine.backward divides by it again
    assert 5.0 * window_scale(8, 2, 1000, engine_divides=True) / 8 / 8 / 2 == pytest.approx(5.0 / 1000)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_a_host_made_trained_index_gives_exactly_the_masked_rows_and_loss(eps):
    logits, labels = masked_batch(3, T=6, V=13, prompt=3, pad_from=4)
    index = torch.tensor([b * 6 + t for b in range(3) for t in range(5) if labels[b, t + 1] != IGNORE_INDEX])
    rows, targets = trained_rows(logits, labels)
    rows_i, targets_i = trained_rows(logits, labels, index)
    assert torch.equal(rows, rows_i) and torch.equal(targets, targets_i)
    loss, n = sum_token_cross_entropy(logits, labels, eps)
    loss_i, n_i = sum_token_cross_entropy(logits, labels, eps, index)
    assert torch.equal(loss, loss_i) and n.dtype == n_i.dtype == torch.long and int(n) == int(n_i) == index.numel()
