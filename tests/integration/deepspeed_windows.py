"""A real DeepSpeed engine driven the way Lightning drives it, over WindowedLoader epochs
(run in its own process by tests/integration/test_deepspeed_windows.py).

    python -m tests.integration.deepspeed_windows

Lightning's DeepSpeed path calls engine.backward() and engine.step() on every micro-batch; the
engine updates when its own micro-step counter reaches a multiple of gradient_accumulation_steps.
For each loader (whole windows or not) this prints, per micro-batch over 3 epochs, the data's
window_end and whether the engine updated (its global_steps advanced), as one JSON line.
"""
from __future__ import annotations

import json
import os
import random

import torch

from ta_train.chat import IGNORE_INDEX
from ta_train.data import WindowedLoader

ACC, MICRO = 3, 2


def examples(n: int) -> list[dict[str, list[int]]]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        ids = list(range(1, rng.randint(3, 9)))
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] + ids[1:], "attention_mask": [1] * len(ids)})
    return out


def drive(whole_windows: bool) -> dict[str, list[bool]]:
    import deepspeed

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": ACC, "zero_optimization": {"stage": 0}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config)
    loader = WindowedLoader(examples(22), micro_size=MICRO, accumulation=ACC, pad_id=0, seed=0, whole_windows=whole_windows)
    ends, updates = [], []
    for _ in range(3):  # Lightning iterates len(loader) micro-batches per epoch
        for batch in loader:
            x = batch["input_ids"][:, :4].float().reshape(-1, 4) if batch["input_ids"].shape[1] >= 4 else torch.ones(MICRO, 4)
            before = engine.global_steps
            engine.backward(engine(x).pow(2).mean())
            engine.step()
            ends.append(bool(batch["window_end"]))
            updates.append(engine.global_steps > before)
    return {"window_end": ends, "engine_update": updates}


def main() -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", "29543"),
                       "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    print("RESULT " + json.dumps({"whole": drive(True), "tail": drive(False)}))


if __name__ == "__main__":
    main()
