"""`CausalLMModule`: supervised fine-tuning of a causal LM, one level under LightningModule."""
from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from ta_train import attention
from ta_train.config import PeftMethod, TrainConfig
from ta_train.losses import sum_token_cross_entropy, token_accuracy_counts, trained_rows, window_scale
from ta_train.metrics import TokenAccuracy, host_scalar
from ta_train.model import build_model, unwrapped_name
from ta_train.optim import build_optimizer, keep_built_fused

log = logging.getLogger(__name__)
# configure_gradient_clipping below leaves DeepSpeed's clipping to its engine, so Lightning's
# warning that an overridden hook "will not actually clip gradients" there does not apply
warnings.filterwarnings("ignore", message="Since DeepSpeed handles gradient clipping internally")


@dataclass
class StepStats:
    """The optimizer step whose accumulation window just closed: sums over all ranks, ids of this rank.

    Read by the guards (ta_train.guards) and the perf monitor (ta_train.throughput).
    """

    step: int  # global_step of the update these micro-batches feed
    loss: float  # token-mean training loss of the step (0.0 when it had no trained token)
    trained_tokens: int
    tokens: int  # processed tokens, padding excluded
    tokens_sq: int  # sum of squared sequence lengths (attention FLOPs)
    example_ids: list[int] = field(default_factory=list)  # rows of the train examples in this window
    nonfinite_ids: list[int] = field(default_factory=list)  # rows of micro-batches whose loss was NaN/inf


def combine_shard_norms(local_norm: torch.Tensor, reduce_sum: Any, replicas: int = 1) -> torch.Tensor:
    """The global L2 norm from each rank's norm of its gradient shard: sqrt(sum over ranks of norm^2
    / replicas), where each shard is held by `replicas` ranks (shard_replicas).

    Every rank gets the same value, so guards that stop on a non-finite norm stop on every rank
    together (a stop on one rank alone would leave the others waiting in the next collective).
    """
    return (reduce_sum(local_norm.float() ** 2) / replicas).sqrt()


def shard_replicas(sharding: str, world_size: int, num_nodes: int) -> int:
    """How many ranks hold each FSDP gradient shard; 0 when every rank holds all gradients.

    NO_SHARD all-reduces whole gradients (the local norm is the global one); the hybrid strategies
    shard within a node and replicate across nodes (ta_train.strategy passes no custom groups), so
    summing every rank's squared norm would count each shard num_nodes times.
    """
    if world_size <= 1 or sharding == "NO_SHARD":
        return 0
    return max(num_nodes, 1) if "HYBRID" in sharding else 1


