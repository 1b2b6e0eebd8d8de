"""optim.fused: torch's fused AdamW, the module's single-norm gradient clipping against
torch.nn.utils.clip_grad_norm_, fp16 unscaling before a fused step, the refusals, and the planner's
optimizer-step temporaries."""
from __future__ import annotations

import logging

import copy
from dataclasses import replace

import lightning as L
import pytest
import torch

from ta_train.config import OptimConfig
from ta_train.optim import build_optimizer
from ta_train.plan_memory import (
    FOREACH_STEP_BYTES,
    GIB,
    RUNTIME_OVERHEAD_GIB,
    estimate,
    step_temporary_bytes,
    trainable_params,
)
from tests.unit.test_plan import FULL_BF16, LORA_BF16, QWEN, cfg_for


def test_fused_flag_builds_torch_fused_adamw():
    model = torch.nn.Linear(4, 4)
    fused, _ = build_optimizer(model, OptimConfig(lr=1e-3, fused=True), total_steps=10)
    plain, _ = build_optimizer(model, OptimConfig(lr=1e-3), total_steps=10)
    assert type(fused) is torch.optim.AdamW and fused.defaults["fused"] is True
    assert fused._step_supports_amp_scaling  # what Lightning's AMP plugin refuses to clip for
    assert not plain.defaults["fused"] and not getattr(plain, "_step_supports_amp_scaling", False)


def test_fused_is_a_preference_that_steps_aside_where_torch_adamw_does_not_step(make_cfg, caplog):
    # a hw profile may turn it on for every run: 8-bit optimizers and ZeRO-Offload then run their own step
    from ta_train.plan import apply_plan, make_plan

    assert make_cfg().optim.fused is False
    assert make_cfg("optim.fused=true", "strategy=fsdp").optim.fused
    with caplog.at_level(logging.INFO, logger="ta_train.optim"):
        optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=1e-3, name="adamw8bit", fused=True), total_steps=1)
    assert type(optimizer).__name__ == "AdamW8bit"
    assert "optim.fused does not apply to AdamW8bit" in caplog.text
    # ZeRO-1/2/3 step the client torch AdamW on their partitions: fused stays on
    cfg = make_cfg("optim.fused=true", "strategy=deepspeed_zero2")
    assert apply_plan(cfg, make_plan(cfg)).optim.fused is True
    cfg = make_cfg("optim.fused=true", "strategy=deepspeed_zero2", "strategy.offload_optimizer=true")
    with caplog.at_level(logging.INFO, logger="ta_train.plan"):
        applied = apply_plan(cfg, make_plan(cfg))
    assert applied.optim.fused is False and "optim.fused off: ZeRO-Offload steps DeepSpeedCPUAdam on the CPU" in caplog.text


def test_offload_optimizer_turns_fused_off_only_under_deepspeed(make_cfg):
    # ddp and fsdp ignore strategy.offload_optimizer: torch's AdamW steps there, as the planner counted
    from ta_train.plan import apply_plan, make_plan

    for strategy in ("strategy=ddp", "strategy=fsdp"):
        cfg = make_cfg(strategy, "strategy.offload_optimizer=true", "optim.fused=true")
        plan = make_plan(cfg)
        assert plan.strategy["name"] == strategy.split("=")[1]
        assert apply_plan(cfg, plan).optim.fused is True


def test_keep_built_fused_keeps_the_step_counts_usable_across_settings():
    # CPU half of tests/gpu/test_cuda_paths.py::test_adamw_resumes_a_checkpoint_of_the_other_fused_setting_on_cuda
    # (the placement itself needs a second device): the counts kept, fp32, and stepping on
    from ta_train.optim import keep_built_fused

    for fused in (True, False):
        model = torch.nn.Linear(3, 2)
        other = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=(not fused) or None)
        for _ in range(2):
            model(torch.randn(4, 3)).sum().backward()
            other.step()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
        optimizer.load_state_dict(other.state_dict())
        keep_built_fused([optimizer])
        assert optimizer.param_groups[0]["fused"] is (True if fused else None)
        for p in model.parameters():
            step = optimizer.state[p]["step"]
            assert float(step) == 2.0 and step.dtype == torch.float32 and step.device == p.device
        optimizer.step()
        assert all(float(optimizer.state[p]["step"]) == 3.0 for p in model.parameters())


