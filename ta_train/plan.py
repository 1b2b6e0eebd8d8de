"""Memory and batch plan: will this config fit the card, and if not, what to change (issue 6).

`make_plan(cfg)` predicts the peak GiB per device (arithmetic in `plan_memory`) and, when it does
not fit `hw.memory_gib`, walks the seed's OOM path in order, stopping at the first step that fits:

1. smaller micro-batch (halve down to 1; accumulation rises so the global batch stays the same)
2. gradient checkpointing on
3. DeepSpeed ZeRO-2 (only with several devices)
4. optimizer states offloaded to CPU RAM (full fine-tune only: LoRA's optimizer is tiny)
5. ZeRO-3 with parameters offloaded too (full fine-tune only)
6. lower LoRA rank (halve down to 8; LoRA only, kept only when it makes the plan fit)
7. QLoRA instead of LoRA at the configured rank (GPU only), then a lower rank again if needed

Steps 3-5 need a GPU (DeepSpeed). Steps 4-5 are ours, not the seed's: the issue asks the 2xa6000 profile to add offload where ZeRO
alone does not fit a full 7B fine-tune. Changes accumulate; each one is recorded in `changes`.
Imports only the standard library and `ta_train.config` at its top: no torch, planning runs before
loading. The one exception, inside `runs_on_cpu`: with no hw profile and trainer.accelerator "auto",
torch says whether a GPU is there (the training path has imported it already).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional

from ta_train.config import AttnImplementation, BatchConfig, PeftMethod, TrainConfig
from ta_train.plan_memory import HALF_PRECISIONS, Estimate, Setup, estimate, trainable_params

log = logging.getLogger(__name__)

MIN_LORA_RANK = 8


@dataclass
class Plan:
    """What a run will use and how much memory it is predicted to need (written as `plan.json`)."""

    fits: bool
    peak_gib: float  # predicted peak per device
    breakdown: dict[str, float]  # weights, optimizer, gradients, activations, buffers (GiB per device)
    cpu_offload_gib: float  # CPU RAM for offloaded states, all devices of the node together
    precision: str
    strategy: dict[str, Any]  # name, zero_stage, offload_optimizer, offload_parameters
    peft: dict[str, Any]  # method, r (the OOM path may lower r or switch to qlora)
    micro_batch: int  # sequences per forward pass per device
    accumulation: int  # micro-batches per optimizer step
    devices: int
    gradient_checkpointing: bool
    attn_implementation: str
    seq_len: int  # tokens per sequence (data.max_seq_len)
    device_gib: Optional[float]  # hw.memory_gib; None without a hw profile
    params: dict[str, int]  # total and trainable parameter counts
    changes: list[str] = field(default_factory=list)  # what the OOM path changed, in order

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls(**json.loads(text))


def attn_implementation(cfg: TrainConfig) -> str:
    """The model's explicit choice, else flash_attention_2 when the hw has it under half precision, else sdpa."""
    if cfg.model.attn_implementation != AttnImplementation.auto:
        return cfg.model.attn_implementation.value
    if cfg.hw is not None and cfg.hw.flash_attention and cfg.precision.name in HALF_PRECISIONS:
        return "flash_attention_2"
    return "sdpa"


