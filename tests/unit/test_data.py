"""Reading sft.jsonl (rejects with file, line and reason), splitting, mixing and windowed batches."""
from __future__ import annotations

import json

import pytest
import torch

from ta_train.chat import IGNORE_INDEX, pad_right
from ta_train.data import (FixedBatches, WindowedLoader, apply_weight, read_source, split_indices, to_tensors, trained_index,
                           trained_tokens)
from ta_train.packing import pad_packed


def test_malformed_records_are_rejected_with_file_line_and_reason(tmp_path):
    path = tmp_path / "sft.jsonl"
    lines = [
        json.dumps({"instruction": "q", "input": "", "output": "a", "meta": {}}),
        "{not json",
        json.dumps({"conversations": [{"role": "user", "content": "q"}]}),
        "",
        json.dumps({"prompt": "neither"}),
        json.dumps({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parsed = read_source(path, "auto")
    assert len(parsed.conversations) == 2 and parsed.lines == [1, 6]
    reasons = {r.line: r.reason for r in parsed.rejects}
    assert set(reasons) == {2, 3, 5}
    assert "invalid JSON" in reasons[2]
    assert "no non-empty assistant turn" in reasons[3]
    assert "neither Alpaca" in reasons[5]
    assert all(r.file == str(path) for r in parsed.rejects)


def test_split_is_seeded_disjoint_and_complete():
    tr, va = split_indices(50, 0.1, 100, seed=3)
    assert len(va) == 5 and not set(tr) & set(va) and sorted(tr + va) == list(range(50))
    assert split_indices(50, 0.1, 100, seed=3) == (tr, va)
    assert len(split_indices(50, 0.5, 7, seed=0)[1]) == 7
    assert len(split_indices(5, 0.05, 10, seed=0)[1]) == 1


def test_weight_repeats_and_subsamples():
    items = list(range(10))
    assert apply_weight(items, 1.0, 0) == items
    twice_half = apply_weight(items, 2.5, 0)
    assert len(twice_half) == 25 and twice_half[:20] == items * 2
    assert len(apply_weight(items, 0.3, 0)) == 3
    with pytest.raises(ValueError):
        apply_weight(items, -1, 0)


def example(n_prompt, n_answer):
    ids = list(range(1, n_prompt + n_answer + 1))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:], "attention_mask": [1] * len(ids)}


def test_windows_carry_their_trained_token_count():
    examples = [example(3, k) for k in range(1, 12)]
    loader = WindowedLoader(examples, micro_size=2, accumulation=3, pad_id=0, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    for w in range(0, 6, 3):
        window = batches[w : w + 3]
        counted = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
        assert all(int(b["window_tokens"]) == counted for b in window)
        assert [bool(b["window_end"]) for b in window] == [False, False, True]
    seen = sorted(len(e) for b in batches for e in b["input_ids"].tolist())
    assert len(seen) == 11


def test_ranks_get_equal_disjoint_shards_and_epochs_reshuffle():
    examples = [example(2, k % 5 + 1) for k in range(21)]
    plans = [WindowedLoader(examples, micro_size=2, accumulation=2, pad_id=0, seed=1, rank=r, world_size=2).epoch_plan(0) for r in range(2)]
    idx = [sorted(j for batch, _, _ in plan for j in batch) for plan in plans]
    assert len(idx[0]) == len(idx[1]) == 10 and not set(idx[0]) & set(idx[1])
    loader = WindowedLoader(examples, micro_size=2, accumulation=2, pad_id=0, seed=1)
    assert loader.epoch_plan(0) != loader.epoch_plan(1)


def test_skip_to_resumes_mid_epoch():
    examples = [example(2, k % 7 + 1) for k in range(16)]
    loader = WindowedLoader(examples, micro_size=2, accumulation=2, pad_id=0, seed=5)
    full = [b["input_ids"].tolist() for b in loader]
    loader.skip_to(0, 3)
    rest = [b["input_ids"].tolist() for b in loader]
    assert rest == full[3:]
    assert loader.epoch == 1


def test_trained_tokens_skip_position_zero():
    assert trained_tokens({"labels": [5, IGNORE_INDEX, 7, 8]}) == 2


def test_a_new_iteration_reshuffles_even_if_the_last_one_stopped_early():
    examples = [example(2, k % 7 + 1) for k in range(16)]
    loader = WindowedLoader(examples, micro_size=2, accumulation=2, pad_id=0, seed=5)
    first = iter(loader)
    head = [next(first)["input_ids"].tolist() for _ in range(len(loader))]  # stop at len(), like Lightning
    second = [b["input_ids"].tolist() for b in loader]
    assert head != second and loader.epoch == 2


def test_resume_position_after_an_epochs_last_batch_starts_the_next_epoch():
    from ta_train.datamodule import resume_position

    assert resume_position(0, 3, 8) == (0, 3)
    assert resume_position(0, 8, 8) == (1, 0)
    assert resume_position(2, 0, 8) == (2, 0)


def test_validation_shards_are_even_and_the_filler_counts_nothing():
    from ta_train.data import shard_evenly

    examples = [example(2, k + 1) for k in range(5)]
    shards = [shard_evenly(examples, r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    assert sum(trained_tokens(e) for s in shards for e in s) == sum(trained_tokens(e) for e in examples)
    assert shard_evenly([], 0, 2) == []


def test_a_file_that_is_not_utf8_is_rejected_whole(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes('{"instruction": "学习率", "output": "步长"}\n'.encode("gbk"))
    parsed = read_source(path, "auto")
    assert parsed.conversations == []
    assert len(parsed.rejects) == 1 and parsed.rejects[0].line is None and "not UTF-8" in parsed.rejects[0].reason


def naive_trained_index(labels):
    """Flat b * T + t of every position whose next label is trained, by a plain loop over the tensor."""
    B, T = labels.shape
    return [b * T + t for b in range(B) for t in range(T - 1) if int(labels[b, t + 1]) != IGNORE_INDEX]


def test_batches_carry_the_flat_index_of_their_trained_positions():
    examples = [example(3, k) for k in range(1, 12)]
    for batch in [*WindowedLoader(examples, micro_size=2, accumulation=3, pad_id=0, seed=0), *FixedBatches(examples, 3, 0)]:
        assert batch["trained_index"].tolist() == naive_trained_index(batch["labels"])
    packed = pad_packed([{"input_ids": [1] * 5, "labels": [IGNORE_INDEX, 4, IGNORE_INDEX, IGNORE_INDEX, 6], "position_ids": [0, 1, 0, 1, 2]},
                         {"input_ids": [1] * 3, "labels": [IGNORE_INDEX, 2, 3], "position_ids": [0, 1, 2]}], 0)
    labels = torch.tensor(packed["labels"])
    assert trained_index(labels).tolist() == [0, 3, 5, 6] == naive_trained_index(labels)
    assert trained_index(torch.full((2, 4), IGNORE_INDEX)).tolist() == []
    assert trained_index(torch.zeros(0, 4, dtype=torch.long)).tolist() == []


def test_to_tensors_equals_torch_tensor_of_the_lists():
    # numpy reads the lists (faster than torch.tensor); the result must be the same long tensors
    examples = [example(3, k) for k in (5, 9, 2)]
    collated = pad_right(examples, 0)
    batch = to_tensors(collated)
    for key, rows in collated.items():
        assert batch[key].dtype == torch.long and torch.equal(batch[key], torch.tensor(rows))
    assert batch["trained_index"].dtype == torch.long
    assert batch["trained_index"].tolist() == naive_trained_index(torch.tensor(collated["labels"]))
    with pytest.raises(ValueError):  # ragged rows are a collation bug: loud, never a 1-D object array
        to_tensors({"input_ids": [[1, 2], [3]], "labels": [[1, 2], [3]]})
