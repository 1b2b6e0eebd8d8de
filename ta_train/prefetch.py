"""Micro-batches collated ahead of the training step, in a background thread (`data.prefetch`).

Inline, the loop collates each micro-batch (padding, tensors, the trained-row index: about 2.7 ms
for 8 x 2,048 tokens, bench/prefetch_bench.py) after the previous step has returned. The thread
fills a queue of `depth` batches while the main thread waits on the device; the waits release the
GIL. But the thread holds the GIL while it collates, and where the host itself is the bottleneck
(Python queuing kernels) a 50 ms host-bound step took 64-66 ms with it instead of 56, so it is off
by default (depth 0). `pin=True` (training on CUDA) copies each batch into page-locked memory, in the
thread or inline: Lightning's non-blocking transfer then really is asynchronous (from pageable
memory the driver may stage the copy and wait for the stream first).

Order and content are those of the wrapped iterator. An error in the thread is raised in the
consumer with its traceback. A consumer that stops early (max_steps reached, the generator closed
or collected) stops the thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def pin_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with every tensor in page-locked memory (other values as they are)."""
    return {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in batch.items()}


def prefetched(batches: Iterable[dict[str, Any]], depth: int, pin: bool = False) -> Iterator[dict[str, Any]]:
    """Yield `batches` in order, produced up to `depth` ahead in a daemon thread (depth 0: inline)."""
    if depth <= 0:
        for batch in batches:
            yield pin_batch(batch) if pin else batch
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(pin_batch(batch) if pin else batch):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            put(_Failed(error))

    thread = threading.Thread(target=work, name="ta-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
