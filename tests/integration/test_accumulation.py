"""Token-weighted accumulation over unequal micro-batches == one big batch (loss and gradients)."""
from __future__ import annotations

import torch

from ta_train.chat import IGNORE_INDEX, pad_right
from ta_train.losses import sum_token_cross_entropy, window_scale
from ta_train.model import build_model


def make_examples(lengths, answer_fraction=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 1000, (n,), generator=g).tolist()
        cut = int(n * (1 - answer_fraction))
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:], "attention_mask": [1] * n})
    return out


def tensors(examples):
    return {k: torch.tensor(v) for k, v in pad_right(examples, pad_id=2).items()}


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(model, batches, scales):
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch, scale in zip(batches, scales):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum, _ = sum_token_cross_entropy(logits, batch["labels"], 0.05)
        loss = loss_sum * scale
        loss.backward()
        total += float(loss)
    return total, grads(model)


def test_token_weighted_accumulation_equals_one_big_batch(make_cfg):
    cfg = make_cfg("peft=none")
    model = build_model(cfg).eval()  # eval: no dropout, so both paths see the same network
    examples = make_examples([40, 7, 23, 11, 31])
    micro = [examples[:1], examples[1:3], examples[3:]]  # unequal sizes and lengths
    n_tokens = sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in examples)

    big_loss, big_grads = loss_and_grads(model, [tensors(examples)], [1.0 / n_tokens])
    acc = len(micro)
    # what the module does: scale each micro-batch sum, then Lightning divides by accumulation
    acc_loss, acc_grads = loss_and_grads(model, [tensors(m) for m in micro], [window_scale(acc, 1, n_tokens) / acc] * acc)
    assert abs(acc_loss - big_loss) < 1e-5
    for name, g in big_grads.items():
        assert torch.allclose(acc_grads[name], g, atol=1e-5, rtol=1e-4), name

    # the common mistake, a mean of micro-batch means, is measurably different here
    means = []
    for m in micro:
        t = tensors(m)
        ls, n = sum_token_cross_entropy(model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits, t["labels"], 0.05)
        means.append(float(ls / n))
    assert abs(sum(means) / acc - big_loss) > 1e-3
