"""SFT data: read sft.jsonl sources, reject what cannot be trained on, mix, split, batch.

Every record that is not trained on lands in `<run_dir>/data/rejects.jsonl` with its file, line and
reason. Training batches come from `WindowedLoader`, which tags each micro-batch with the number
of trained tokens in its whole accumulation window over all ranks, so the loss can be a token mean
over the optimizer step (see ta_train.losses.window_scale) without a collective per micro-batch.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ta_data.readers.course import read_lines
from ta_data.records import Reject, json_lines
from ta_train.chat import IGNORE_INDEX, EncodingRejected, encode_with_info, from_alpaca, from_sharegpt, pad_right
from ta_train.config import DataConfig, SourceConfig
from ta_train.packing import pad_packed
from ta_train.prefetch import prefetched

log = logging.getLogger(__name__)


@dataclass
class SourceRecords:
    path: str
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based line of each conversation
    rejects: list[Reject] = field(default_factory=list)


def resolve_source_path(source: SourceConfig, work_dir: Path) -> Path:
    """`demo` builds the built-in course's sft.jsonl into work_dir; anything else is a file path."""
    if source.path == "demo":
        from ta_data.demo import build_demo_records, write_sft

        return write_sft(build_demo_records(), work_dir)
    path = Path(source.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data source {source.path!r} (data.sources[].path) does not exist")
    return path


def record_to_messages(record: Any, fmt: str) -> list[dict[str, str]]:
    """One sft.jsonl object -> messages; `fmt` auto picks Alpaca or ShareGPT by its fields."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "auto":
        fmt = "sharegpt" if "conversations" in record else "alpaca" if "instruction" in record else ""
    if fmt == "alpaca":
        return from_alpaca(record)
    if fmt == "sharegpt":
        return from_sharegpt(record)
    raise ValueError("record is neither Alpaca (instruction/output) nor ShareGPT (conversations)")


def read_source(path: Path, fmt: str) -> SourceRecords:
    """Parse one jsonl file; malformed lines (or an unreadable file) become Rejects naming file,
    line and reason."""
    out = SourceRecords(path=str(path))
    lines = read_lines(path, out.rejects)
    for lineno, record in json_lines(lines or [], out.path, out.rejects):
        try:
            out.conversations.append(record_to_messages(record, fmt))
            out.lines.append(lineno)
        except ValueError as err:
            out.rejects.append(Reject(out.path, lineno, str(err), record))
    return out


def split_indices(n: int, val_fraction: float, val_max: int, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, val) split of range(n); val gets round(n x fraction), capped, >= 1 when possible."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(val_max, round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    return sorted(order[n_val:]), sorted(order[:n_val])


def select_val(n: int, val_max: int, seed: int) -> list[int]:
    """At most val_max indices of range(n): all of them when they fit, else a seeded subset, in file order."""
    if n <= val_max:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), max(val_max, 0)))


Item = tuple[str, int, list[dict[str, str]]]  # (file, 1-based line, messages) of one record


def read_val_sources(cfg: DataConfig, work_dir: Path) -> tuple[list[Item], list[Reject], dict[str, dict[str, int]]]:
    """(file, line, messages) of the records of cfg.val_sources, their rejects, and counts per file.

    Read like train sources (a malformed line becomes a Reject naming file, line and reason); each
    file keeps at most cfg.val_max_samples records (select_val, seeded by the file's position). A
    missing file is an error: validating on nothing by accident would hide a broken pipeline.
    """
    items: list[Item] = []
    rejects: list[Reject] = []
    per_source: dict[str, dict[str, int]] = {}
    for k, source in enumerate(cfg.val_sources or []):
        if source.path != "demo" and not Path(source.path).expanduser().is_file():
            raise FileNotFoundError(
                f"validation source {source.path!r} (data.val_sources[{k}].path) does not exist: run `python -m ta_data` "
                "to write it, or set data.val_sources=null to hold out data.val_fraction of each train source instead"
            )
        parsed = read_source(resolve_source_path(source, work_dir), source.format)
        keep = select_val(len(parsed.lines), cfg.val_max_samples, cfg.shuffle_seed + k)
        items += [(parsed.path, parsed.lines[i], parsed.conversations[i]) for i in keep]
        rejects += parsed.rejects
        per_source[parsed.path] = {"records": len(parsed.lines), "rejected": len(parsed.rejects), "val": len(keep)}
    return items, rejects, per_source


def count_overlap(train: Sequence[dict[str, list[int]]], val: Sequence[dict[str, list[int]]]) -> int:
    """Validation examples whose input_ids and labels both equal some training example's (leaked data)."""
    seen = {(tuple(e["input_ids"]), tuple(e["labels"])) for e in train}
    return sum((tuple(e["input_ids"]), tuple(e["labels"])) in seen for e in val)


def apply_weight(items: list[Any], weight: float, seed: int) -> list[Any]:
    """Repeat `items` weight times: the integer part in full, the fraction as a seeded subset."""
    if weight < 0:
        raise ValueError(f"data.sources[].weight must be >= 0, got {weight}")
    whole, frac = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(items, round(len(items) * frac)) if frac else []
    return items * whole + extra


def trained_tokens(example: dict[str, list[int]]) -> int:
    """Tokens that contribute to the loss (labels shift by one: position 0 is never predicted)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


def encode_all(
    tokenizer: Any, conversations: Sequence[tuple[str, int, list[dict[str, str]]]], cfg: DataConfig, train_on: str
) -> tuple[list[dict[str, list[int]]], list[Reject], int]:
    """Encode (file, line, messages) triples; returns examples, rejects and how many were truncated."""
    examples, rejects, truncated = [], [], 0
    for file, line, messages in conversations:
        try:
            ex, info = encode_with_info(tokenizer, messages, max_seq_len=cfg.max_seq_len, train_on=train_on, system=cfg.system_prompt)
        except EncodingRejected as err:
            rejects.append(Reject(file, line, str(err), messages))
            continue
        truncated += any(info.values())
        examples.append(ex)
    return examples, rejects, truncated


class WindowedLoader:
    """Shuffled, rank-sharded micro-batches; each carries its accumulation window's token count.

    Every rank gets the same number of micro-batches. Each batch carries its (epoch, index); the
    module checkpoints the position after the last trained batch and `skip_to` resumes there.

    whole_windows=True (set when the strategy's engine counts the accumulation itself, i.e.
    DeepSpeed) drops the epoch's incomplete tail window, so every epoch is a whole number of
    windows. The tail is whatever the epoch's seeded shuffle puts past the last whole window, so
    each epoch drops a fresh random tail: an example can be dropped in several epochs (or none),
    and the last epoch's tail is not trained at all. Why: Lightning calls
    the DeepSpeed engine's backward() and step() on every micro-batch and the engine steps when
    its own micro-step counter, which runs on across epochs, reaches a multiple of the
    accumulation; Lightning's global_step and LR scheduler advance when the epoch's batch index
    does (`_should_accumulate`: that index restarts each epoch and a short tail window closes
    nothing under DeepSpeed). With whole windows both counters, and the `window_end` marks here,
    fall on the same micro-batches in every epoch (a resume starts the engine's counter at 0, as
    DeepSpeed does not checkpoint it, at the start of a window: checkpoints are written on the
    micro-batch that stepped). Setting the engine's boundary from `window_end`
    (DeepSpeedEngine.set_gradient_accumulation_boundary) instead would make the engine update on the
    tail while Lightning's global_step and LR schedule did not: they would fall one update behind
    the engine every epoch.
    """

    GROUP = 16  # micro-batches per length-sorted group

    def __init__(
        self,
        examples: list[dict[str, list[int]]],
        *,
        micro_size: int,
        accumulation: int,
        pad_id: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        whole_windows: bool = False,
        prefetch: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if len(examples) < micro_size * world_size:
            raise ValueError(
                f"{len(examples)} training examples cannot fill one micro-batch of {micro_size} on each of {world_size} devices"
            )
        self.examples, self.micro_size, self.accumulation = examples, micro_size, accumulation
        self.pad_id, self.seed, self.rank, self.world_size = pad_id, seed, rank, world_size
        self.whole_windows = whole_windows
        self.prefetch, self.pin_memory = prefetch, pin_memory  # ta_train.prefetch
        self.epoch, self._start = 0, 0
        if whole_windows and len(self) == 0:
            raise ValueError(
                f"{len(examples)} training examples cannot fill one accumulation window of {accumulation} micro-batches "
                f"of {micro_size} on each of {world_size} devices (the strategy steps on whole windows only)"
            )
        self._trained: list[int] | None = None  # trained tokens per example, counted on first use

    def __len__(self) -> int:
        per_rank = len(self.examples) // self.world_size
        n = -(-per_rank // self.micro_size)
        return n - n % self.accumulation if self.whole_windows else n

    def skip_to(self, epoch: int, done: int) -> None:
        self.epoch, self._start = epoch, done

    def rank_micro_batches(self, epoch: int) -> list[list[list[int]]]:
        """Every rank's micro-batches (example indices) of `epoch`, in order: [rank][micro-batch].

        Each rank draws the same seeded shuffles, so any rank can compute the others' order.
        Length-grouped: the shuffled examples are cut into groups of GROUP micro-batches, each group
        is sorted by length before being cut into micro-batches (little padding), and the order of
        the micro-batches is shuffled again, so windows still mix short and long examples.
        """
        rng = random.Random(self.seed + epoch)
        order = list(range(len(self.examples)))
        rng.shuffle(order)
        state = rng.getstate()  # every rank shuffles its micro-batches from this same state
        per_rank = len(order) // self.world_size
        group = self.micro_size * self.GROUP
        out = []
        for rank in range(self.world_size):
            mine = order[rank * per_rank : (rank + 1) * per_rank]
            micro: list[list[int]] = []
            for g in range(0, len(mine), group):
                chunk = sorted(mine[g : g + group], key=lambda j: len(self.examples[j]["input_ids"]))
                micro += [chunk[i : i + self.micro_size] for i in range(0, len(chunk), self.micro_size)]
            rng.setstate(state)
            rng.shuffle(micro)
            out.append(micro)
        return out

    def epoch_plan(self, epoch: int) -> list[tuple[list[int], int, bool]]:
        """(example indices, window trained tokens over ALL ranks, closes its window) per micro-batch
        of this rank.

        The window total is what an all-reduce of each rank's window count would give, computed
        from every rank's plan (rank_micro_batches), so no collective runs per micro-batch.
        """
        if self._trained is None:
            self._trained = [trained_tokens(e) for e in self.examples]
        ranks = [micro[: len(self)] for micro in self.rank_micro_batches(epoch)]
        plan = []
        for w in range(0, len(ranks[self.rank]), self.accumulation):
            tokens = sum(self._trained[j] for micro in ranks for batch in micro[w : w + self.accumulation] for j in batch)
            window = ranks[self.rank][w : w + self.accumulation]
            plan.extend((batch, tokens, k == len(window) - 1) for k, batch in enumerate(window))
        return plan

    def dropped_examples(self, epoch: int) -> int:
        """Examples (all ranks) in the tail micro-batches that whole_windows leaves out of `epoch`."""
        return sum(len(batch) for micro in self.rank_micro_batches(epoch) for batch in micro[len(self) :])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Advance the epoch when iteration starts: Lightning stops at len() without exhausting us.
        epoch, start = self.epoch, self._start
        self.epoch, self._start = self.epoch + 1, 0
        yield from prefetched(self._batches(epoch, start), self.prefetch, self.pin_memory)

    def _batches(self, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        """`epoch`'s micro-batches from index `start` on, collated (in the prefetch thread when on)."""
        plan = self.epoch_plan(epoch)
        if self.whole_windows and self.rank == 0 and (dropped := self.dropped_examples(epoch)):
            log.info("epoch %d: %d examples past the last whole accumulation window wait for the next epoch "
                     "(DeepSpeed steps on whole windows only)", epoch, dropped)
        collate = pad_packed if "position_ids" in self.examples[0] else pad_right
        # The metadata are plain Python values, not tensors: Lightning's transfer and DDP's forward
        # (which moves every tensor of the batch to the GPU) leave them on the host, so reading them
        # never waits for the device.
        for i, (idx, window_tokens, window_end) in enumerate(plan[start:], start=start):
            batch = to_tensors(collate([self.examples[j] for j in idx], self.pad_id))
            batch["window_tokens"] = window_tokens  # int: trained tokens of the window, all ranks
            batch["window_end"] = window_end  # bool: the optimizer steps after this one
            batch["position"] = (epoch, i)  # (epoch, micro-batch index): for resuming
            batch["example_ids"] = tuple(idx)  # rows of `examples`: guards name them
            batch["token_counts"] = tuple(self.token_counts(idx))  # for perf/* (see token_counts)
            yield batch

    def token_counts(self, idx: Sequence[int]) -> list[int]:
        """[sum of T, sum of T^2] over the sequences in these rows (T: a sequence's tokens, padding
        excluded; a packed row holds several). Processed tokens, and the attention FLOPs' length term."""
        lengths = [n for j in idx for n in self.examples[j].get("lengths", [len(self.examples[j]["input_ids"])])]
        return [sum(lengths), sum(n * n for n in lengths)]


def shard_evenly(examples: list[dict[str, list[int]]], rank: int, world_size: int) -> list[dict[str, list[int]]]:
    """This rank's share, padded to the same count on every rank with a fully masked example.

    Sharded strategies (ZeRO-3, FSDP) gather parameters in every forward: a rank with one batch
    more than the others would wait forever. The filler has no labels, so it counts nothing.
    """
    share = examples[rank::world_size]
    need = -(-len(examples) // world_size)
    if examples and len(share) < need:
        filler = dict(examples[0], labels=[IGNORE_INDEX] * len(examples[0]["labels"]))
        share = share + [filler] * (need - len(share))
    return share


class FixedBatches:
    """Validation micro-batches in a fixed order (one iterable: Lightning reads a list as many loaders)."""

    def __init__(self, examples: list[dict[str, list[int]]], micro_size: int, pad_id: int,
                 prefetch: int = 0, pin_memory: bool = False) -> None:
        self.examples, self.micro_size, self.pad_id = examples, micro_size, pad_id
        self.prefetch, self.pin_memory = prefetch, pin_memory

    def __len__(self) -> int:
        return -(-len(self.examples) // self.micro_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from prefetched(self._batches(), self.prefetch, self.pin_memory)

    def _batches(self) -> Iterator[dict[str, Any]]:
        for i in range(0, len(self.examples), self.micro_size):
            yield to_tensors(pad_right(self.examples[i : i + self.micro_size], self.pad_id))


def trained_index(labels: "torch.Tensor") -> "torch.Tensor":
    """Flat indices b * T + t of the positions whose next-token label is trained (labels[b, t + 1]
    is not IGNORE_INDEX), in order: the rows ta_train.losses.trained_rows keeps, found on the host.

    labels: (B, T) padded rows, a long tensor; returns (N,) long.
    """
    rows, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows * labels.shape[1] + cols


def to_tensors(collated: dict[str, list[list[int]]]) -> dict[str, Any]:
    """The collated lists as long tensors, plus `trained_index` (trained_index of the labels, (N,)
    long): the loss selects its rows with it, so the device never has to report which rows those are.

    numpy reads the padded Python lists about 14x faster than torch.tensor does (8 x 2,048 tokens x 3
    fields: 1.6 ms instead of 16; bench/prefetch_bench.py), and torch.from_numpy shares its buffer.
    """
    import numpy as np
    import torch

    batch = {k: torch.from_numpy(np.array(v, dtype=np.int64)) for k, v in collated.items()}
    batch["trained_index"] = trained_index(batch["labels"])
    return batch