def runs_on_cpu(cfg: TrainConfig) -> bool:
    """Whether the run trains on CPU: the hw profile's accelerator, else trainer.accelerator, with
    "auto" resolved as Lightning does (a CUDA or MPS device when one is available, else the CPU).

    Only "auto" without a hw profile asks torch, imported here and not at the module's top: the
    training path has loaded it already, and `import ta_train.plan` stays light.
    """
    accelerator = cfg.hw.accelerator if cfg.hw is not None else cfg.trainer.accelerator
    if accelerator != "auto":
        return accelerator == "cpu"
    import torch

    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def _setup(cfg: TrainConfig, micro: Optional[int], ckpt: Optional[bool]) -> Setup:
    peft, st = cfg.peft, cfg.strategy
    return Setup(
        method=peft.method.value,
        r=peft.r,
        targets=tuple(peft.target_modules or cfg.model.lora_target_modules),
        lora_dropout=peft.dropout,
        double_quant=peft.double_quant,
        precision=cfg.precision.name,
        frozen_dtype=cfg.precision.frozen_dtype,
        strategy=st.name,
        zero_stage=st.zero_stage,
        offload_optimizer=st.offload_optimizer,
        offload_parameters=st.offload_parameters,
        fsdp_sharding=st.fsdp_sharding,
        # what Lightning runs: the hw profile sets trainer.devices, and the command line may change it
        devices=cfg.trainer.devices * cfg.trainer.num_nodes,
        nodes=cfg.trainer.num_nodes,
        micro_batch=micro if micro is not None else cfg.batch.micro_size,
        seq_len=cfg.data.max_seq_len,
        gradient_checkpointing=ckpt if ckpt is not None else cfg.gradient_checkpointing,
        attn=attn_implementation(cfg),
        optimizer=cfg.optim.name,
        cpu=runs_on_cpu(cfg),
        fused_ce=cfg.perf.fused_ce,
        ce_chunk_rows=cfg.perf.ce_chunk_rows,
        plain_lm_head=cfg.model.plain_lm_head,
        # see OptimConfig.fused: ZeRO-Offload steps DeepSpeedCPUAdam instead
        fused_optimizer=cfg.optim.fused and cfg.optim.name == "adamw" and not (st.name == "deepspeed" and st.offload_optimizer),
    )


def _accumulation(cfg: TrainConfig, s: Setup) -> int:
    return BatchConfig(global_size=cfg.batch.global_size, micro_size=s.micro_batch).accumulation(s.devices)


def _strategy_name(s: Setup) -> str:
    if s.strategy != "deepspeed":
        return s.strategy
    off = [n for n, on in (("optimizer", s.offload_optimizer), ("parameters", s.offload_parameters)) if on]
    return f"deepspeed ZeRO-{s.zero_stage}" + (f" + offload {' and '.join(off)}" if off else "")


# Each step takes the current setup and returns (new setup, message), or None where it does not apply.
Step = Callable[[Setup], Optional[tuple[Setup, str]]]


def _checkpointing(s: Setup) -> Optional[tuple[Setup, str]]:
    if s.gradient_checkpointing:
        return None
    return replace(s, gradient_checkpointing=True), "gradient_checkpointing off -> on"


def _to_deepspeed(s: Setup, new: Setup, why: str) -> tuple[Setup, str]:
    """A step onto DeepSpeed. ZeRO-1/2/3 step the client torch AdamW on their fp32 partitions, fused
    or not; ZeRO-Offload steps DeepSpeedCPUAdam instead, so optim.fused goes off there (apply_plan)."""
    off = s.fused_optimizer and new.offload_optimizer
    note = "; optim.fused true -> false (ZeRO-Offload steps DeepSpeedCPUAdam)" if off else ""
    new = replace(new, fused_optimizer=s.fused_optimizer and not off)
    return new, f"strategy {_strategy_name(s)} -> {_strategy_name(new)} ({why}){note}"


def _zero2(s: Setup) -> Optional[tuple[Setup, str]]:
    if s.devices < 2 or s.shard_stage >= 2:
        return None
    why = f"optimizer states and gradients sharded over {s.devices} devices"
    return _to_deepspeed(s, replace(s, strategy="deepspeed", zero_stage=2), why)


def _offload_optimizer(s: Setup) -> Optional[tuple[Setup, str]]:
    if s.method != "none" or (s.strategy == "deepspeed" and s.offload_optimizer):
        return None
    stage = s.zero_stage if s.strategy == "deepspeed" else max(2, min(s.shard_stage, 3))
    new = replace(s, strategy="deepspeed", zero_stage=max(stage, 2), offload_optimizer=True)
    return _to_deepspeed(s, new, "AdamW states in CPU RAM")


def _offload_parameters(s: Setup) -> Optional[tuple[Setup, str]]:
    if s.method != "none" or s.offload_parameters:
        return None
    new = replace(s, strategy="deepspeed", zero_stage=3, offload_optimizer=True, offload_parameters=True)
    return _to_deepspeed(s, new, "weights in CPU RAM too; slow")


