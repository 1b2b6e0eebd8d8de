"""Peak memory and time of the lm_head + cross-entropy, fused and chunked (perf.fused_ce) vs full logits.

    nice -n 10 python bench/fused_ce_bench.py                      # N=4096 rows, H=576, V=49152, fp32
    nice -n 10 python bench/fused_ce_bench.py --rows 2048 --autocast bf16 --modes unfused,fused-1024

One forward + backward of the loss sum over N trained rows (h: N x H, lm_head W: V x H, both
trainable as in a full fine-tune, label smoothing 0.05), in one fresh process per mode so no mode's
allocator state leaks into the next:
  unfused     F.linear -> (N, V) logits -> .float() -> F.cross_entropy(sum) + argmax count (what
              CausalLMModule does without perf.fused_ce)
  fused-R     ta_train.fused_ce.fused_linear_cross_entropy with R rows per chunk
Memory: the inputs are built and touched, the resident set size is the baseline, the kernel's peak
counter is reset (`/proc/self/clear_refs` <- 5), then one step runs; peak = VmHWM - baseline (the
loss's own buffers and the gradients it returns; tracemalloc does not see torch's allocations).
Time: median of --reps further steps. The shape is SmolLM2-135M's head (hidden 576, 49,152 tokens).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MIB = 1024**2


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, rows: int, hidden: int, vocab: int, eps: float, reps: int, autocast: str) -> dict:
    import torch
    import torch.nn.functional as F

    from ta_train.fused_ce import fused_linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.05).requires_grad_()
    y = torch.randint(0, vocab, (rows,), generator=g)
    def region():
        return torch.autocast("cpu", dtype=torch.bfloat16) if autocast == "bf16" else contextlib.nullcontext()

    def step() -> tuple[float, int]:
        h.grad = w.grad = None
        with region():
            if mode == "unfused":
                logits = F.linear(h, w)
                loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=eps)
                with torch.no_grad():
                    correct = int((logits.argmax(dim=-1) == y).sum())
                del logits
            else:
                loss, _, c = fused_linear_cross_entropy(h, w, y, label_smoothing=eps, chunk_rows=int(mode.split("-")[1]))
                correct = int(c)
        (loss * (1.0 / rows)).backward()
        return float(loss), correct

    time.sleep(0.2)
    base = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t = time.perf_counter()
    loss, correct = step()
    first = time.perf_counter() - t
    peak = _status_kib("VmHWM") - base
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {
        "mode": mode, "rows": rows, "hidden": hidden, "vocab": vocab, "autocast": autocast,
        "peak_mib": round(peak / 1024), "first_s": round(first, 3),
        "median_s": round(statistics.median(times), 3) if times else None, "reps": reps,
        "loss": loss, "correct": correct, "threads": torch.get_num_threads(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--autocast", default="none", choices=["none", "bf16"])
    ap.add_argument("--modes", default="unfused,fused-4096,fused-1024,fused-256")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    if args.child:
        res = child(args.child, args.rows, args.hidden, args.vocab, args.eps, args.reps, args.autocast)
        print(json.dumps(res))
        return 0
    results = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows), "--hidden", str(args.hidden),
               "--vocab", str(args.vocab), "--eps", str(args.eps), "--reps", str(args.reps), "--autocast", args.autocast]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full_logits = args.rows * args.vocab * 4 / MIB
    print(f"# {dt.date.today()} {platform.machine()} {os.cpu_count()} CPUs; N={args.rows} H={args.hidden} "
          f"V={args.vocab} autocast={args.autocast}; one fp32 N x V logits copy = {full_logits:,.0f} MiB")
    print("| mode | peak MiB over inputs | first step s | median step s | loss sum | correct |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['peak_mib']:,} | {r['first_s']} | {r['median_s']} | {r['loss']:.3f} | {r['correct']} |")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
