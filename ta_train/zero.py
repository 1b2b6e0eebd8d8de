"""DeepSpeed ZeRO from the plan: the JSON config, the engine's global gradient norm, gathered weights.

`deepspeed_config(plan, cfg)` is a pure function: the run writes its result as `deepspeed.json` and
hands it to Lightning's DeepSpeedStrategy (minus `gradient_accumulation_steps`, which Lightning
insists on setting itself from the trainer: the same number, from the same config). deepspeed is
imported only inside the functions that touch a live engine or sharded parameters.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ta_train.config import TrainConfig
from ta_train.plan_memory import ZERO_BUCKET_ELEMENTS, linear_params

if TYPE_CHECKING:
    from ta_train.plan import Plan

# fp16 dynamic loss scaling (DeepSpeed's "loss_scale": 0 means dynamic): start at 2^16, halve on
# overflow after `hysteresis` overflowing steps, double after `loss_scale_window` clean steps.
FP16_LOSS_SCALING = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
# Set by Lightning from the trainer (it refuses a config that carries it).
LIGHTNING_OWNED_KEYS = ("gradient_accumulation_steps",)


def deepspeed_config(plan: "Plan", cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for the strategy, precision and batch of `plan` (ZeRO 1, 2, 3, offload).

    Buckets tie to the planner's arithmetic (ta_train.plan_memory): gradients reduce in buckets of
    ZERO_BUCKET_ELEMENTS (2e8, the size the planner counts for ZeRO-Offload's device buckets), and
    ZeRO-3 keeps at most two decoder layers' weights gathered at once (the current one and the
    prefetched one: the planner's stage-3 buffer); parameters under 10 x hidden elements (norms,
    biases) stay whole on every device, as gathering them costs more than it saves.
    Raises ValueError when the plan's strategy is not deepspeed or its stage is not 1, 2 or 3.
    """
    st = plan.strategy
    if st["name"] != "deepspeed":
        raise ValueError(f"deepspeed_config needs a deepspeed plan, got strategy {st['name']!r}")
    stage = int(st["zero_stage"])
    if stage not in (1, 2, 3):
        raise ValueError(f"strategy.zero_stage must be 1, 2 or 3 for deepspeed, got {stage}")
    pin = cfg.trainer.accelerator != "cpu"  # page-locked host buffers speed up device<->CPU copies
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": ZERO_BUCKET_ELEMENTS,
    }
    if stage < 3:
        zero |= {"allgather_partitions": True, "allgather_bucket_size": ZERO_BUCKET_ELEMENTS, "reduce_scatter": True}
    if st["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if stage == 3:
        arch = cfg.model.arch
        layer = linear_params(arch) // arch.n_layers
        zero |= {
            "stage3_prefetch_bucket_size": layer,
            "stage3_max_live_parameters": 2 * layer,
            "stage3_max_reuse_distance": 2 * layer,
            "stage3_param_persistence_threshold": 10 * arch.hidden_size,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
        if st["offload_parameters"]:
            zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    elif st["offload_parameters"]:
        raise ValueError("strategy.offload_parameters needs ZeRO stage 3 (parameters are only partitioned there)")
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": float(cfg.trainer.gradient_clip_val or 0.0),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # bitsandbytes 8-bit AdamW is "untested" to DeepSpeed
        "steps_per_print": 10**9,  # Lightning logs; keep DeepSpeed's own step prints out of the way
        "wall_clock_breakdown": False,
    }
    if plan.precision.startswith("bf16"):
        ds["bf16"] = {"enabled": True}
    elif plan.precision.startswith("16"):
        ds["fp16"] = {"enabled": True, **FP16_LOSS_SCALING}
    return ds


def lightning_config(ds: dict[str, Any]) -> dict[str, Any]:
    """The dict for DeepSpeedStrategy(config=...): the JSON without the keys Lightning sets itself."""
    return {k: v for k, v in ds.items() if k not in LIGHTNING_OWNED_KEYS}


def write_deepspeed_json(ds: dict[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / "deepspeed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ds, indent=2) + "\n", encoding="utf-8")
    return path


def engine_grad_norm(trainer: Any) -> Optional[float]:
    """The DeepSpeed engine's global gradient norm of the last optimizer step, before clipping.

    Under ZeRO each rank holds a shard of the gradients, so a norm over `module.parameters()` is
    local (and under ZeRO-3 the parameters are empty placeholders); the engine reduces the shards'
    norms across ranks while it steps. Valid after the engine's step on an accumulation boundary
    (Lightning's on_train_batch_end of the window's last micro-batch; on_before_optimizer_step runs
    before the engine steps and would read the previous step's norm). None when the strategy is not
    DeepSpeed or the engine has not stepped yet.
    """
    engine = getattr(trainer.strategy, "model", None)
    if engine is None or not hasattr(engine, "get_global_grad_norm"):
        return None
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def is_zero3_partitioned(param: Any) -> bool:
    """A parameter ZeRO-3 has partitioned: it carries `ds_id`, and its local data is a placeholder."""
    return hasattr(param, "ds_id")


def gathered_state_dict(model: Any, trainable_only: bool = True, keep: bool = True) -> dict[str, Any]:
    """Full CPU copies of the model's (trainable) parameters, gathered when ZeRO-3 partitioned them.

    Every rank must call it (the gather is a collective); each parameter is gathered alone, so at
    most one full tensor is on the device at a time. `keep=False` (every rank but the writer) joins
    the gathers but keeps no copy, so host RAM holds one full copy per node's writer, not one per rank.
    Raises RuntimeError if a kept tensor is still empty after the gather (the `Size([0])` adapter
    that other frameworks save under ZeRO-3).
    """
    state: dict[str, Any] = {}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        if is_zero3_partitioned(p):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if keep:
                    state[name] = p.detach().to("cpu", copy=True)
        elif keep:
            state[name] = p.detach().to("cpu", copy=True)
    empty = [n for n, t in state.items() if t.numel() == 0]
    if empty:
        raise RuntimeError(f"{len(empty)} parameters are still empty after gathering, e.g. {empty[:3]}")
    return state