def make_plan(
    cfg: TrainConfig,
    *,
    strict: bool = False,
    pin_micro_batch: Optional[int] = None,
    pin_checkpointing: Optional[bool] = None,
) -> Plan:
    """Plan `cfg`: predicted memory, and the OOM path's changes when it does not fit `cfg.hw`.

    strict: report the configured setup as is (fits may be False), change nothing.
    pin_micro_batch / pin_checkpointing: use these values and skip the matching OOM step.
    Raises ValueError when global batch is not a multiple of micro-batch x devices.
    """
    s = _setup(cfg, pin_micro_batch, pin_checkpointing)
    _accumulation(cfg, s)  # the configured combination must divide, even when the path changes it
    arch = cfg.model.arch
    budget = cfg.hw.memory_gib if cfg.hw is not None else None
    changes: list[str] = []

    def fits(x: Setup) -> bool:
        return budget is None or estimate(arch, x).peak <= budget

    def note(msg: str, x: Setup) -> None:
        changes.append(f"{msg}: predicted peak {estimate(arch, x).peak:.1f} GiB of {budget:g}")

    if not strict and not fits(s):
        if pin_micro_batch is None:
            s = _shrink_micro_batch(cfg, s, fits, note)
        gpu = cfg.hw is not None and cfg.hw.accelerator == "gpu"
        # DeepSpeed and bitsandbytes need CUDA (Lightning refuses DeepSpeed on CPU): GPU-only steps
        steps: list[Step] = [_zero2, _offload_optimizer, _offload_parameters] if gpu else []
        if pin_checkpointing is None:
            steps.insert(0, _checkpointing)
        for step in steps:
            if fits(s):
                break
            out = step(s)
            if out is not None:
                s = out[0]
                note(out[1], s)
        if not fits(s):
            s = _lower_rank(s, fits, note)
        if not fits(s) and gpu and s.method == "lora":
            s = replace(s, method="qlora", double_quant=True)
            note("peft lora -> qlora (nf4 base with double quantization)", s)
            if not fits(s):
                s = _lower_rank(s, fits, note, keep_if_short=True)
    return _to_plan(cfg, s, estimate(arch, s), budget, changes)


