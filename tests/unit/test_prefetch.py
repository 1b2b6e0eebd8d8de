"""data.prefetch: micro-batches collated ahead in a thread are the same batches, in the same order,
and the thread neither hides an error nor outlives a consumer that stops early."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from ta_train.data import FixedBatches, WindowedLoader
from ta_train.prefetch import prefetched
from tests.unit.test_windows import examples


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ta-prefetch"]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_prefetched_epochs_and_a_resume_give_the_inline_batches(depth):
    data = examples(45)
    inline = WindowedLoader(data, micro_size=2, accumulation=3, pad_id=0, seed=4)
    ahead = WindowedLoader(data, micro_size=2, accumulation=3, pad_id=0, seed=4, prefetch=depth)
    for _ in range(2):  # two epochs: the epoch counter advances the same way
        want, got = list(inline), list(ahead)
        assert len(want) == len(got) == len(inline)
        assert all(_same(a, b) for a, b in zip(want, got))
    inline.skip_to(3, 5)
    ahead.skip_to(3, 5)
    assert all(_same(a, b) for a, b in zip(list(inline), list(ahead)))
    val = [FixedBatches(data, 4, 0, prefetch=p) for p in (0, depth)]
    assert all(_same(a, b) for a, b in zip(*(list(v) for v in val)))


def test_an_error_while_collating_reaches_the_consumer():
    def batches():
        yield {"x": 1}
        raise KeyError("labels of example 7")

    it = prefetched(batches(), depth=2)
    assert next(it) == {"x": 1}
    with pytest.raises(KeyError, match="labels of example 7"):
        next(it)


def test_a_consumer_that_stops_early_stops_the_thread():
    made = []

    def endless():
        while True:
            made.append(len(made))
            yield {"i": len(made)}

    before = len(_prefetch_threads())
    it = prefetched(endless(), depth=3)
    assert [next(it)["i"] for _ in range(4)] == [1, 2, 3, 4]
    assert len(_prefetch_threads()) == before + 1
    it.close()  # what Lightning's max_steps stop amounts to once the iterator is dropped
    deadline = time.monotonic() + 5
    while len(_prefetch_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_prefetch_threads()) == before
    assert len(made) <= 4 + 3 + 2  # never more than the queue's depth ahead


def test_batches_are_collated_ahead_while_the_consumer_is_busy():
    produced = threading.Event()

    def batches():
        for i in range(4):
            if i == 3:
                produced.set()  # reached while the consumer has asked for one batch only
            yield {"i": i}

    it = prefetched(batches(), depth=4)
    assert next(it) == {"i": 0}  # starts the thread
    assert produced.wait(timeout=10)  # the rest were made without being asked for
    assert [b["i"] for b in it] == [1, 2, 3]


def test_a_negative_depth_is_refused(make_cfg):
    with pytest.raises(Exception, match="data.prefetch=-1"):
        make_cfg("data.prefetch=-1")
