"""Checks across config groups, run when TrainConfig is built (before anything loads).

Each returns why the combination cannot run, or None. Kept apart from ta_train.config's schema;
like it, no torch import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ta_train.config import ModelConfig, PeftConfig, PerfConfig, StrategyConfig


def compile_refusal(perf: "PerfConfig", strategy: "StrategyConfig") -> Optional[str]:
    """Why perf.compile cannot run with this strategy, or None when it can.

    ZeRO-3 and FSDP gather each layer's sharded parameters in module hooks around its forward and
    free them after; inside a compiled layer dynamo would trace those hooks (DeepSpeed's partition
    bookkeeping, FSDP's flat-parameter views) as part of the graph, which is unsupported through
    Lightning's strategies. ZeRO-1/2, DDP and a single device keep whole parameters: allowed.
    """
    if not perf.compile:
        return None
    if strategy.name == "fsdp":
        return "perf.compile=true is not supported with strategy=fsdp (its parameter hooks break the compiled layers); use ddp or deepspeed ZeRO-1/2"
    if strategy.name == "deepspeed" and strategy.zero_stage == 3:
        return "perf.compile=true is not supported with DeepSpeed ZeRO-3 (its parameter gathering hooks break the compiled layers); use ZeRO-1/2"
    return None


def sdpa_backends_refusal(perf: "PerfConfig", model: "ModelConfig") -> Optional[str]:
    """perf.sdpa_backends orders SDPA's kernels: refused with an attention that never calls SDPA."""
    attn = getattr(model.attn_implementation, "value", model.attn_implementation)
    if perf.sdpa_backends and attn not in ("sdpa", "auto"):
        return (f"perf.sdpa_backends orders PyTorch's SDPA kernels; model.attn_implementation={attn} "
                "does not use them (set model.attn_implementation=sdpa, or perf.sdpa_backends=null)")
    return None


def fsdp_refusal(strategy: "StrategyConfig", peft: "PeftConfig") -> Optional[str]:
    """FSDP NO_SHARD with adapters: refused (DDP trains the same, without the failures below).

    PEFT needs FSDP's use_orig_params (trainable and frozen weights in one unit), and with it NO_SHARD
    fails in PyTorch's FSDP (torch 2.13): with tied embeddings the forward after the first backward
    asserts "as_params=True type(prim_param)=<class 'torch.Tensor'>" (raw FSDP too, not only through
    Lightning); untied, the full state dict of a checkpoint lacks the root unit's weights (embeddings,
    norm, lm_head). NO_SHARD keeps a whole replica per rank, as DDP does. Full fine-tuning under
    NO_SHARD runs (tests/integration/test_fsdp_cpu.py).
    """
    method = getattr(getattr(peft, "method", "none"), "value", getattr(peft, "method", "none"))
    if (getattr(strategy, "name", None), getattr(strategy, "fsdp_sharding", None)) == ("fsdp", "NO_SHARD") and method != "none":
        return (f"strategy.fsdp_sharding=NO_SHARD with peft={method} fails in PyTorch's FSDP (use_orig_params with "
                "frozen weights); use strategy=ddp (NO_SHARD replicates like DDP) or a sharded strategy.fsdp_sharding")
    return None
