"""Accumulation windows of WindowedLoader: all-rank token totals without a collective, and whole
windows when the strategy's engine (DeepSpeed) counts the accumulation itself."""
from __future__ import annotations

import logging
import random

import pytest

from ta_train.chat import IGNORE_INDEX
from ta_train.data import WindowedLoader, trained_tokens


def example(n_prompt: int, n_answer: int) -> dict[str, list[int]]:
    ids = list(range(1, n_prompt + n_answer + 1))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:], "attention_mask": [1] * len(ids)}


def examples(n: int) -> list[dict[str, list[int]]]:
    rng = random.Random(n)
    return [example(rng.randint(1, 6), rng.randint(1, 9)) for _ in range(n)]


def rank_local_plan(data, micro, acc, seed, epoch, rank, world):
    """Naive reference: one rank's plan as each rank computed it alone, with its OWN window count
    (what the module used to all-reduce on every micro-batch)."""
    rng = random.Random(seed + epoch)
    order = list(range(len(data)))
    rng.shuffle(order)
    per_rank = len(order) // world
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    group, batches = micro * WindowedLoader.GROUP, []
    for g in range(0, len(mine), group):
        chunk = sorted(mine[g : g + group], key=lambda j: len(data[j]["input_ids"]))
        batches += [chunk[i : i + micro] for i in range(0, len(chunk), micro)]
    rng.shuffle(batches)
    plan = []
    for w in range(0, len(batches), acc):
        window = batches[w : w + acc]
        local = sum(trained_tokens(data[j]) for b in window for j in b)
        plan += [(b, local, k == len(window) - 1) for k, b in enumerate(window)]
    return plan


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [7, 40, 101])
def test_window_tokens_equal_the_all_reduced_rank_counts(world, n):
    data = examples(n)
    for epoch in (0, 1):
        old = [rank_local_plan(data, 2, 3, 11, epoch, r, world) for r in range(world)]
        for rank in range(world):
            plan = WindowedLoader(data, micro_size=2, accumulation=3, pad_id=0, seed=11, rank=rank, world_size=world).epoch_plan(epoch)
            assert [(b, end) for b, _, end in plan] == [(b, end) for b, _, end in old[rank]]  # same batches, same windows
            all_reduced = [sum(old[r][i][1] for r in range(world)) for i in range(len(plan))]
            assert [tokens for _, tokens, _ in plan] == all_reduced


def test_the_batches_carry_the_all_rank_window_total():
    data = examples(30)
    loaders = [WindowedLoader(data, micro_size=2, accumulation=2, pad_id=0, seed=3, rank=r, world_size=2) for r in range(2)]
    per_rank = [list(loader) for loader in loaders]
    for i in range(len(per_rank[0])):
        w = i - i % 2
        counted = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for batches in per_rank for b in batches[w : w + 2])
        assert int(per_rank[0][i]["window_tokens"]) == int(per_rank[1][i]["window_tokens"]) == counted


def boundaries(loader: WindowedLoader, epochs: int) -> dict[str, list[bool]]:
    """Per micro-batch over `epochs` epochs: the data's window_end, the step of Lightning's fit loop
    under DeepSpeed (its epoch batch index reaches a multiple of the accumulation, the index restarts
    each epoch), and the DeepSpeed engine's boundary (its own micro-step counter runs across epochs)."""
    acc, ends, lightning, engine, micro_steps = loader.accumulation, [], [], [], 0
    for epoch in range(epochs):
        plan = loader.epoch_plan(epoch)[: len(loader)]  # Lightning stops at len(loader)
        for i, (_, _, end) in enumerate(plan):
            ends.append(end)
            lightning.append((i + 1) % acc == 0)
            engine.append((micro_steps + 1) % acc == 0)
            micro_steps += 1
    return {"data": ends, "lightning": lightning, "engine": engine}


def test_without_whole_windows_the_deepspeed_engine_drifts_after_a_short_tail():
    loader = WindowedLoader(examples(22), micro_size=2, accumulation=3, pad_id=0, seed=0)  # 11 micro-batches: 3 + 3 + 3 + 2
    b = boundaries(loader, 2)
    assert b["data"] != b["engine"] and b["lightning"] != b["engine"] and b["data"][10]  # the tail closes a window


@pytest.mark.parametrize("world", [1, 2])
def test_whole_windows_line_up_data_lightning_and_the_engine_in_every_epoch(world, caplog):
    data = examples(45)
    loaders = [WindowedLoader(data, micro_size=2, accumulation=3, pad_id=0, seed=4, rank=r, world_size=world, whole_windows=True)
               for r in range(world)]
    n_micro = -(-(45 // world) // 2)
    assert len(loaders[0]) == n_micro - n_micro % 3 and len(loaders[0]) % 3 == 0
    b = boundaries(loaders[0], 3)
    assert b["data"] == b["lightning"] == b["engine"] and sum(b["data"]) == 3 * len(loaders[0]) // 3
    with caplog.at_level(logging.INFO, logger="ta_train.data"):
        batches = [list(loader) for loader in loaders]
    used = {j for per_rank in batches for batch in per_rank for j in batch["example_ids"]}
    dropped = loaders[0].dropped_examples(0)
    assert dropped > 0 and len(used) == (45 // world) * world - dropped
    assert f"epoch 0: {dropped} examples past the last whole accumulation window" in caplog.text
    nxt = {j for rank in range(world) for batch, _, _ in loaders[rank].epoch_plan(1) for j in batch}
    tail = {j for micro in loaders[0].rank_micro_batches(0) for batch in micro[len(loaders[0]) :] for j in batch}
    assert len(tail) == dropped and not tail & used and tail & nxt  # this tail is not trained this epoch; the next epoch draws its own
    for per_rank in zip(*batches):  # every rank sees the same all-rank window totals
        assert len({int(b["window_tokens"]) for b in per_rank}) == 1


def test_whole_windows_refuse_data_smaller_than_one_window():
    with pytest.raises(ValueError, match="one accumulation window of 4 micro-batches"):
        WindowedLoader(examples(6), micro_size=2, accumulation=4, pad_id=0, seed=0, whole_windows=True)


def test_whole_windows_drop_a_fresh_random_tail_each_epoch():
    """What the WindowedLoader docstring says: the tail is not carried over; each epoch's shuffle picks
    its own, so an example can be dropped in several epochs and another in none."""
    loader = WindowedLoader(examples(45), micro_size=2, accumulation=3, pad_id=0, seed=4, whole_windows=True)
    tails = [{j for batch in loader.rank_micro_batches(e)[0][len(loader) :] for j in batch} for e in range(20)]
    assert all(len(t) == loader.dropped_examples(e) > 0 for e, t in enumerate(tails))
    for e, tail in enumerate(tails):  # the epoch's trained examples are exactly the others
        trained = {j for batch, _, _ in loader.epoch_plan(e) for j in batch}
        assert trained == set(range(45)) - tail
    times = [sum(j in t for t in tails) for j in range(45)]
    assert len({frozenset(t) for t in tails}) > 1 and max(times) >= 2 and min(times) == 0
