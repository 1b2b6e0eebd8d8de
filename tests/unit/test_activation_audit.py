"""The planner's activation and logits arithmetic against what autograd really keeps (exact, CPU).

bench/activation_audit.py builds the model as training does, records every storage autograd saves
(saved-tensor hooks) and, with the profiler, every allocation and free of one step. Both are
deterministic byte counts, not timings, so the planner must match them closely.
"""
from __future__ import annotations

import pytest

from bench.activation_audit import audit, compose_cfg, overrides


def _cfg(name: str):
    return compose_cfg(overrides(name))


@pytest.mark.parametrize(
    "name",
    ["full-bf16-sdpa", "full-fp32-eager", "lora-bf16-sdpa", "lora-fp32-all-nodrop", "lora-bf16-all-nodrop", "lora-bf16-ckpt"],
)
def test_saved_activations_per_layer_match_the_plan(name):
    r = audit(_cfg(name), profiled=False)
    steady = r["saved_layer_bytes"][-1]  # the first layer of a LoRA model saves less (frozen embedding input)
    assert r["plan_layer_bytes"] == pytest.approx(steady, rel=0.05)
    assert r["plan_head_bytes"] == pytest.approx(r["saved_head_bytes"], rel=0.05)
    # the planner counts every layer like the steady one: an upper bound by part of one layer
    kept = sum(r["saved_layer_bytes"]) + r["saved_head_bytes"]
    assert kept * 0.95 <= r["plan_activation_bytes"] <= kept * 1.3


@pytest.mark.parametrize("name", ["full-fp32-eager", "lora-bf16-eager"])
def test_loss_buffers_at_the_peak_match_logits_bytes(name):
    """No masked prompt, no padding: every row is scored, the case logits_bytes plans for."""
    r = audit(_cfg(name), prompt=0, pad=0)
    assert r["plan_logits_bytes"] == pytest.approx(r["loss_buffer_bytes"], rel=0.05)
    # and the whole step: activations + loss buffers, autocast weight copies aside (weights term)
    peak = r["peak_bytes"] - r["weight_copy_bytes"]
    assert r["plan_activation_bytes"] + r["plan_logits_bytes"] == pytest.approx(peak, rel=0.1)