def test_build_optimizer_steps_aside_under_offload():
    pytest.importorskip("deepspeed")
    optimizer, _ = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=1e-3, fused=True), total_steps=1, offload=True)
    assert type(optimizer).__name__ == "DeepSpeedCPUAdam"


def attached_module(make_cfg, clip: float, algorithm: str | None = None):
    """A CausalLMModule with the tiny model and a real (unfitted) Trainer, random gradients set."""
    from ta_train.module import CausalLMModule

    cfg = make_cfg("peft=none")
    module = CausalLMModule(cfg, accumulation=1)
    module.configure_model()
    module.trainer = L.Trainer(accelerator="cpu", devices=1, gradient_clip_val=clip, gradient_clip_algorithm=algorithm,
                               logger=False, enable_checkpointing=False, enable_progress_bar=False)
    g = torch.Generator().manual_seed(0)
    for p in module.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 0.1
    return module


@pytest.mark.parametrize("clip", [0.05, 1e9])  # clipping fires / the norm is below the limit
def test_module_clipping_equals_torch_clip_grad_norm(make_cfg, clip):
    module = attached_module(make_cfg, clip)
    reference = copy.deepcopy(module.model)
    for p, q in zip(module.model.parameters(), reference.parameters()):
        q.grad = p.grad.clone()  # deepcopy leaves parameters' gradients behind
    optimizer = torch.optim.AdamW(module.parameters(), fused=True)
    norm = module.grad_norm()  # what on_before_optimizer_step logs as train/grad_norm
    module.configure_gradient_clipping(optimizer, clip, None)
    ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
    assert float(norm) == pytest.approx(float(ref_norm), rel=1e-6)
    assert float(module.grad_norm()) == float(norm)  # cached: the clipping did not recompute it
    for (name, p), q in zip(module.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0, msg=name)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert float(after) == pytest.approx(min(clip, float(norm)), rel=1e-4)  # fp32 sums over 3.2M values


def test_zero_clip_value_leaves_gradients_alone(make_cfg):
    module = attached_module(make_cfg, 0.0)
    before = [p.grad.clone() for p in module.parameters()]
    module.configure_gradient_clipping(torch.optim.AdamW(module.parameters()), 0.0, None)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, module.parameters()))


def test_value_clipping_stays_lightnings(make_cfg):
    """trainer.gradient_clip_algorithm=value (not in the config, but a Trainer may carry it): Lightning's own path."""
    module = attached_module(make_cfg, 0.01, "value")
    expected = [p.grad.clamp(-0.01, 0.01) for p in module.parameters()]
    module.configure_gradient_clipping(torch.optim.AdamW(module.parameters()), 0.01, module.trainer.gradient_clip_algorithm)
    assert all(torch.equal(e, p.grad) for e, p in zip(expected, module.parameters()))


