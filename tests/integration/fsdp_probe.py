"""Script for test_fsdp_cpu: train the tiny model under Lightning's FSDPStrategy on CPU (gloo) and record
what a single-process reference needs to replay the run.

Run as `python tests/integration/fsdp_probe.py RUN_DIR [overrides...]`; Lightning's launcher re-runs this
same command line for rank 1 (LOCAL_RANK=1). Each rank writes `fsdp_rank<N>.pt`:
- `initial`: every parameter of the model, gathered in full, before the first step (rank 0 only);
- `batches`: this rank's micro-batches per optimizer step (input ids, mask, labels, window tokens);
- `grad_norm`: module.grad_norm() per step (what train/grad_norm logs and clipping scales by);
- `gathered_norm`: the naive L2 norm of the step's full gradients, gathered (full_grads);
- `clipped`: the step's full gradients as the optimizer receives them (after clipping), gathered;
- `trainable`: the full trainable weights after each step; `stepping_batches`: the LR schedule's length;
  `vocab_size`: the embeddings' rows.

Lightning 2.6.6 refuses FSDPStrategy on a CPU accelerator in its accelerator connector, by an exact type
check (`type(strategy) is FSDPStrategy`, trainer/connectors/accelerator_connector.py), and on the CPU its
wrap passes device_id=None (root_device.index), for which FSDP looks for an accelerator and raises "FSDP
needs a non-CPU accelerator device". CPUFSDPStrategy, a subclass, wraps the module with the same
arguments and device_id=cpu; and its checkpoints' full state dict is taken without offload_to_cpu
(full_state_dict_context). Everything else is Lightning's real FSDP strategy (gloo process group,
precision plugin, optimizer setup, checkpointing) and ta_train's own build_strategy (wrap policy, sharding).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import lightning.pytorch.strategies as strategies
import torch
from omegaconf import OmegaConf

from tests.conftest import FAST, compose
from ta_train.model import unwrapped_name as clean
from ta_train.train import fit, save_outputs


class CPUFSDPStrategy(strategies.FSDPStrategy):
    """Lightning's FSDPStrategy with the root module wrapped on the CPU device (see the module docstring)."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )
        self.kwargs.pop("auto_wrap_policy", None)  # applied above: Lightning's own wrap step then only finishes setup
        return super()._setup_model(model)


def full_state_dict_context(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Any:
    """Lightning's full state-dict context without offload_to_cpu: torch's FlatParamHandle.to_cpu moves
    the gathered flat parameter (a no-op when it already is on the CPU) and then frees it, so on a CPU
    compute device the state dict's views read freed memory (a segfault). On the CPU there is nothing
    to offload."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))


def full_params(trainer: L.Trainer, pl_module: Any, trainable: bool = True) -> dict[str, torch.Tensor]:
    """Every (trainable) parameter in full on every rank (a collective)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(trainer.strategy.model, writeback=False):
        return {clean(n): p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad or not trainable}


def full_grads(pl_module: Any, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Every trainable parameter's gradient in full on every rank (a collective), from the pieces the
    ranks hold. FSDP shards each flat parameter by contiguous ranges in rank order, so a weight's
    pieces, joined in rank order, are its flattened gradient; under NO_SHARD one rank's piece is whole.
    (Gathered by hand: FSDP.summon_full_params(with_grads=True), called from a second hook of the step,
    failed FSDP's own sharded-gradient check.)"""
    import torch.distributed as dist

    local = {clean(n): None if p.grad is None else p.grad.detach().reshape(-1).clone()
             for n, p in pl_module.model.named_parameters() if p.requires_grad}
    pieces: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, local)
    out = {}
    for name, shape in shapes.items():
        parts = [r[name] for r in pieces if r[name] is not None and r[name].numel()]
        if not parts:
            continue
        whole = parts[0] if parts[0].numel() == shape.numel() else torch.cat(parts)
        out[name] = whole.view(shape)
    return out


class Record(L.Callback):
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rec: dict[str, Any] = {"batches": [], "grad_norm": [], "gathered_norm": [], "clipped": [], "trainable": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        initial = full_params(trainer, pl_module, trainable=False)
        self.shapes = {n: t.shape for n, t in initial.items() if n in full_params(trainer, pl_module)}
        if trainer.global_rank == 0:
            self.rec["initial"] = initial
        self.rec["stepping_batches"] = int(trainer.estimated_stepping_batches)
        self.rec["world_size"] = trainer.world_size
        self.rec["vocab_size"] = pl_module.vocab_size
        clip = pl_module.configure_gradient_clipping  # the gradients AdamW reads: recorded right after clipping

        def clip_and_record(*args: Any, **kwargs: Any) -> None:
            clip(*args, **kwargs)
            self.rec["clipped"].append(full_grads(pl_module, self.shapes))

        pl_module.configure_gradient_clipping = clip_and_record

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: dict[str, Any], batch_idx: int) -> None:
        if len(self.rec["batches"]) <= trainer.global_step:
            self.rec["batches"].append([])
        keep = {k: batch[k].detach().cpu().clone() for k in ("input_ids", "attention_mask", "labels") if batch.get(k) is not None}
        keep["window_tokens"] = int(batch["window_tokens"])
        self.rec["batches"][trainer.global_step].append(keep)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        norm = pl_module.grad_norm()
        self.rec["grad_norm"].append(float(norm))
        grads = full_grads(pl_module, self.shapes)
        total = torch.stack([g.double().square().sum() for g in grads.values()]).sum().sqrt()
        self.rec["gathered_norm"].append(float(total))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        if bool(batch.get("window_end", True)):
            self.rec["trainable"].append(full_params(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        torch.save(self.rec, self.run_dir / f"fsdp_rank{trainer.global_rank}.pt")


def main(run_dir: str, *overrides: str) -> None:
    import lightning.pytorch.strategies.fsdp as lightning_fsdp

    strategies.FSDPStrategy = CPUFSDPStrategy  # read by ta_train.strategy.build_strategy at call time
    lightning_fsdp._get_full_state_dict_context = full_state_dict_context  # checkpoints (see its docstring)
    cfg, _ = compose([*FAST, f"run_dir={run_dir}", *overrides])
    config = OmegaConf.to_object(cfg)
    trainer, module, tokenizer = fit(config, [Record(Path(run_dir))])
    trainer.save_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt")  # as ta_train.train.run does
    save_outputs(config, trainer, module, tokenizer)


if __name__ == "__main__":
    main(*sys.argv[1:])
