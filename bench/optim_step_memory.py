"""Extra memory inside optimizer.step(): torch's foreach AdamW vs fused AdamW vs bitsandbytes 8-bit.

    nice -n 10 python bench/optim_step_memory.py            # markdown table
    nice -n 10 python bench/optim_step_memory.py --json     # also one JSON line per optimizer

The model is built as training builds it (ta_train.model.build_model on a composed full fine-tune
TrainConfig, fp32 weights, a few M parameters) and the optimizer as ta_train.optim.build_optimizer
builds it (decay / no-decay groups). One warm-up step creates the Adam states; then a forward +
backward leaves gradients, and only the second `optimizer.step()` runs under
`torch.profiler.profile(activities=[CPU], profile_memory=True)` with one thread: the running sum of
the CPU allocator's events is the live bytes above the state before the step (weights, gradients
and states already exist), so its maximum is the step's transient peak, exact and timing-free.
Reported per trainable parameter and per parameter of the largest parameter group: torch's
AdamW steps group by group, so a per-group temporary peaks at the largest group.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.activation_audit import compose_cfg  # noqa: E402

OPTIMIZERS = {  # name -> (optim overrides, the param groups' foreach flag; None: torch's default)
    "adamw single-tensor (CPU default)": (["optim.name=adamw", "optim.fused=false"], False),
    "adamw foreach (CUDA default)": (["optim.name=adamw", "optim.fused=false"], True),
    "adamw fused (optim.fused=true)": (["optim.name=adamw", "optim.fused=true"], None),
    "adamw8bit (bitsandbytes, CPU backend)": (["optim.name=adamw8bit"], None),
}
# hidden, layers, heads, kv heads, intermediate, vocab: ~6.6M parameters, most in the decayed group
ARCH = dict(hidden_size=256, n_layers=6, n_heads=4, n_kv_heads=2, intermediate_size=1024, vocab_size=4096)


def overrides(optim: list[str]) -> list[str]:
    a = ARCH
    h, kv = a["hidden_size"], a["n_kv_heads"] * a["hidden_size"] // a["n_heads"]
    n = a["vocab_size"] * h + a["n_layers"] * (2 * h * h + 2 * h * kv + 3 * h * a["intermediate_size"] + 2 * h) + h
    return [
        "model=tiny", "+hw=cpu", "peft=none", "precision=32-true", "data.max_seq_len=64", "run_dir=/tmp/ta-optim-step",
        "model.init_std=0.02", *(f"model.arch.{k}={v}" for k, v in ARCH.items()), f"model.arch.n_params={n}",
        "model.arch.tie_embeddings=true", *optim,
    ]


def step_peak(cfg, foreach: bool | None = None) -> dict:
    """Live-byte peak of the second optimizer.step() above the live bytes before it.

    foreach: torch AdamW's per-group flag; torch picks foreach only for CUDA tensors by default
    (single-tensor on CPU), so True measures here what a GPU run steps with.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.activation_audit import live_bytes_timeline
    from ta_train.model import build_model
    from ta_train.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer, _ = build_optimizer(model, cfg.optim, total_steps=10)
    if foreach is not None:
        for group in optimizer.param_groups:
            group["foreach"] = foreach
    ids = torch.randint(3, cfg.model.arch.vocab_size, (2, 64))

    def backward() -> None:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    backward()
    optimizer.step()  # creates the states
    optimizer.zero_grad(set_to_none=False)
    backward()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.step()
    timeline, _ = live_bytes_timeline(prof)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(sum(p.numel() for p in g["params"]) for g in optimizer.param_groups)
    tensor = max(p.numel() for p in model.parameters() if p.requires_grad)
    peak = max([b for _, b in timeline] or [0])
    return {
        "optimizer": type(optimizer).__name__, "fused": bool(optimizer.defaults.get("fused")), "trainable": trainable,
        "largest_group": largest, "groups": [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups],
        "largest_tensor": tensor, "peak_bytes": peak, "bytes_per_param": peak / trainable,
        "bytes_per_largest_group_param": peak / largest, "bytes_per_largest_tensor_param": peak / tensor,
        "net_bytes": timeline[-1][1] if timeline else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(OPTIMIZERS), help="these optimizers (default: all)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per optimizer")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for name in args.only or list(OPTIMIZERS):
        try:
            optim, foreach = OPTIMIZERS[name]
            r = step_peak(compose_cfg(overrides(optim)), foreach) | {"name": name}
        except (ImportError, RuntimeError) as err:  # bitsandbytes missing or without a CPU optimizer
            r = {"name": name, "error": str(err).splitlines()[0]}
        rows.append(r)
        if args.json:
            print(json.dumps(r), flush=True)
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"full fine-tune fp32, arch {ARCH}")
    print("| optimizer | trainable | largest group | largest tensor | step peak over live, KiB | B / trainable param "
          "| B / largest-group param | B / largest-tensor param |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | - | - | - | {r['error']} | - | - | - |")
            continue
        print(f"| {r['name']} | {r['trainable']:,} | {r['largest_group']:,} | {r['largest_tensor']:,} "
              f"| {r['peak_bytes'] / 1024:,.1f} | {r['bytes_per_param']:.3f} | {r['bytes_per_largest_group_param']:.3f} "
              f"| {r['bytes_per_largest_tensor_param']:.3f} |")


if __name__ == "__main__":
    main()