# Batch entries that describe the micro-batch rather than feed the model (ta_train.data): plain
# Python values, not tensors, so no transfer (Lightning's, DDP's forward) moves them and the step
# reads them without waiting for the device.
HOST_KEYS = ("window_tokens", "window_end", "position", "example_ids", "token_counts")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the model's forward (and of its decoder body's, under perf.fused_ce)."""
    return {
        "input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask"),
        "position_ids": batch.get("position_ids"), "use_cache": False,
    }


class CausalLMModule(L.LightningModule):
    """Token-weighted SFT loss over each optimizer step, AdamW + warmup-cosine, train/val metrics.

    The network is built in `configure_model`, so ZeRO-3 and FSDP can shard it as it is created.
    Under PEFT, checkpoints hold only the trainable (adapter) weights: the frozen base is rebuilt
    from its source on resume.
    """

    def __init__(self, cfg: TrainConfig, accumulation: int, vocab_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.accumulation = accumulation
        self.vocab_size = vocab_size
        self.model: Any = None
        self.attention_choice: attention.Choice | None = None  # perf.sdpa_backends, settled at fit start
        self.strict_loading = cfg.peft.method == PeftMethod.none
        self._step_sums: torch.Tensor | None = None  # loss_sum, trained of the open window: on the device
        self._step_counts = [0, 0]  # tokens, tokens^2 of the open window: host ints (batch metadata)
        self._window_finite: list[tuple[torch.Tensor, list[int]]] = []  # (loss is finite: device bool, ids)
        self._val_sums = torch.zeros(2, dtype=torch.float64)  # loss_sum, trained
        self.train_token_acc = TokenAccuracy()  # counts over the open accumulation window
        self.val_token_acc = TokenAccuracy()
        self.last_step: StepStats | None = None
        self._micro_batches = 0  # training_step calls: the grad-norm cache key
        self._grad_norm_cache: tuple[int, torch.Tensor | None] = (-1, None)
        self._grad_norm_host: tuple[int, torch.Tensor | None] = (-1, None)  # its host copy (grad_norm_host)
        self._data_position: tuple[int, int] | None = None  # (epoch, next micro-batch) to resume at
        self.resume_data_position: tuple[int, int] | None = None
        self._fused: tuple[Any, Any] | None = None  # (decoder body, lm_head) under perf.fused_ce, else None
        self._fused_checked = False  # _fused is decided on the first scored batch (the model exists by then)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = build_model(self.cfg, self.vocab_size)

    def on_fit_start(self) -> None:
        """perf.sdpa_backends: ask PyTorch on the training device which kernel runs, and log it."""
        if self.cfg.perf.sdpa_backends and str(self.model.config._attn_implementation).startswith(attention.PREFIX):
            self.attention_choice = attention.settle(
                self.model, self.cfg.perf.sdpa_backends, precision=self.cfg.precision.name,
                seq_len=self.cfg.data.max_seq_len, device=self.trainer.strategy.root_device,
            )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, T, V). Packed rows carry position_ids and no attention mask (see packing.py)."""
        return self.model(**model_inputs(batch)).logits

    def _score(self, batch: dict[str, Any], label_smoothing: float) -> tuple[torch.Tensor, ...]:
        """(loss_sum, n_tokens, correct, total) over the batch's trained next-token positions.

        Unfused: the model's full logits (B, T, V), ta_train.losses. With perf.fused_ce: the decoder
        body's hidden states, the trained rows of them, and ta_train.fused_ce's chunked lm_head +
        cross-entropy (no logits tensor; the same numbers up to float rounding).
        """
        labels, index = batch["labels"], batch.get("trained_index")  # index: trained rows, found on the host
        if not self._fused_checked:
            self._fused, self._fused_checked = self._resolve_fused(), True
        if self._fused is None:
            logits = self(batch)
            loss_sum, n_tokens = sum_token_cross_entropy(logits, labels, label_smoothing, index)
            with torch.no_grad():
                correct, total = token_accuracy_counts(logits.detach(), labels)
            return loss_sum, n_tokens, correct, total
        from ta_train.fused_ce import fused_linear_cross_entropy

        body, head = self._fused
        hidden = body(**model_inputs(batch)).last_hidden_state  # the inputs forward() gives the whole model
        rows, targets = trained_rows(hidden, labels, index)  # (N, H): the shift works on any per-position tensor
        loss_sum, n_tokens, correct = fused_linear_cross_entropy(
            rows, head.weight, targets, head.bias, label_smoothing, self.cfg.perf.ce_chunk_rows
        )
        return loss_sum, n_tokens, correct, n_tokens

    def _resolve_fused(self) -> tuple[Any, Any] | None:
        """(decoder body, lm_head) when perf.fused_ce is on and applies to this model, else None (logged)."""
        if not self.cfg.perf.fused_ce:
            return None
        from ta_train.fused_ce import fused_head

        parts, why = fused_head(self.model, self.cfg.strategy.name, self.cfg.strategy.zero_stage, self.cfg.model.plain_lm_head)
        if parts is None:
            log.warning("perf.fused_ce: falling back to full logits: %s", why)
        else:
            log.info("perf.fused_ce: chunked lm_head + cross-entropy, %d rows per chunk (%s)", self.cfg.perf.ce_chunk_rows, why)
        return parts

    @torch.profiler.record_function("ta.training_step")  # profiler ranges: bench/step_profile.py
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """No host-device synchronization here except on the window's last micro-batch (_log_step):
        the metadata (HOST_KEYS) are Python values, the trained rows are selected by the host-made
        `trained_index`, n_tokens is filled on the device, and the step's sums stay on the device
        until then."""
        if "position" in batch:  # after this batch, training resumes at (epoch, index + 1)
            epoch, index = batch["position"]
            self._data_position = (int(epoch), int(index) + 1)
        loss_sum, n_tokens, correct, total = self._score(batch, self.cfg.objective.label_smoothing)
        window_tokens = int(batch["window_tokens"])  # all ranks' tokens (ta_train.data.WindowedLoader)
        # DeepSpeed's engine divides by its accumulation steps again (Lightning already has)
        engine_divides = self.trainer.strategy.handles_gradient_accumulation
        loss = loss_sum * window_scale(self.accumulation, self.trainer.world_size, window_tokens, engine_divides)
        self._micro_batches += 1
        with torch.no_grad():
            self.train_token_acc.update_counts(correct, total)
            micro_loss = loss_sum.detach().double()
            sums = torch.stack([micro_loss, n_tokens.double()])
            self._step_sums = sums if self._step_sums is None else self._step_sums + sums
            if "token_counts" in batch:
                self._step_counts = [a + int(b) for a, b in zip(self._step_counts, batch["token_counts"])]
            self._window_finite.append((torch.isfinite(micro_loss), list(batch.get("example_ids", ()))))
        if bool(batch.get("window_end", True)):
            self._log_step()
        return loss

    def _log_step(self) -> None:
        """Log the finished optimizer step's token-mean loss and accuracy, tokens and LR.

        Called on the micro-batch that closes an accumulation window (every rank reaches it at the
        same index), not from on_before_optimizer_step: under DeepSpeed Lightning calls that hook
        on every micro-batch.

        The one host-device synchronization of the window: the device sums, the token-accuracy
        counts and the host counts are reduced over ranks in one collective and come back, with
        each micro-batch's finite flag, in one transfer. Everything logged is then a host value
        (metrics.host_scalar), so the logger reads nothing back from the device.
        """
        step_sums = self._step_sums if self._step_sums is not None else torch.zeros(2, dtype=torch.float64, device=self.device)
        counts = torch.tensor(self._step_counts, dtype=torch.float64)
        acc = self.train_token_acc  # its correct / total states, summed over ranks here (as compute() would)
        device = step_sums.device  # where the loss ran (under ZeRO-3 `self.device` may not say)
        local = torch.cat([step_sums, counts.to(device, non_blocking=True),
                           acc.correct.to(device).reshape(1), acc.total.to(device).reshape(1)])
        sums = self.trainer.strategy.reduce(local.double(), reduce_op="sum")
        finite = torch.stack([f for f, _ in self._window_finite]).double() if self._window_finite else sums[:0]
        host = torch.cat([sums, finite.to(sums.device)]).cpu()
        sums, finite = host[:6], host[6:]
        window_ids = [j for _, ids in self._window_finite for j in ids]
        window_bad = [j for ok, (_, ids) in zip(finite.tolist(), self._window_finite) if not ok for j in ids]
        self._step_counts = [0, 0]
        self._step_sums, self._window_finite = None, []
        acc.reset()
        token_acc = sums[4] / max(float(sums[5]), 1.0)
        loss = sums[0] / max(sums[1], 1)
        self.last_step = StepStats(
            step=self.global_step, loss=float(loss), trained_tokens=int(sums[1]), tokens=int(sums[2]),
            tokens_sq=int(sums[3]), example_ids=window_ids, nonfinite_ids=window_bad,
        )
        metrics = {
            "train/token_acc": token_acc,
            "train/tokens": sums[1],
            "train/lr": host_scalar(self.trainer.optimizers[0].param_groups[0]["lr"]),
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)

    def grad_norm(self) -> torch.Tensor | None:
        """Total L2 norm of the gradients before clipping; None when no parameter has a gradient.

        The one place the norm is computed (logged as train/grad_norm, read by the guards), cached
        per micro-batch. Local gradients; under DeepSpeed the engine holds them (None here) and
        on_train_batch_end logs the engine's global norm instead.
        """
        if self._grad_norm_cache[0] == self._micro_batches:
            return self._grad_norm_cache[1]
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        with torch.profiler.record_function("ta.grad_norm"):  # the norm clip_grad_norm_ computes (foreach)
            norm = torch.nn.utils.get_total_norm(grads, 2.0).float() if grads else None
        replicas = self._shard_replicas()
        if replicas:  # FSDP: each rank holds a slice; every rank must join the reduce
            local = norm if norm is not None else torch.zeros((), device=self.device)
            norm = combine_shard_norms(local, lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"), replicas)
        self._grad_norm_cache = (self._micro_batches, norm)
        return norm

    def grad_norm_host(self) -> torch.Tensor | None:
        """grad_norm() read back to the host once per micro-batch: the one read of the optimizer
        step after backward (guards, train/grad_norm). Read there, before the update is launched,
        nothing logged at the step's end makes the host wait for the update."""
        if self._grad_norm_host[0] != self._micro_batches:
            norm = self.grad_norm()
            self._grad_norm_host = (self._micro_batches, None if norm is None else norm.detach().cpu())
        return self._grad_norm_host[1]

    def _shard_replicas(self) -> int:
        """shard_replicas under FSDP (clipping scales by this norm too); 0 for other strategies."""
        from lightning.pytorch.strategies import FSDPStrategy

        if not isinstance(self.trainer.strategy, FSDPStrategy):
            return 0
        return shard_replicas(self.cfg.strategy.fsdp_sharding, self.trainer.world_size, self.trainer.num_nodes)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.trainer.strategy.handles_gradient_accumulation:  # DeepSpeed: see on_train_batch_end
            return
        norm = self.grad_norm_host()
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, rank_zero_only=True)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Under 16-mixed with an optimizer that unscales inside its step (optim.fused), unscale right
        after the closure's backward: Lightning's AMP plugin skips its own unscale_ for such an
        optimizer, and the hooks after the closure (grad_norm, the guards, clipping) need true
        gradients. GradScaler.step then sees the optimizer unscaled: it hands the fused step the
        inf flag and no scale, so an overflowing step is still skipped (torch/amp/grad_scaler.py)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer under LightningOptimizer
        if scaler is not None and optimizer_closure is not None and getattr(inner, "_step_supports_amp_scaling", False):
            closure = optimizer_closure

            def optimizer_closure() -> Any:
                result = closure()
                if result is not None:  # None: backward was skipped, nothing to unscale (as Lightning's plugin)
                    scaler.unscale_(inner)
                return result

        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        """Clip to trainer.gradient_clip_val by the global L2 norm grad_norm() already computed.

        The same scaling as torch.nn.utils.clip_grad_norm_ (min(1, clip / (norm + 1e-6)), foreach),
        without its second pass over the gradients for the norm; under FSDP the norm is the global
        one over the shards. Lightning's own clipping refuses an optimizer that unscales inside its
        step (fused AdamW) under mixed precision. DeepSpeed clips in its engine (gradient_clipping
        of deepspeed.json) and value clipping is Lightning's: both are left to Lightning.
        """
        if self.trainer.strategy.handles_gradient_accumulation or gradient_clip_algorithm == "value":
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if not gradient_clip_val:
            return
        norm = self.grad_norm()
        if norm is not None:
            with torch.profiler.record_function("ta.clip"):
                torch.nn.utils.clip_grads_with_norm_([p for p in self.parameters() if p.grad is not None], gradient_clip_val, norm)

    def on_train_start(self) -> None:
        keep_built_fused(self.trainer.optimizers)  # a resume loads the checkpoint's param-group settings

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Under DeepSpeed log the engine's global norm (ZeRO shards the gradients, so a local norm
        is wrong), read after the engine stepped on the window's last micro-batch."""
        if not (self.trainer.strategy.handles_gradient_accumulation and bool(batch.get("window_end", True))):
            return
        from ta_train.zero import engine_grad_norm

        norm = engine_grad_norm(self.trainer)
        if norm is not None:
            self.log("train/grad_norm", host_scalar(norm), on_step=True, on_epoch=False, rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()
        self.val_token_acc.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss_sum, n_tokens, correct, total = self._score(batch, label_smoothing=0.0)
        self.val_token_acc.update_counts(correct, total)
        self._val_sums += torch.stack([loss_sum.double().cpu(), n_tokens.cpu().double()])

    def on_validation_epoch_end(self) -> None:
        """val/loss is the plain (unsmoothed) token-mean cross-entropy over the whole val set."""
        acc = self.val_token_acc  # its correct / total states ride the same reduce (as in _log_step)
        device = self.trainer.strategy.root_device  # where the collective runs
        local = torch.cat([self._val_sums.to(device), acc.correct.to(device).reshape(1).double(),
                           acc.total.to(device).reshape(1).double()])
        sums = self.trainer.strategy.reduce(local, reduce_op="sum").cpu()
        if sums[1] > 0:
            token_acc = sums[2] / max(float(sums[3]), 1.0)
            self.log_dict({"val/loss": sums[0] / sums[1], "val/token_acc": token_acc}, prog_bar=True, sync_dist=False)
        acc.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches)
        st = self.cfg.strategy
        offload = st.name == "deepspeed" and st.offload_optimizer
        optimizer, scheduler = build_optimizer(self.model, self.cfg.optim, total, offload=offload)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.cfg.peft.method != PeftMethod.none:
            trainable = self._trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["data_position"] = self._data_position
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        }

    def _trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable weights (wrapper prefixes such as FSDP's removed)."""
        return {f"model.{unwrapped_name(n)}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore RNG streams so dropout on the next step matches an uninterrupted run."""
        if self.cfg.peft.method != PeftMethod.none and self.model is not None:
            missing = self._trainable_keys() - set(checkpoint["state_dict"])
            if missing:
                raise KeyError(f"checkpoint lacks {len(missing)} trainable weights, e.g. {sorted(missing)[:3]}")
        self.resume_data_position = checkpoint.get("data_position")
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            random.setstate(rng["python"])