def _shrink_micro_batch(cfg: TrainConfig, s: Setup, fits: Callable[[Setup], bool], note: Callable) -> Setup:
    """Halve the micro-batch until it fits or reaches 1; only sizes that divide global / devices."""
    per_device = cfg.batch.global_size // s.devices
    start, m = s, s.micro_batch
    while m > 1 and not fits(s):
        m = max(d for d in range(1, m // 2 + 1) if per_device % d == 0)
        s = replace(s, micro_batch=m)
    if s.micro_batch != start.micro_batch:
        note(
            f"micro_batch {start.micro_batch} -> {m} (accumulation {_accumulation(cfg, start)} -> "
            f"{_accumulation(cfg, s)}, global batch {cfg.batch.global_size} kept)",
            s,
        )
    return s


def _lower_rank(s: Setup, fits: Callable[[Setup], bool], note: Callable, keep_if_short: bool = False) -> Setup:
    """Halve the LoRA rank, not below MIN_LORA_RANK, until it fits.

    A lower rank costs quality, so when even MIN_LORA_RANK does not fit the rank is kept (QLoRA at
    the configured rank comes next), unless `keep_if_short` (the last step: report the smallest).
    """
    if s.method == "none" or s.r <= MIN_LORA_RANK:
        return s
    low = s
    while low.r > MIN_LORA_RANK and not fits(low):
        low = replace(low, r=max(MIN_LORA_RANK, low.r // 2))
    if not fits(low) and not keep_if_short:
        return s
    note(f"peft.r {s.r} -> {low.r}", low)
    return low


def _to_plan(cfg: TrainConfig, s: Setup, est: Estimate, budget: Optional[float], changes: list[str]) -> Plan:
    return Plan(
        fits=budget is None or est.peak <= budget,
        peak_gib=round(est.peak, 3),
        breakdown=est.breakdown(),
        cpu_offload_gib=round(est.cpu_offload, 3),
        precision=s.precision,
        strategy={
            "name": s.strategy,
            "zero_stage": s.zero_stage if s.strategy == "deepspeed" else 0,
            "offload_optimizer": s.offload_optimizer,
            "offload_parameters": s.offload_parameters,
        },
        peft={"method": s.method, "r": s.r if s.method != PeftMethod.none.value else 0},
        micro_batch=s.micro_batch,
        accumulation=_accumulation(cfg, s),
        devices=s.devices,
        gradient_checkpointing=s.gradient_checkpointing,
        attn_implementation=s.attn,
        seq_len=s.seq_len,
        device_gib=budget,
        params={"total": cfg.model.arch.n_params, "trainable": trainable_params(cfg.model.arch, s)},
        changes=changes,
    )


class PlanRefused(RuntimeError):
    """The run cannot fit the hardware profile (the message carries the numbers)."""


def plan_for(cfg: TrainConfig) -> Plan:
    """make_plan with the `plan.*` settings of the config."""
    return make_plan(
        cfg, strict=cfg.plan.strict, pin_micro_batch=cfg.plan.micro_batch, pin_checkpointing=cfg.plan.gradient_checkpointing
    )


def apply_plan(cfg: TrainConfig, plan: Plan) -> TrainConfig:
    """The config the plan runs with; refuses (PlanRefused) when the plan does not fit."""
    if not plan.fits:
        raise PlanRefused(
            f"{cfg.model.name} does not fit {plan.device_gib:g} GiB per device ({cfg.hw.name if cfg.hw else 'no hw'}): "
            f"predicted {plan.peak_gib:.1f} GiB = " + ", ".join(f"{k} {v:.1f}" for k, v in plan.breakdown.items())
            + (f"; after: {'; '.join(plan.changes)}" if plan.changes else " (plan.strict=true: nothing changed)")
        )
    st = plan.strategy
    strategy = replace(
        cfg.strategy,
        name=st["name"],
        zero_stage=st.get("zero_stage") or 0,
        offload_optimizer=bool(st.get("offload_optimizer")),
        offload_parameters=bool(st.get("offload_parameters")),
    )
    # as CausalLMModule.configure_optimizers decides: only DeepSpeed reads offload_optimizer
    fused = cfg.optim.fused and not (strategy.name == "deepspeed" and strategy.offload_optimizer)
    if cfg.optim.fused and not fused:
        log.info("optim.fused off: ZeRO-Offload steps DeepSpeedCPUAdam on the CPU")
    peft = replace(cfg.peft, method=PeftMethod(plan.peft["method"]), r=plan.peft.get("r", cfg.peft.r))
    if peft.method == PeftMethod.qlora and cfg.peft.method != PeftMethod.qlora:
        peft = replace(peft, double_quant=True)
    return replace(
        cfg,
        batch=replace(cfg.batch, micro_size=plan.micro_batch),
        gradient_checkpointing=plan.gradient_checkpointing,
        strategy=strategy,
        peft=peft,
        optim=replace(cfg.optim, fused=fused),  # see _to_deepspeed
    )


def format_plan(plan: Plan) -> str:
    """A few readable lines: peak, breakdown, batch, and what changed."""
    device = f"of {plan.device_gib:g} GiB" if plan.device_gib else "(no hw profile: nothing to fit)"
    lines = [
        f"plan: {'fits' if plan.fits else 'DOES NOT FIT'}, peak {plan.peak_gib:.2f} GiB per device {device}",
        "  " + ", ".join(f"{k} {v:.2f}" for k, v in plan.breakdown.items()) + f"; CPU offload {plan.cpu_offload_gib:.1f} GiB",
        f"  {plan.precision}, strategy {plan.strategy}, peft {plan.peft}, micro-batch {plan.micro_batch} x "
        f"accumulation {plan.accumulation} x {plan.devices} device(s), checkpointing {plan.gradient_checkpointing}, "
        f"attention {plan.attn_implementation}, {plan.seq_len} tokens",
    ]
    lines += [f"  change: {c}" for c in plan.changes]
    return "\n".join(lines)
