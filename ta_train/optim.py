"""AdamW (torch, DeepSpeed CPU or bitsandbytes 8-bit) with no-decay groups and a warmup + cosine schedule."""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Iterable, Sequence

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from ta_train.config import OptimConfig


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """ceil(ratio x total) optimizer steps of linear warmup (seed: 3% of the total)."""
    return math.ceil(total_steps * warmup_ratio)


def warmup_cosine_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear 1/warmup .. 1, then cosine to min_ratio.

    The first step already trains (factor 1/warmup, not 0), and the factor reaches min_ratio at
    step == total.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def is_no_decay(name: str, param: "torch.Tensor") -> bool:
    """Biases, norm weights and embeddings are not weight-decayed.

    Decided by name, not by shape: under FSDP the optimizer sees flat 1-D shards of every weight.
    """
    return name.endswith(".bias") or "embed" in name or "norm" in name


def param_groups(named_params: Iterable[tuple[str, "torch.Tensor"]], weight_decay: float) -> list[dict]:
    """Split the *trainable* parameters into a decayed and a non-decayed AdamW group."""
    decay, no_decay = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw_class(name: str, offload: bool = False) -> type:
    """The optimizer class for `optim.name`; `offload`: ZeRO-Offload steps the optimizer on the CPU.

    adamw: torch.optim.AdamW, or DeepSpeedCPUAdam under ZeRO-Offload (DeepSpeed refuses a torch
    optimizer there: its vectorized CPU step is several times faster). adamw8bit / paged_adamw8bit:
    bitsandbytes' block-wise 8-bit AdamW (Dettmers et al. 2022), m and v in 1 byte each; the paged
    variant keeps its states in unified memory that the driver pages to CPU RAM under pressure.
    8-bit states and ZeRO-Offload both target optimizer memory: combining them is refused.
    """
    if name == "adamw":
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam
        import torch

        return torch.optim.AdamW
    if name in ("adamw8bit", "paged_adamw8bit"):
        if offload:
            raise ValueError(f"optim.name={name} with strategy.offload_optimizer: 8-bit states and ZeRO-Offload do not combine; use optim.name=adamw")
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise RuntimeError(f"optim.name={name} needs bitsandbytes (pip install '.[gpu]')") from err
        return bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    raise ValueError(f"optim.name={name!r}: expected adamw, adamw8bit or paged_adamw8bit")


def build_optimizer(model: "torch.nn.Module", cfg: "OptimConfig", total_steps: int, offload: bool = False) -> tuple:
    """`optim.name` over the trainable parameters and a LambdaLR stepping once per optimizer step.

    offload: the strategy offloads optimizer states to CPU (DeepSpeed ZeRO-Offload).
    optim.fused: torch's single-kernel AdamW step (torch.optim.AdamW(fused=True)) instead of the
    default multi-tensor one, which makes several passes over the fp32 states and allocates an
    fp32 sqrt(v) as large as the biggest parameter group (ta_train.plan_memory.STEP_TEMP_BYTES).
    Under DeepSpeed ZeRO-1/2/3 the engine steps this same optimizer on its fp32 partitions, after
    its own unscaling and clipping, so fused applies there too; ZeRO-Offload steps DeepSpeedCPUAdam.
    """
    import torch

    cls = adamw_class(cfg.name, offload)
    kwargs = {"adamw_mode": True} if cls.__name__ == "DeepSpeedCPUAdam" else {}
    if cfg.fused and cls is torch.optim.AdamW:
        # Lightning's precision plugins refuse to clip for an optimizer that unscales inside its
        # step; CausalLMModule.configure_gradient_clipping clips instead (and unscales fp16 first).
        kwargs["fused"] = True
    elif cfg.fused:
        log.info("optim.fused does not apply to %s (optim.name=%s): its own step runs", cls.__name__, cfg.name)
    optimizer = cls(
        param_groups(model.named_parameters(), cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **kwargs,
    )
    warmup = warmup_steps(total_steps, cfg.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup, total_steps, cfg.min_lr_ratio)
    )
    return optimizer, scheduler


def keep_built_fused(optimizers: Sequence[Any]) -> None:
    """Keep the AdamW step each optimizer was built with (optim.fused) after a resume.

    torch's load_state_dict takes every param-group setting from the checkpoint, "fused" included,
    so a checkpoint of the other setting switched it silently; a fused-built AdamW stepping unfused
    under the fp16 GradScaler then fails (it still says it unscales inside its step: "Expected
    grad_scale and found_inf to be None"). DeepSpeed's ZeRO optimizers wrap torch's as `.optimizer`
    and load its param groups the same way.

    The step counts (state["step"]) go where the built step reads them, as torch's AdamW creates
    them: a fused (or capturable) one on its parameter's device in fp32, a multi-tensor one on the
    CPU. load_state_dict placed them by the checkpoint's setting (and Lightning moves every state
    tensor but "step"), so a fused kernel on the GPU got CPU counts, and a multi-tensor step read each
    GPU count back with .item().
    """
    import torch

    for optimizer in optimizers:
        base = getattr(optimizer, "optimizer", optimizer)
        if isinstance(base, torch.optim.Adam | torch.optim.AdamW):
            built = bool(getattr(base, "_step_supports_amp_scaling", False))
            for group in base.param_groups:
                group["fused"] = True if built else None  # None: as AdamW() builds it
                on_param = built or bool(group.get("capturable"))
                for p in group["params"]:
                    step = base.state.get(p, {}).get("step")
                    if isinstance(step, torch.Tensor):
                        where = p.device if on_param else torch.device("cpu")
                        if step.device != where:
                            base.state[p]["step"] = step.to(where, torch.float32 if on_param else step.dtype)