def test_grad_scaler_steps_a_fused_adamw_unscaled_before_its_step():
    """What the module's optimizer_step relies on under 16-mixed: unscale_ first (to read and clip
    true gradients), then GradScaler.step gives the fused step the inf flag and no scale. Same
    updates as the multi-tensor optimizer stepped by the plain unscale_ + step recipe, and an
    overflowing step is skipped without advancing Adam's step count."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.AdamW(nets[0].parameters(), lr=1e-2, fused=True), torch.optim.AdamW(nets[1].parameters(), lr=1e-2)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    x = torch.randn(8, 16)
    for scale_inf in (1.0, 1.0, float("inf"), 1.0):
        for net, opt, scaler in zip(nets, opts, scalers):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = net(x).float().pow(2).mean() * scale_inf
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
            scaler.step(opt)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale() == 512.0  # the inf step halved the scale once
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        assert float(opts[0].state[p]["step"]) == float(opts[1].state[q]["step"]) == 3.0


def test_planner_counts_foreach_step_temporaries_only_where_they_outpeak_backward():
    # bench/optim_step_memory.py: foreach AdamW 4 B per parameter of the largest group; fused 0
    s = replace(FULL_BF16, precision="32-true", gradient_checkpointing=True, micro_batch=1, seq_len=256)
    assert step_temporary_bytes(QWEN, s) == FOREACH_STEP_BYTES * trainable_params(QWEN, s)
    assert step_temporary_bytes(QWEN, replace(s, fused_optimizer=True)) == 0
    assert step_temporary_bytes(QWEN, replace(s, optimizer="adamw8bit")) == 0
    assert step_temporary_bytes(QWEN, replace(s, strategy="deepspeed", zero_stage=2, offload_optimizer=True)) == 0
    # CPU tensors: torch steps tensor by tensor, 8 B per parameter of the largest (Qwen's 152k x 3584 embedding)
    assert step_temporary_bytes(QWEN, replace(s, cpu=True)) == 8 * QWEN.vocab_size * QWEN.hidden_size
    assert step_temporary_bytes(QWEN, replace(LORA_BF16, cpu=True)) == 0
    foreach, fused = estimate(QWEN, s), estimate(QWEN, replace(s, fused_optimizer=True))
    # fp32, checkpointed, 256 tokens: the step's 28.4 GiB sqrt(v) beats the backward's activations + logits
    assert foreach.peak - fused.peak == pytest.approx(
        (4 * QWEN.n_params - fused.activations * GIB - (fused.buffers - RUNTIME_OVERHEAD_GIB) * GIB) / GIB, rel=1e-6)
    assert foreach.breakdown().keys() == fused.breakdown().keys()
    assert foreach.peak == pytest.approx(sum(foreach.breakdown().values()), abs=0.01)
    # bf16 LoRA: the adapters' temporaries are far below the backward peak: nothing changes
    assert estimate(QWEN, LORA_BF16) == estimate(QWEN, replace(LORA_BF16, fused_optimizer=True))


def test_plan_keeps_fused_on_zero_and_turns_it_off_with_offload():
    from ta_train.plan import apply_plan, make_plan

    cfg = cfg_for("model=qwen7b", "+hw=2xa6000", "peft=none", "strategy=ddp", "optim.fused=true")
    plan = make_plan(cfg)
    assert plan.strategy["name"] == "deepspeed" and plan.strategy["offload_optimizer"]
    to_zero2, to_offload = plan.changes[-2:]
    assert to_zero2.startswith("strategy ddp -> deepspeed ZeRO-2") and "optim.fused" not in to_zero2, plan.changes
    assert "; optim.fused true -> false (ZeRO-Offload steps DeepSpeedCPUAdam):" in to_offload, plan.changes
    assert apply_plan(cfg, plan).optim.fused is False


def test_planner_drops_the_step_temporaries_of_fused_adamw_under_zero():
    # ZeRO-2 over 2 devices: each rank steps its half of the fp32 partitions
    s = replace(FULL_BF16, strategy="deepspeed", zero_stage=2, devices=2)
    assert step_temporary_bytes(QWEN, s) == FOREACH_STEP_BYTES * trainable_params(QWEN, s) / 2
    assert step_temporary_bytes(QWEN, replace(s, fused_optimizer=True)) == 0
    three = replace(s, zero_stage=3)  # ZeRO-3 steps sub-groups of at most sub_group_size elements
    assert 0 < step_temporary_bytes(QWEN, three) < step_temporary_bytes(QWEN, s)
    assert step_temporary_bytes(QWEN, replace(three, fused_optimizer=True)) == 0
