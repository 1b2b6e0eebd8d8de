"""Warmup-cosine schedule and AdamW parameter groups."""
from __future__ import annotations

import math

import pytest
import torch

from ta_train.config import OptimConfig
from ta_train.optim import build_optimizer, param_groups, warmup_cosine_factor, warmup_steps


def test_warmup_is_three_percent_rounded_up():
    assert warmup_steps(1000, 0.03) == 30
    assert warmup_steps(30, 0.03) == 1
    assert warmup_steps(10, 0.0) == 0


def test_schedule_reference_values():
    warm, total = 10, 110
    assert warmup_cosine_factor(0, warm, total) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, warm, total) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, warm, total) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, warm, total) == pytest.approx(0.5)
    assert warmup_cosine_factor(110, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_factor(60, warm, total, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    # cosine formula at an arbitrary point
    assert warmup_cosine_factor(35, warm, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)))


def test_schedule_is_monotone_after_warmup():
    f = [warmup_cosine_factor(s, 3, 50) for s in range(51)]
    assert f[:3] == sorted(f[:3])
    assert all(a >= b for a, b in zip(f[3:], f[4:]))


def test_no_decay_groups_and_frozen_parameters():
    model = torch.nn.ModuleDict(
        {"embed_tokens": torch.nn.Embedding(10, 4), "proj": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4)}
    )
    model["norm"].weight.requires_grad_(False)
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and decay["params"] == [model["proj"].weight]
    assert no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert ids == {id(model["embed_tokens"].weight), id(model["proj"].bias), id(model["norm"].bias)}  # frozen excluded


def test_scheduler_steps_per_optimizer_step():
    model = torch.nn.Linear(3, 3)
    opt, sched = build_optimizer(model, OptimConfig(lr=1.0, warmup_ratio=0.1), total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[-1] < 0.01
