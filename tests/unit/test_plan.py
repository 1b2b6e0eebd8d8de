"""The memory and batch planner: hand-computed arithmetic, the OOM path, pins, strict mode, JSON."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from ta_train.plan import Plan, make_plan
from ta_train.plan_memory import (
    GIB,
    Setup,
    estimate,
    linear_params,
    lora_params,
    optimizer_bytes,
    weight_bytes,
)
from ta_train.plan_activations import activation_bytes, logits_bytes
from tests.conftest import CONF_DIR, compose

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
HWS = sorted(p.stem for p in (CONF_DIR / "hw").glob("*.yaml"))


def cfg_for(*overrides: str):
    cfg, OmegaConf = compose([*overrides, "run_dir=/tmp/ta-plan-test"])
    return OmegaConf.to_object(cfg)


def arch_of(model: str):
    return cfg_for(f"model={model}").model.arch


QWEN = arch_of("qwen7b")
LORA_BF16 = Setup(
    method="lora", r=64, targets=("q_proj", "k_proj", "v_proj", "o_proj"), lora_dropout=0.05,
    double_quant=True, precision="bf16-mixed", frozen_dtype="bfloat16", strategy="auto", zero_stage=0,
    offload_optimizer=False, offload_parameters=False, fsdp_sharding="FULL_SHARD", devices=1,
    micro_batch=1, seq_len=2048, gradient_checkpointing=False, attn="flash_attention_2",
)
FULL_BF16 = replace(LORA_BF16, method="none")


# --- arithmetic against hand computations -------------------------------------------------------


def test_qwen_linear_and_lora_parameter_counts():
    # 28 * (2*3584^2 + 2*3584*512 + 3*3584*18944); the rest is embeddings, lm_head, norms, biases
    assert linear_params(QWEN) == 6_525_288_448
    # per layer q, o: 64*(3584+3584); k, v: 64*(3584+512) -> 1,441,792 x 28 layers
    assert lora_params(QWEN, LORA_BF16.targets, 64) == 40_370_176


def test_fused_targets_infer_shapes_from_hidden_and_heads():
    baichuan, internlm = arch_of("baichuan2_7b"), arch_of("internlm2_7b")
    # W_pack: 4096 -> 3*4096 (MHA); o_proj 4096 -> 4096
    assert lora_params(baichuan, ("W_pack", "o_proj"), 8) == 32 * 8 * ((4096 + 3 * 4096) + 2 * 4096)
    # wqkv: 4096 -> 4096 + 2*8*128 (GQA 32/8)
    assert lora_params(internlm, ("wqkv",), 8) == 32 * 8 * (4096 + 4096 + 2048)
    with pytest.raises(ValueError, match="no known shape"):
        lora_params(QWEN, ("not_a_module",), 8)


def test_bf16_weights_of_7_6b_are_14_2_gib():
    frozen = weight_bytes(QWEN, LORA_BF16)[0] - lora_params(QWEN, LORA_BF16.targets, 64) * 4
    assert frozen / GIB == pytest.approx(7_615_616_512 * 2 / GIB) == pytest.approx(14.18, abs=0.01)


def test_adamw_states_for_7_6b():
    # m + v in fp32: 8 B/param = 56.7 GiB; DeepSpeed adds its fp32 master copy: 12 B = 85.1 GiB
    assert optimizer_bytes(QWEN, FULL_BF16) / GIB == pytest.approx(56.74, abs=0.01)
    ds = replace(FULL_BF16, strategy="deepspeed", zero_stage=0)
    assert optimizer_bytes(QWEN, ds) / GIB == pytest.approx(85.11, abs=0.01)


def test_full_fine_tune_keeps_fp32_weights_and_autocast_copy():
    w, copy = weight_bytes(QWEN, FULL_BF16)
    assert (w, copy) == (4.0 * QWEN.n_params, 2.0 * QWEN.n_params)
    assert weight_bytes(QWEN, replace(FULL_BF16, precision="32-true"))[1] == 0.0


def test_zero2_over_two_devices_halves_optimizer_and_gradients():
    one = estimate(QWEN, replace(FULL_BF16, strategy="deepspeed", zero_stage=0, devices=2))
    two = estimate(QWEN, replace(FULL_BF16, strategy="deepspeed", zero_stage=2, devices=2))
    assert two.optimizer == pytest.approx(one.optimizer / 2)
    assert two.gradients == pytest.approx(one.gradients / 2)
    assert two.weights == pytest.approx(one.weights)
    three = estimate(QWEN, replace(FULL_BF16, strategy="deepspeed", zero_stage=3, devices=2))
    assert three.weights == pytest.approx(one.weights / 2)


def test_offload_moves_optimizer_to_cpu():
    est = estimate(QWEN, replace(FULL_BF16, strategy="deepspeed", zero_stage=2, devices=2, offload_optimizer=True))
    assert est.optimizer == 0.0 and est.gradients == pytest.approx(0.745, abs=0.001)  # two 2e8 half buckets
    # both devices' shards in one node's RAM: 12 B/param optimizer + 4 B/param fp32 gradients
    assert est.cpu_offload == pytest.approx(85.11 + 28.37, abs=0.01)
    # 2 nodes x 2 devices: each node's RAM holds its 2 ranks' shards, half of the job's
    nodes = estimate(QWEN, replace(FULL_BF16, strategy="deepspeed", zero_stage=2, devices=4, nodes=2, offload_optimizer=True))
    assert nodes.cpu_offload == pytest.approx((85.11 + 28.37) / 2, abs=0.01)


def test_fsdp_hybrid_sharding_splits_the_states_within_a_node_only():
    # devices counts the whole job (trainer.devices x num_nodes); HYBRID_SHARD replicates across nodes
    full = replace(FULL_BF16, strategy="fsdp", fsdp_sharding="FULL_SHARD")
    assert estimate(QWEN, replace(full, devices=8, nodes=2)) == estimate(QWEN, replace(full, devices=8))
    for hybrid, like in (("HYBRID_SHARD", "FULL_SHARD"), ("_HYBRID_SHARD_ZERO2", "SHARD_GRAD_OP")):
        two_nodes = estimate(QWEN, replace(full, fsdp_sharding=hybrid, devices=8, nodes=2))
        assert two_nodes == estimate(QWEN, replace(full, fsdp_sharding=like, devices=4))


def test_checkpointing_lowers_activations():
    assert activation_bytes(QWEN, replace(LORA_BF16, gradient_checkpointing=True)) < activation_bytes(QWEN, LORA_BF16) / 5


def test_recomputed_layer_counts_only_beyond_the_freed_logits():
    """Checkpointing: L layer inputs + head + max(0, one layer's activations - logits buffers)."""
    from ta_train.plan_activations import layer_activation_bytes_per_token, score_bytes_per_sequence

    def parts(arch, s):
        tokens = s.micro_batch * s.seq_len
        layer = layer_activation_bytes_per_token(arch, s) * tokens + score_bytes_per_sequence(arch, s) * s.micro_batch
        inputs = arch.n_layers * 2 * arch.hidden_size * tokens  # bf16 residual stream under LoRA
        return layer, inputs + (4 * arch.hidden_size + 4) * tokens, logits_bytes(arch, s)  # head: fp32 norm input + rsqrt

    ckpt = replace(LORA_BF16, gradient_checkpointing=True)
    layer, rest, logits = parts(QWEN, ckpt)
    assert layer < logits  # 152k vocab: the layer fits inside the freed logits buffers
    assert activation_bytes(QWEN, ckpt) == pytest.approx(rest)
    small_vocab = replace(QWEN, vocab_size=1000)
    layer, rest, logits = parts(small_vocab, ckpt)
    assert activation_bytes(small_vocab, ckpt) == pytest.approx(rest + layer - logits)


def test_only_eager_materializes_scores():
    eager, sdpa = replace(LORA_BF16, attn="eager"), replace(LORA_BF16, attn="sdpa")
    # eager: 28 heads x 2048^2 x (4 fp32 softmax + 2 half copy) x 28 layers, minus sdpa's own
    # output (2h) + fp32 logsumexp (4a) per token and its bf16 copy of the padding mask (2 T^2)
    tokens = 2048
    sdpa_only = 28 * (tokens * (2 * 3584 + 4 * 28) + 2 * 2048**2)
    assert activation_bytes(QWEN, eager) - activation_bytes(QWEN, sdpa) == pytest.approx(28 * 28 * 2048**2 * 6 - sdpa_only)
    # sdpa keeps no scores (measured on an H200 and on CPU) but with a padding mask repeats k and v
    # to every head (Qwen2-7B: 4 KV heads for 28), 2 x (1 - 4/28) x h x 2 bytes per token per layer
    # more than FA2, and keeps a bf16 copy of the mask per layer
    gap = activation_bytes(QWEN, sdpa) - activation_bytes(QWEN, LORA_BF16)
    assert gap == pytest.approx(28 * (2 * (1 - 4 / 28) * 3584 * 2 * tokens + 2 * 2048**2))


def test_qlora_weights_below_lora_weights():
    qlora = replace(LORA_BF16, method="qlora")
    assert weight_bytes(QWEN, qlora)[0] < weight_bytes(QWEN, LORA_BF16)[0] / 1.9
    # nf4 + double quant: 4.127 bits per decoder linear weight
    nf4 = linear_params(QWEN) * (4 + 8 / 64 + 32 / 64 / 256) / 8
    rest = (QWEN.n_params - linear_params(QWEN)) * 4 + lora_params(QWEN, qlora.targets, 64) * 4
    assert weight_bytes(QWEN, qlora)[0] == pytest.approx(nf4 + rest)


def test_qwen_logits_for_2048_tokens():
    # one fp32 copy of 152,064 x 2,048 logits = 1.16 GiB; the loss peaks at 12 bytes per logit in
    # fp32 and in bf16 (bench/activation_audit.py; tests/unit/test_activation_audit.py measures it)
    assert 2048 * 152064 * 4 / GIB == pytest.approx(1.16, abs=0.005)
    assert logits_bytes(QWEN, LORA_BF16) == logits_bytes(QWEN, replace(LORA_BF16, precision="32-true")) == 2048 * 152064 * 12


# --- the plan and the OOM path ------------------------------------------------------------------


def test_24g_qwen7b_fits_with_checkpointing():
    plan = make_plan(cfg_for("+hw=24g", "model=qwen7b", "data.max_seq_len=2048"))
    assert plan.fits and plan.changes == []
    assert plan.gradient_checkpointing and plan.micro_batch == 1 and plan.accumulation == 128
    assert plan.attn_implementation == "flash_attention_2"
    assert 14.2 < plan.peak_gib <= 24


def test_24g_qwen7b_without_checkpointing_does_not_fit_strictly():
    plan = make_plan(cfg_for("+hw=24g", "model=qwen7b", "data.max_seq_len=2048", "gradient_checkpointing=false"), strict=True)
    assert not plan.fits and plan.changes == [] and not plan.gradient_checkpointing
    assert plan.peak_gib > 24


def test_t4_qwen7b_lora_walks_to_qlora():
    plan = make_plan(cfg_for("+hw=t4", "model=qwen7b", "peft=lora", "data.max_seq_len=2048"))
    assert plan.fits and plan.peft == {"method": "qlora", "r": 64}
    assert plan.precision == "16-mixed" and plan.attn_implementation == "sdpa"
    # fp16 weights alone are 14.2 of 16 GiB: a lower rank cannot fit, so it is not kept
    assert len(plan.changes) == 1 and plan.changes[0].startswith("peft lora -> qlora")


def test_rank_is_lowered_only_when_that_fits():
    over = ("+hw=24g", "model=qwen7b", "data.max_seq_len=2048", "peft.r=512")
    wide = make_plan(cfg_for(*over), strict=True).peak_gib
    narrow = make_plan(cfg_for(*over, "peft.r=64"), strict=True).peak_gib
    plan = make_plan(cfg_for(*over, f"hw.memory_gib={(wide + narrow) / 2:.3f}"))
    assert plan.fits and plan.peft["method"] == "lora" and 64 <= plan.peft["r"] < 512
    assert len(plan.changes) == 1 and plan.changes[0].startswith(f"peft.r 512 -> {plan.peft['r']}")
    hopeless = make_plan(cfg_for("+hw=t4", "model=qwen14b", "data.max_seq_len=2048"))
    assert not hopeless.fits and hopeless.peft == {"method": "qlora", "r": 8}
    assert [c.split(" ")[0] for c in hopeless.changes] == ["peft", "peft.r"]


def test_cpu_profile_takes_no_gpu_only_steps():
    plan = make_plan(cfg_for("+hw=cpu", "model=qwen7b", "peft=none"))
    assert not plan.fits and plan.strategy["name"] == "auto" and plan.cpu_offload_gib == 0
    assert not any("deepspeed" in c or "qlora" in c for c in plan.changes)


def test_2xa6000_full_fine_tune_adds_offload_or_refuses():
    cfg = cfg_for("+hw=2xa6000", "model=qwen7b", "peft=none", "data.max_seq_len=2048")
    plan = make_plan(cfg)
    assert plan.fits and plan.strategy["offload_optimizer"] and plan.cpu_offload_gib > 80
    assert [c.split(" ")[0] for c in plan.changes] == ["micro_batch", "gradient_checkpointing", "strategy"]
    assert plan.changes[0].startswith("micro_batch 2 -> 1 (accumulation 32 -> 64")
    strict = make_plan(cfg, strict=True)
    assert not strict.fits and strict.changes == [] and strict.strategy["zero_stage"] == 2
    assert strict.peak_gib > 48 and not strict.strategy["offload_optimizer"]


def test_plan_counts_the_devices_the_trainer_runs():
    """+hw=a100 sets trainer.devices=1; a command-line trainer.devices / num_nodes is what Lightning
    runs, what the accumulation divides by and what ZeRO shards over."""
    base = ["+hw=a100", "model=qwen7b", "peft=none", "strategy=deepspeed_zero2", "data.max_seq_len=2048"]
    plan = make_plan(cfg_for(*base, "trainer.devices=4", "trainer.num_nodes=2"), strict=True, pin_checkpointing=True)
    assert (plan.devices, plan.micro_batch, plan.accumulation) == (8, 4, 128 // (4 * 8))
    one = make_plan(cfg_for(*base), strict=True, pin_checkpointing=True)
    assert (one.devices, one.accumulation) == (1, 32)
    assert plan.breakdown["optimizer"] == pytest.approx(one.breakdown["optimizer"] / 8, abs=0.002)


def test_zero2_step_only_with_several_devices():
    cfg = cfg_for("+hw=2xa6000", "model=llama2_7b", "peft=none", "strategy=ddp", "data.max_seq_len=2048")
    plan = make_plan(cfg)
    assert [c.split(" -> ")[0] for c in plan.changes] == [
        "micro_batch 2",
        "gradient_checkpointing off",
        "strategy ddp",  # -> deepspeed ZeRO-2: 59 GiB, still over 48
        "strategy deepspeed ZeRO-2",  # -> + offload optimizer
    ]
    assert plan.fits and plan.strategy == {"name": "deepspeed", "zero_stage": 2, "offload_optimizer": True, "offload_parameters": False}
    single = make_plan(cfg_for("+hw=24g", "model=llama2_13b", "peft=lora", "data.max_seq_len=2048"))
    assert not any("ZeRO" in c for c in single.changes)


def test_pinned_micro_batch_is_respected():
    cfg = cfg_for("+hw=a100", "model=qwen7b", "peft=lora", "data.max_seq_len=2048", "batch.micro_size=8")
    free = make_plan(cfg)
    pinned = make_plan(cfg, pin_micro_batch=8)
    assert pinned.micro_batch == 8 and pinned.accumulation == 16
    assert not any(c.startswith("micro_batch") for c in pinned.changes)
    assert pinned.gradient_checkpointing and pinned.fits
    assert free.changes and free.changes[0].startswith("micro_batch 8 ->")


def test_pinned_checkpointing_is_respected():
    plan = make_plan(cfg_for("+hw=24g", "model=qwen7b", "data.max_seq_len=2048"), pin_checkpointing=False)
    assert not plan.gradient_checkpointing
    assert not any(c.startswith("gradient_checkpointing") for c in plan.changes)


def test_accumulation_must_divide():
    with pytest.raises(ValueError, match="not a multiple"):
        make_plan(cfg_for("+hw=a100", "model=qwen7b", "batch.micro_size=3"))


def test_without_hw_it_fits_and_changes_nothing():
    plan = make_plan(cfg_for("model=qwen7b"))
    assert plan.fits and plan.device_gib is None and plan.changes == []
    assert plan.seq_len == 384 and plan.attn_implementation == "sdpa"


def test_to_json_round_trip():
    plan = make_plan(cfg_for("+hw=2xa6000", "model=qwen7b", "peft=none", "data.max_seq_len=2048"))
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert set(again.breakdown) == {"weights", "optimizer", "gradients", "activations", "buffers"}


@pytest.mark.parametrize("hw", HWS)
def test_every_model_and_hw_pair_plans(hw: str):
    for model in MODELS:
        plan = make_plan(cfg_for(f"+hw={hw}", f"model={model}"))
        assert plan.peak_gib > 0 and plan.device_gib is not None
        assert plan.fits or plan.changes, (hw, model)


def test_apply_plan_runs_what_the_plan_says():
    from ta_train.plan import PlanRefused, apply_plan, plan_for

    cfg = cfg_for("+hw=t4", "model=qwen7b", "data.max_seq_len=2048")
    plan = plan_for(cfg)
    assert plan.fits and plan.changes
    planned = apply_plan(cfg, plan)
    assert planned.peft.method.value == plan.peft["method"] and planned.peft.r == plan.peft["r"]
    assert planned.batch.micro_size == plan.micro_batch and planned.gradient_checkpointing == plan.gradient_checkpointing
    strict = cfg_for("+hw=t4", "model=qwen7b", "data.max_seq_len=2048", "plan.strict=true")
    with pytest.raises(PlanRefused, match="does not fit 15 GiB"):
        apply_plan(strict, plan_for(strict))


def test_plan_only_prints_the_plan_and_trains_nothing(tmp_path):
    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "ta_train", "+hw=24g", "model=qwen7b", "plan_only=true", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "plan: fits" in proc.stdout and '"peak_gib"' in proc.stdout
    assert not (tmp_path / "checkpoints").exists()


def test_h200_peaks_follow_from_the_audited_arithmetic():
    """bench/RESULTS.md Machine B: max_memory_allocated of a 1.07B Llama, 8 x 2,048 full rows, sdpa.

    Full rows carry no mask, so sdpa saves what the flash_attention_2 rule counts; the CUDA context
    (RUNTIME_OVERHEAD_GIB) is outside max_memory_allocated.
    """
    from ta_train.config import ArchConfig
    from ta_train.plan_memory import RUNTIME_OVERHEAD_GIB

    arch = ArchConfig(n_params=1_073_809_408, n_layers=16, hidden_size=2048, n_heads=32, n_kv_heads=8,
                      intermediate_size=8192, vocab_size=49152, max_positions=4096, tie_embeddings=True)
    lora = replace(LORA_BF16, micro_batch=8, attn="flash_attention_2")
    measured = {"none": (58.91, False), "lora": (35.85, False), "lora-ckpt": (12.4, True), "qlora": (46.9, False)}
    for name, (gib, ckpt) in measured.items():
        s = replace(lora, method=name.split("-")[0], gradient_checkpointing=ckpt)
        assert estimate(arch, s).peak - RUNTIME_OVERHEAD_GIB == pytest.approx(gib, rel=0.01), name


def test_auto_accelerator_without_hw_is_resolved_as_lightning_does(monkeypatch):
    """No hw profile, trainer.accelerator auto: on this CPU-only machine the plan is a CPU plan
    (LoRA dropout keeps a 4-byte noise tensor, not CUDA's 1-byte mask); with a GPU visible, a GPU plan."""
    import torch

    from ta_train.plan import _setup

    lora = ["model=qwen7b", "peft=lora", "peft.dropout=0.05", "precision=bf16-mixed", "batch.micro_size=1", "batch.global_size=1"]
    auto, cpu, gpu = (cfg_for(*lora, f"trainer.accelerator={a}") for a in ("auto", "cpu", "gpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert _setup(auto, None, None).cpu
    assert make_plan(auto).breakdown == make_plan(cpu).breakdown != make_plan(gpu).breakdown
    from ta_train.plan import runs_on_cpu

    assert runs_on_cpu(auto)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no CUDA device can exist here
    assert not runs_on_cpu(auto) and make_plan(auto).breakdown == make_plan(gpu).breakdown
    assert runs_on_cpu(cfg_for(*lora, "+hw=cpu")) and not runs_on_cpu(cfg_for(*lora, "+hw=24g", "trainer.accelerator=cpu"))
