"""`CausalLMModule`: supervised fine-tuning of a causal LM, one level under LightningModule."""
from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch

from ta_train.config import PeftMethod, TrainConfig
from ta_train.losses import sum_token_cross_entropy, token_accuracy_counts, window_scale
from ta_train.model import build_model
from ta_train.optim import build_optimizer


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
        self.strict_loading = cfg.peft.method == PeftMethod.none
        self._step_sums = torch.zeros(4, dtype=torch.float64)  # loss_sum, tokens, correct, counted
        self._val_sums = torch.zeros(4, dtype=torch.float64)
        self._data_position: tuple[int, int] | None = None  # (epoch, next micro-batch) to resume at
        self.resume_data_position: tuple[int, int] | None = None

    def configure_model(self) -> None:
        if self.model is None:
            self.model = build_model(self.cfg, self.vocab_size)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, T, V). Packed rows carry position_ids and no attention mask (see packing.py)."""
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
        ).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if "position" in batch:  # after this batch, training resumes at (epoch, index + 1)
            epoch, index = (int(x) for x in batch["position"])
            self._data_position = (epoch, index + 1)
        logits = self(batch)
        loss_sum, n_tokens = sum_token_cross_entropy(logits, batch["labels"], self.cfg.objective.label_smoothing)
        window_tokens = int(self.trainer.strategy.reduce(batch["window_tokens"].float(), reduce_op="sum").item())
        # DeepSpeed's engine divides by its accumulation steps again (Lightning already has)
        engine_divides = self.trainer.strategy.handles_gradient_accumulation
        loss = loss_sum * window_scale(self.accumulation, self.trainer.world_size, window_tokens, engine_divides)
        with torch.no_grad():
            correct, counted = token_accuracy_counts(logits, batch["labels"])
            self._step_sums += torch.stack([loss_sum.detach().double().cpu(), n_tokens.cpu(), correct.cpu(), counted.cpu()])
        if bool(batch.get("window_end", True)):
            self._log_step()
        return loss

    def _log_step(self) -> None:
        """Log the finished optimizer step's token-mean loss and accuracy, tokens and LR.

        Called on the micro-batch that closes an accumulation window (every rank reaches it at the
        same index), not from on_before_optimizer_step: under DeepSpeed Lightning calls that hook
        on every micro-batch.
        """
        sums = self.trainer.strategy.reduce(self._step_sums.clone().to(self.device), reduce_op="sum").cpu()
        self._step_sums.zero_()
        metrics = {
            "train/token_acc": sums[2] / max(sums[3], 1),
            "train/tokens": sums[1],
            "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self.log("train/loss", sums[0] / max(sums[1], 1), prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Total gradient norm before clipping (local gradients: sharded strategies need the engine's)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sums.zero_()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        loss_sum, n_tokens = sum_token_cross_entropy(logits, batch["labels"], label_smoothing=0.0)
        correct, counted = token_accuracy_counts(logits, batch["labels"])
        self._val_sums += torch.stack([loss_sum.double().cpu(), n_tokens.cpu(), correct.cpu(), counted.cpu()])

    def on_validation_epoch_end(self) -> None:
        """val/loss is the plain (unsmoothed) token-mean cross-entropy over the whole val set."""
        sums = self.trainer.strategy.reduce(self._val_sums.clone().to(self.device), reduce_op="sum").cpu()
        if sums[1] > 0:
            self.log_dict({"val/loss": sums[0] / sums[1], "val/token_acc": sums[2] / max(sums[3], 1)}, prog_bar=True, sync_dist=False)

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
        wrappers = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
        keys = set()
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                for w in wrappers:
                    name = name.replace(w, "")
                keys.add(f"model.{name}")
        return keys

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
