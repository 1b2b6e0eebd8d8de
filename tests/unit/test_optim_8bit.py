"""optim.name: bitsandbytes 8-bit AdamW (plain and paged) for a real step, DeepSpeedCPUAdam under
offload, the planner's optimizer bytes for each, and the choices the config refuses."""
from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from ta_train.config import OptimConfig
from ta_train.optim import adamw_class, build_optimizer
from ta_train.plan_memory import ADAM_8BIT_STATE_BYTES, optimizer_bytes
from tests.unit.test_plan import FULL_BF16, QWEN

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def test_config_refuses_unknown_optimizer(make_cfg):
    with pytest.raises(ValueError, match="optim.name='sgd': expected one of adamw, adamw8bit, paged_adamw8bit"):
        make_cfg("optim.name=sgd")
    assert make_cfg().optim.name == "adamw"
    assert adamw_class("adamw") is torch.optim.AdamW


def test_8bit_with_offload_is_refused():
    with pytest.raises(ValueError, match="do not combine"):
        adamw_class("adamw8bit", offload=True)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_offload_picks_deepspeed_cpu_adam():
    assert adamw_class("adamw", offload=True).__name__ == "DeepSpeedCPUAdam"


def test_planner_counts_8bit_states():
    # 7.6B full fine-tune: 8 B/param fp32 m+v = 56.7 GiB; 8-bit m+v + block absmax = ~14.3 GiB
    eight = optimizer_bytes(QWEN, replace(FULL_BF16, optimizer="adamw8bit"))
    assert eight == pytest.approx(ADAM_8BIT_STATE_BYTES * QWEN.n_params)
    assert eight / optimizer_bytes(QWEN, FULL_BF16) == pytest.approx((2 + 8 / 256) / 8)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes not installed")
@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_adamw_takes_a_real_step_on_the_tiny_model(make_cfg, name):
    import bitsandbytes as bnb

    from ta_train.losses import sum_token_cross_entropy
    from ta_train.model import build_model

    cfg = make_cfg(f"optim.name={name}", "peft=none")
    model = build_model(cfg, None)
    optimizer, scheduler = build_optimizer(model, cfg.optim, total_steps=10)
    assert isinstance(optimizer, bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, cfg.model.arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(3):
        loss_sum, n = sum_token_cross_entropy(model(input_ids=ids, use_cache=False).logits, ids)
        (loss_sum / n).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss_sum.detach() / n))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(not torch.equal(before[k], p) for k, p in model.named_parameters())
    # big matrices keep 8-bit states (bitsandbytes leaves tensors under 4,096 values in 32 bits)
    emb = model.get_input_embeddings().weight
    assert optimizer.state[emb]["state1"].dtype == torch.uint8
