"""DeepSpeed JSON from the plan (checked by DeepSpeed's own parser), the hw env, gathered state dicts."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from ta_train.plan import make_plan
from ta_train.plan_memory import ZERO_BUCKET_ELEMENTS
from ta_train.strategy import apply_env
from ta_train.zero import (
    FP16_LOSS_SCALING,
    deepspeed_config,
    engine_grad_norm,
    gathered_state_dict,
    lightning_config,
    write_deepspeed_json,
)
from tests.conftest import compose

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
STRATEGIES = ["deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"]
PRECISIONS = ["bf16-mixed", "16-mixed", "32-true"]


def cfg_for(*overrides: str):
    cfg, OmegaConf = compose([*overrides, "run_dir=/tmp/ta-zero-test"])
    return OmegaConf.to_object(cfg)


def ds_for(strategy: str, precision: str, *extra: str):
    cfg = cfg_for("+hw=2xa6000", "model=qwen7b", "peft=lora", f"strategy={strategy}", f"precision={precision}", *extra)
    plan = make_plan(cfg, strict=True)
    return deepspeed_config(plan, cfg), plan, cfg


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_config_follows_the_plan(strategy, precision):
    ds, plan, cfg = ds_for(strategy, precision)
    zero = ds["zero_optimization"]
    assert zero["stage"] == plan.strategy["zero_stage"] == int(strategy[len("deepspeed_zero")])
    assert ds["train_micro_batch_size_per_gpu"] == plan.micro_batch == 2
    assert ds["gradient_accumulation_steps"] == plan.accumulation == 32  # 128 = 2 x 32 x 2 devices
    assert ds["gradient_clipping"] == cfg.trainer.gradient_clip_val == 1.0
    assert zero["reduce_bucket_size"] == ZERO_BUCKET_ELEMENTS and zero["overlap_comm"] and zero["contiguous_gradients"]
    assert ("bf16" in ds) == (precision == "bf16-mixed") and ("fp16" in ds) == (precision == "16-mixed")
    if precision == "16-mixed":
        assert ds["fp16"] == {"enabled": True, **FP16_LOSS_SCALING} and ds["fp16"]["loss_scale"] == 0  # dynamic
    offload = strategy.endswith("offload")
    assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == offload
    if offload:
        assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True} == zero["offload_param"]
    if zero["stage"] == 3:
        layer = 2 * 3584**2 + 2 * 3584 * 512 + 3 * 3584 * 18944  # one Qwen2-7B decoder layer's linears
        assert zero["stage3_prefetch_bucket_size"] == layer and zero["stage3_max_live_parameters"] == 2 * layer
        assert zero["stage3_param_persistence_threshold"] == 10 * 3584
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    else:
        assert not any(k.startswith("stage3_") for k in zero)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_deepspeed_parser_accepts_every_generated_config(strategy, precision):
    from deepspeed.runtime.config import DeepSpeedConfig

    ds, plan, _ = ds_for(strategy, precision)
    parsed = DeepSpeedConfig(json.loads(json.dumps(ds)))  # as written to deepspeed.json
    assert parsed.zero_optimization_stage == plan.strategy["zero_stage"]
    assert parsed.train_micro_batch_size_per_gpu == 2 and parsed.gradient_accumulation_steps == 32
    assert parsed.bfloat16_config.enabled == (precision == "bf16-mixed")
    assert parsed.float16_config.enabled == (precision == "16-mixed")
    if precision == "16-mixed":
        assert parsed.float16_config.loss_scale == 0 and parsed.float16_config.initial_scale_power == 16
    assert parsed.gradient_clipping == 1.0
    zc = parsed.zero_config
    assert (zc.offload_optimizer is not None) == strategy.endswith("offload")
    if strategy.endswith("offload"):
        assert zc.offload_optimizer.device == "cpu" and zc.offload_param.device == "cpu" and zc.offload_param.pin_memory
    if plan.strategy["zero_stage"] == 3:
        assert zc.gather_16bit_weights_on_model_save and zc.prefetch_bucket_size == ds["zero_optimization"]["stage3_prefetch_bucket_size"]


def test_cpu_run_does_not_pin_and_offload_planned_by_the_oom_path_is_written():
    ds, _, _ = ds_for("deepspeed_zero2", "32-true", "strategy.offload_optimizer=true", "trainer.accelerator=cpu")
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    # full 7B on 2x48 GiB: the plan adds offload itself (ZeRO alone does not fit), and the JSON follows it
    cfg = cfg_for("+hw=2xa6000", "model=qwen7b", "peft=none")
    plan = make_plan(cfg)
    assert plan.strategy["offload_optimizer"]
    assert "offload_optimizer" in deepspeed_config(plan, cfg)["zero_optimization"]


def test_refuses_what_deepspeed_cannot_run():
    with pytest.raises(ValueError, match="needs a deepspeed plan"):
        deepspeed_config(make_plan(cfg_for("model=tiny"), strict=True), cfg_for("model=tiny"))
    cfg = cfg_for("+hw=2xa6000", "model=qwen7b", "strategy.offload_parameters=true")
    with pytest.raises(ValueError, match="needs ZeRO stage 3"):
        deepspeed_config(make_plan(cfg, strict=True), cfg)


def test_lightning_gets_the_json_without_accumulation(tmp_path):
    ds, _, _ = ds_for("deepspeed_zero2", "bf16-mixed")
    assert "gradient_accumulation_steps" not in lightning_config(ds)  # Lightning sets it and refuses ours
    assert lightning_config(ds)["zero_optimization"] == ds["zero_optimization"]
    path = write_deepspeed_json(ds, tmp_path)
    assert path.name == "deepspeed.json" and json.loads(path.read_text()) == ds


def test_run_writes_deepspeed_json(tmp_path):
    from ta_train.train import _deepspeed_json

    cfg = cfg_for("+hw=2xa6000", "model=qwen7b", "peft=lora", "strategy=deepspeed_zero3")
    ds = _deepspeed_json(cfg, tmp_path)
    assert json.loads((tmp_path / "deepspeed.json").read_text()) == ds
    assert ds["zero_optimization"]["stage"] == 3
    assert _deepspeed_json(cfg_for("model=tiny"), tmp_path / "none") is None


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed not installed")
def test_build_strategy_passes_the_json():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from ta_train.strategy import build_strategy

    ds, _, cfg = ds_for("deepspeed_zero3_offload", "bf16-mixed")
    strategy = build_strategy(cfg.strategy, ds)
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.config == lightning_config(ds)


def test_engine_grad_norm_is_none_without_an_engine():
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert engine_grad_norm(trainer) is None


def test_gathered_state_dict_copies_trainable_weights_and_refuses_empty_ones():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].weight.requires_grad_(False)
    state = gathered_state_dict(model)
    assert set(state) == {"0.weight", "0.bias", "1.bias"}
    assert torch.equal(state["0.weight"], model[0].weight) and state["0.weight"].data_ptr() != model[0].weight.data_ptr()
    assert set(gathered_state_dict(model, trainable_only=False)) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    model[0].weight = torch.nn.Parameter(torch.empty(0))  # what a ZeRO-3 placeholder looks like ungathered
    with pytest.raises(RuntimeError, match="still empty"):
        gathered_state_dict(model)


def test_hw_env_sets_what_is_unset_and_keeps_user_exports():
    environ = {"NCCL_IB_DISABLE": "0"}
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "NCCL_IB_DISABLE": "1"}
    assert apply_env(env, environ=environ) == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert environ == {"NCCL_IB_DISABLE": "0", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert apply_env(env, override=True, environ=environ) == env and environ["NCCL_IB_DISABLE"] == "1"


def test_hw_profiles_carry_their_env():
    multi = cfg_for("+hw=2xa6000", "model=qwen7b").hw
    assert multi.env["NCCL_IB_DISABLE"] == "1" and multi.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC" in multi.env and not multi.env_override
    for single in ("t4", "24g", "a100", "h200"):  # every GPU profile: growable allocator segments
        assert cfg_for(f"+hw={single}").hw.env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, single
    assert cfg_for("+hw=cpu").hw.env == {}
    assert cfg_for("+hw=cpu", "+hw.env.OMP_NUM_THREADS=2").hw.env == {"OMP_NUM_THREADS": "2"}


def test_fit_applies_the_hw_env(make_cfg, monkeypatch):
    from ta_train.train import fit

    monkeypatch.delenv("TA_TEST_ENV", raising=False)
    cfg = make_cfg("trainer.max_steps=1", "trainer.limit_val_batches=0", "+hw.env.TA_TEST_ENV=from-hw")
    fit(cfg)
    import os

    assert os.environ["TA_TEST_ENV"] == "from-hw"


def test_gathered_state_dict_keeps_nothing_on_ranks_that_do_not_write():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert gathered_state_dict(model, keep=False) == {}
    assert set(gathered_state_dict(model, keep=True)) == {"0.weight", "0.bias"}


def test_count_parameters_counts_zero3_placeholders_at_full_size():
    import torch

    from ta_train.model import count_parameters

    model = torch.nn.Linear(4, 3)
    placeholder = torch.nn.Parameter(torch.empty(0))
    placeholder.ds_numel = 12  # what deepspeed.zero.Init leaves: an empty shard that knows its size
    model.weight = placeholder
    assert count_parameters(model) == (15, 15)
