"""Host time per training step with micro-batches collated inline vs ahead (`data.prefetch`).

    nice -n 10 python bench/prefetch_bench.py                        # 8 x 2,048 tokens, 200 ms device step
    nice -n 10 python bench/prefetch_bench.py --micro 16 --device-ms 100 --depths 0,1,2
    nice -n 10 python bench/prefetch_bench.py --host-ms 50 --device-ms 0   # the host is the bottleneck

The real `WindowedLoader` (padding, tensors, trained-row index) over random examples of 1,500-2,048
tokens. A training step is simulated as the host waiting for the device: a GIL-releasing sleep of
--device-ms, which is what the host does in a CUDA sync at the step's end. Inline, each step costs
the wait plus the collation; with the prefetch thread the collation happens during the wait.
--host-ms adds the host's own share of a step before the wait: pure-Python work that holds the GIL
(what eager PyTorch does launching a step's kernels), a fixed amount calibrated to take that long
alone. When it is the larger share the host is the bottleneck, and the prefetch thread's collation
competes with it for the GIL (Python hands the GIL over every 5 ms, sys.getswitchinterval). Reports
the median step and the median time `next(loader)` took, over --steps steps after --warmup.
What it does not show: the GPU-side gain, which is the same milliseconds of device idle time
removed per step only when the host was the bottleneck (bench/gpu_check.py measures real steps).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ta_train.data import WindowedLoader  # noqa: E402


def examples(n: int, seq: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(int(seq * 0.73), seq)
        ids = [rng.randrange(49152) for _ in range(length)]
        prompt = rng.randint(20, 200)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "attention_mask": [1] * length})
    return out


def python_work(n: int) -> int:
    """n iterations of pure-Python arithmetic: holds the GIL the whole time."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def iterations_for(ms: float) -> int:
    """How many python_work iterations take `ms` on this machine, alone (median of 5)."""
    if ms <= 0:
        return 0
    n, times = 200_000, []
    for _ in range(5):
        t0 = time.perf_counter()
        python_work(n)
        times.append(time.perf_counter() - t0)
    return max(1, round(n * ms / 1e3 / statistics.median(times)))


def run(data: list, micro: int, depth: int, device_s: float, steps: int, warmup: int, host_iters: int = 0) -> dict:
    loader = WindowedLoader(data, micro_size=micro, accumulation=1, pad_id=0, seed=0, prefetch=depth)
    it = iter(loader)
    step_s, fetch_s = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        next(it)
        t1 = time.perf_counter()
        python_work(host_iters)  # the host's share of the step (kernel launches), holding the GIL
        time.sleep(device_s)  # the host waits for the device (releases the GIL, like a CUDA sync)
        if i >= warmup:
            fetch_s.append(t1 - t0)
            step_s.append(time.perf_counter() - t0)
    it.close()
    return {"prefetch": depth, "step_ms": round(statistics.median(step_s) * 1e3, 2),
            "fetch_ms": round(statistics.median(fetch_s) * 1e3, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--device-ms", type=float, default=200.0)
    ap.add_argument("--host-ms", type=float, default=0.0, help="GIL-holding host work per step before the wait")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--depths", default="0,2")
    args = ap.parse_args()
    data = examples(args.micro * (args.steps + args.warmup + 2), args.seq)
    host_iters = iterations_for(args.host_ms)
    rows = [run(data, args.micro, int(d), args.device_ms / 1e3, args.steps, args.warmup, host_iters)
            for d in args.depths.split(",")]
    print(json.dumps({"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                      "micro": args.micro, "seq": args.seq, "device_ms": args.device_ms, "host_ms": args.host_ms,
                      "results": rows}))
    print("| prefetch | median step ms | median next(loader) ms |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['prefetch']} | {r['step_ms']} | {r['fetch_ms']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
