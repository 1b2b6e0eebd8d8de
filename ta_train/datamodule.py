"""LightningDataModule over the SFT sources of a `DataConfig`."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L

from ta_train.config import DataConfig
from ta_train.metrics import data_report
from ta_train.packing import pack_examples
from ta_train.data import (
    Reject,
    WindowedLoader,
    apply_weight,
    count_overlap,
    encode_all,
    FixedBatches,
    read_source,
    read_val_sources,
    resolve_source_path,
    shard_evenly,
    split_indices,
    trained_tokens,
)

log = logging.getLogger(__name__)
# A checkpoint stores the data position (CausalLMModule.on_save_checkpoint) and train_dataloader
# skips to it on resume, so Lightning's warning that the loader "is not resumable" (it looks for a
# loader state_dict) does not apply here.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def resume_position(epoch: int, done: int, n_batches: int) -> tuple[int, int]:
    """(epoch, micro-batches to skip) to continue after `done` micro-batches of `epoch`.

    A checkpoint written on an epoch's last micro-batch resumes at the start of the next epoch.
    """
    return (epoch + 1, 0) if done >= n_batches else (epoch, done)


class SFTDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        *,
        micro_size: int,
        accumulation: int,
        train_on: str,
        work_dir: Path,
    ) -> None:
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.micro_size, self.accumulation, self.train_on = micro_size, accumulation, train_on
        self.work_dir = Path(work_dir)
        self.train_examples: list[dict[str, list[int]]] | None = None
        self.val_examples: list[dict[str, list[int]]] = []
        self.stats: dict[str, Any] = {}
        self.report: dict[str, Any] = {}  # ta_train.metrics.data_report of the training split
        self.train_origins: list[str] = []  # "file:line" of each training row (" + "-joined when packed)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is not None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        train_items, val_items, rejects = [], [], []
        per_source = {}
        explicit_val = self.cfg.val_sources is not None  # validate on those files, train on every source whole
        for k, source in enumerate(self.cfg.sources):
            path = resolve_source_path(source, self.work_dir)
            parsed = read_source(path, source.format)
            rejects += parsed.rejects
            items = [(parsed.path, line, conv) for line, conv in zip(parsed.lines, parsed.conversations)]
            if explicit_val:
                tr, va = list(range(len(items))), []
            else:
                tr, va = split_indices(len(items), self.cfg.val_fraction, self.cfg.val_max_samples, self.cfg.shuffle_seed + k)
            train_items += apply_weight([items[i] for i in tr], source.weight, self.cfg.shuffle_seed + k)
            val_items += [items[i] for i in va]
            per_source[str(path)] = {"records": len(items), "rejected": len(parsed.rejects), "train": len(tr), "val": len(va)}
        if explicit_val:
            val_items, val_read_rejects, val_per_source = read_val_sources(self.cfg, self.work_dir)
            rejects += val_read_rejects
        self.train_examples, enc_rejects, n_trunc = encode_all(self.tokenizer, train_items, self.cfg, self.train_on)
        self.val_examples, val_rejects, _ = encode_all(self.tokenizer, val_items, self.cfg, self.train_on)
        rejects += enc_rejects + val_rejects
        dropped = {(r.file, r.line) for r in enc_rejects}
        self.train_origins = [f"{file}:{line}" for file, line, _ in train_items if (file, line) not in dropped]
        self.report = data_report(self.train_examples, [r.reason for r in rejects], self.cfg.max_seq_len)
        val_note = self._explicit_val_note(val_per_source) if explicit_val else {}
        n_unpacked = len(self.train_examples)
        if self.cfg.packing:
            self.train_examples = pack_examples(self.train_examples, self.cfg.max_seq_len)
            self.train_origins = [" + ".join(self.train_origins[i] for i in row["members"]) for row in self.train_examples]
        self.stats = {
            "sources": per_source,
            "train_examples": n_unpacked,
            "train_rows": len(self.train_examples),
            "val_examples": len(self.val_examples),
            "train_tokens": sum(len(e["input_ids"]) for e in self.train_examples),
            "train_trained_tokens": sum(trained_tokens(e) for e in self.train_examples),
            "truncated": n_trunc,
            "rejected": len(rejects),
            **val_note,
        }
        self._write(rejects)
        log.info("data: %s", json.dumps(self.stats))
        if not self.train_examples or not self.report["trained_tokens"]:
            raise ValueError(
                f"refusing to train: the data has no trained tokens ({len(self.train_examples)} examples kept; "
                f"{self.report['rejected_all_masked']} records rejected because every label would be -100: no "
                f"assistant answer, or none left within data.max_seq_len={self.cfg.max_seq_len}; "
                f"{self.report['rejected_other']} rejected for other reasons). Reasons per file and line: "
                f"{self.work_dir / 'rejects.jsonl'}"
            )

    def _explicit_val_note(self, per_source: dict[str, dict[str, int]]) -> dict[str, Any]:
        """Stats of the data.val_sources set; adds its files and size to the data report and warns when
        it is empty (no validation) or repeats training examples. Runs before packing: it compares
        unpacked examples."""
        assert self.train_examples is not None
        n_val, paths = len(self.val_examples), list(per_source)
        overlap = count_overlap(self.train_examples, self.val_examples)
        if not n_val:
            records = sum(c["records"] for c in per_source.values())
            log.warning("no validation: data.val_sources (%s) gave no examples (%d records, %d malformed lines; reasons in "
                        "%s); val/loss will not be logged", ", ".join(paths), records,
                        sum(c["rejected"] for c in per_source.values()), self.work_dir / "rejects.jsonl")
        if overlap:
            log.warning("%d of %d validation examples are identical to a training example (same tokens and labels): "
                        "the validation set leaks training data (%s vs data.sources)", overlap, n_val, ", ".join(paths))
        self.report.update(val_sources=paths, val_examples=n_val, val_overlap_train=overlap)
        return {"val_sources": per_source, "val_overlap_train": overlap}

    def _write(self, rejects: list[Reject]) -> None:
        (self.work_dir / "rejects.jsonl").write_text("".join(r.to_json() + "\n" for r in rejects), encoding="utf-8")
        (self.work_dir / "stats.json").write_text(json.dumps(self.stats, indent=2) + "\n", encoding="utf-8")
        if rejects:
            log.warning("%d records rejected (reasons in %s)", len(rejects), self.work_dir / "rejects.jsonl")

    def train_dataloader(self) -> WindowedLoader:
        assert self.train_examples is not None
        trainer = self.trainer
        loader = WindowedLoader(
            self.train_examples,
            micro_size=self.micro_size,
            accumulation=self.accumulation,
            pad_id=self.pad_id,
            seed=self.cfg.shuffle_seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            whole_windows=bool(trainer and trainer.strategy.handles_gradient_accumulation),  # DeepSpeed: see WindowedLoader
            prefetch=self.cfg.prefetch,
            pin_memory=self._pin_memory(),
        )
        position = getattr(trainer.lightning_module, "resume_data_position", None) if trainer else None
        if position is not None:  # resuming: continue after the last micro-batch the checkpoint trained
            loader.skip_to(*resume_position(position[0], position[1], len(loader)))
        return loader

    def val_dataloader(self) -> FixedBatches:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return FixedBatches(shard_evenly(self.val_examples, rank, world), self.micro_size, self.pad_id,
                            prefetch=self.cfg.prefetch, pin_memory=self._pin_memory())

    def _pin_memory(self) -> bool:
        """Page-locked batches when training on CUDA: the host-to-device copy is then asynchronous."""
        return bool(self.trainer) and self.trainer.strategy.root_device.type == "cuda"
