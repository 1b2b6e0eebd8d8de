"""perf.sdpa_backends on CUDA: cuDNN attention first really runs cuDNN, forward and backward, and
trains a GQA Llama in bf16 like the math kernel does."""
from __future__ import annotations

import pytest
import torch

from ta_train import attention
from ta_train.model import random_llama

pytestmark = pytest.mark.gpu

CUDNN_FIRST = ["cudnn", "flash", "efficient", "math"]


def _model(make_cfg):
    cfg = make_cfg("peft=none", "model.arch.hidden_size=256", "model.arch.n_heads=4", "model.arch.n_kv_heads=2",
                   "model.arch.intermediate_size=512", "model.init_std=0.02")
    return random_llama(cfg.model, torch.float32, "sdpa").cuda()


def _run(model, batch, half: bool = True):
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=half):
        logits = model(**batch).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["input_ids"].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _ops(model, batch) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _run(model, batch)
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


@pytest.mark.parametrize("padded", [False, True])
def test_cudnn_first_runs_cudnn_and_matches_the_math_kernel(make_cfg, padded):
    model = _model(make_cfg)
    choice = attention.settle(model, CUDNN_FIRST, precision="bf16-mixed", seq_len=256, device="cuda")
    kernel = choice.masked if padded else choice.unmasked
    if kernel != "cudnn":
        pytest.skip(f"cuDNN attention does not run here for these shapes: {choice.describe(CUDNN_FIRST)}")
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 49152, (4, 256), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 200:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    assert any("cudnn" in op for op in _ops(model, batch))
    loss, grads = _run(model, batch)
    attention.install(model, ["math"])
    math_loss, math_grads = _run(model, batch)
    ref_loss, ref_grads = _run(model, batch, half=False)  # fp32 math: the reference for both
    assert abs(loss.item() - ref_loss.item()) <= 2 * abs(math_loss.item() - ref_loss.item()) + 1e-3 * ref_loss.item()
    for name, ref in ref_grads.items():  # cuDNN in bf16 is as close to fp32 as the math kernel in bf16

        def err(g):
            return float((g - ref).norm() / ref.norm().clamp_min(1e-12))

        assert err(grads[name]) <= 2 * err(math_grads[name]) + 1e-3, (name, err(grads[name]), err(math_grads[name]))


def test_the_default_order_is_reported_for_the_1b_shape():
    choice = attention.probe(None, n_heads=32, n_kv_heads=8, head_dim=64, seq_len=2048, dtype=torch.bfloat16, device="cuda")
    assert choice.unmasked in ("cudnn", "flash", "efficient", "math"), choice
    ordered = attention.probe(CUDNN_FIRST, n_heads=32, n_kv_heads=8, head_dim=64, seq_len=2048, dtype=torch.bfloat16, device="cuda")
    assert ordered.unmasked == "cudnn", ordered.describe(CUDNN_FIRST)
