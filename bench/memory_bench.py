"""Predicted (ta_train.plan) vs measured peak training memory of small real configs on CPU.

    nice -n 10 python bench/memory_bench.py            # every config below, one fresh process each
    nice -n 10 python bench/memory_bench.py --only lora-h512-ckpt --json

Each config trains in its own subprocess (so one config's allocator state cannot leak into the
next): build the model exactly as training does (ta_train.model.build_model, fp32 on CPU), let it
settle, take the resident set size as the baseline, reset the kernel's peak-RSS counter
(`/proc/self/clear_refs` <- 5), then run 2 optimizer steps of 2 accumulated micro-batches each
(forward, ta_train.losses.sum_token_cross_entropy with label smoothing, backward, AdamW), so the
optimizer states and the gradients kept across accumulation are alive while a micro-batch's
activations and logits are: the planner's peak. Measured = VmHWM - baseline.

Predicted = the planner's peak minus what the baseline already holds (the weights) and minus the
CUDA runtime overhead (RUNTIME_OVERHEAD_GIB: there is no CUDA context on CPU):
optimizer + gradients + activations + logits buffers. CPU has no caching allocator: glibc returns
big blocks (> 32 MiB) to the kernel at once and keeps small ones in its arenas, so RSS tracks live
tensors plus some arena slack, much like `max_memory_allocated` plus fragmentation on a GPU.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GIB = 1024**3
# name -> (peft, hidden, layers, heads, kv_heads, intermediate, seq, micro, checkpointing, attention)
CONFIGS: dict[str, tuple] = {
    "lora-h512": ("lora", 512, 4, 8, 4, 1408, 512, 2, False, "eager"),
    "lora-h512-ckpt": ("lora", 512, 4, 8, 4, 1408, 512, 2, True, "eager"),
    "lora-h1024-mb4": ("lora", 1024, 2, 16, 8, 2816, 256, 4, False, "eager"),
    "lora-h1024-mb4-ckpt": ("lora", 1024, 2, 16, 8, 2816, 256, 4, True, "eager"),
    "lora-h512-sdpa": ("lora", 512, 4, 8, 4, 1408, 512, 2, False, "sdpa"),
    "full-h512": ("none", 512, 4, 8, 4, 1408, 256, 2, False, "eager"),
    "full-h512-ckpt": ("none", 512, 4, 8, 4, 1408, 512, 1, True, "eager"),
    "full-h1024-mb4": ("none", 1024, 2, 16, 8, 2816, 256, 4, False, "eager"),
}
VOCAB = 32000  # Llama-2-sized vocabulary: the logits term is measurable without dominating


def arch_params(h: int, layers: int, heads: int, kv_heads: int, f: int, vocab: int) -> int:
    """Parameters of a Llama with tied embeddings: V*h + L*(2h^2 + 2h*kv + 3hf + 2h) + h."""
    kv = kv_heads * (h // heads)
    return vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h) + h


def overrides(name: str) -> list[str]:
    peft, h, layers, heads, kv, f, seq, micro, ckpt, attn = CONFIGS[name]
    arch = {
        "n_params": arch_params(h, layers, heads, kv, f, VOCAB), "n_layers": layers, "hidden_size": h,
        "n_heads": heads, "n_kv_heads": kv, "intermediate_size": f, "vocab_size": VOCAB, "max_positions": 2048,
    }
    return [
        "model=tiny", f"peft={peft}", "precision=32-true", "peft.r=16", "model.init_std=0.02", "trainer.accelerator=cpu",
        f"model.attn_implementation={attn}", f"data.max_seq_len={seq}", f"batch.micro_size={micro}",
        f"batch.global_size={2 * micro}", f"gradient_checkpointing={str(ckpt).lower()}", "run_dir=/tmp/ta-memory-bench",
        *(f"model.arch.{k}={v}" for k, v in arch.items()),
    ]


def compose_cfg(name: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("train", overrides=overrides(name)))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(name: str) -> dict:
    """Run in the child: baseline after model load, peak over 2 optimizer steps x 2 micro-batches."""
    import gc

    import torch

    from ta_train.losses import sum_token_cross_entropy
    from ta_train.model import build_model, count_parameters
    from ta_train.optim import build_optimizer
    from ta_train.plan import make_plan

    cfg = compose_cfg(name)
    plan = make_plan(cfg, strict=True)
    model = build_model(cfg).train()
    trainable, total = count_parameters(model)
    if total != cfg.model.arch.n_params + (trainable if cfg.peft.method.value != "none" else 0):
        raise RuntimeError(f"{name}: arch_params() disagrees with the model ({total} parameters)")
    optimizer, _ = build_optimizer(model, cfg.optim, total_steps=2)
    micro, seq = cfg.batch.micro_size, cfg.data.max_seq_len
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB, (micro, seq), generator=g) for _ in range(4)]
    mask = torch.ones_like(batches[0])
    # Warm-up micro-step on 8 tokens (no optimizer step): the first forward and backward page in
    # kernel code and thread pools (~50 MiB of RSS that is not tensors, like a CUDA context).
    model(input_ids=batches[0][:1, :8], use_cache=False).logits.float().mean().backward()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    baseline = _status_kib("VmRSS")
    trace: list[tuple[str, int, int]] = []  # (phase, peak KiB, KiB at its end) over the baseline
    phases = {"forward": 0, "backward": 0, "step": 0}  # peak KiB over the baseline within each phase

    def phase(name: str, fn):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        out = fn()
        phases[name] = max(phases[name], _status_kib("VmHWM") - baseline)
        trace.append((name, _status_kib("VmHWM") - baseline, _status_kib("VmRSS") - baseline))
        return out

    def loss_of(ids):  # like training_step: only the loss outlives the forward (logits are freed)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss_sum, n = sum_token_cross_entropy(logits, ids, cfg.objective.label_smoothing)
        return loss_sum / n / 2

    for step in range(2):
        for ids in batches[2 * step : 2 * step + 2]:
            loss = phase("forward", lambda: loss_of(ids))
            phase("backward", loss.backward)
            del loss
        phase("step", optimizer.step)
        optimizer.zero_grad(set_to_none=True)
    peak = max(phases.values())
    b = plan.breakdown
    from ta_train.plan_memory import RUNTIME_OVERHEAD_GIB

    predicted = b["optimizer"] + b["gradients"] + b["activations"] + (b["buffers"] - RUNTIME_OVERHEAD_GIB)
    return {
        "config": name, "peft": cfg.peft.method.value, "hidden": cfg.model.arch.hidden_size,
        "layers": cfg.model.arch.n_layers, "seq": seq, "micro": micro, "checkpointing": cfg.gradient_checkpointing,
        "attn": cfg.model.attn_implementation.value, "params": total, "trainable": trainable,
        "predicted_gib": round(predicted, 3), "measured_gib": round(peak * 1024 / GIB, 3),
        "trace_mib": [(n, p // 1024, e // 1024) for n, p, e in trace],
        "phases_gib": {k: round(v * 1024 / GIB, 3) for k, v in phases.items()},
        "predicted_terms": {k: round(v, 3) for k, v in b.items() if k != "weights"} | {"buffers": round(b["buffers"] - RUNTIME_OVERHEAD_GIB, 3)},
        "baseline_gib": round(baseline * 1024 / GIB, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run these configs (default: all)")
    ap.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="also print one JSON line per config")
    ap.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold (arena slack)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    # A fixed mmap threshold makes glibc give every block over 128 KiB back to the kernel when it is
    # freed, so RSS follows live tensors (the default dynamic threshold keeps up to 32 MiB blocks in
    # its arenas: +100-300 MiB of slack that grows from step to step; --glibc-default shows it).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if not args.glibc_default:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    for name in args.only or list(CONFIGS):
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    malloc = "glibc default" if args.glibc_default else f"MALLOC_MMAP_THRESHOLD_={env['MALLOC_MMAP_THRESHOLD_']}"
    print(f"# {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, fp32 on CPU, vocab {VOCAB}, {malloc}")
    print("| config | peft | h x L | seq x micro | ckpt | attn | predicted GiB (opt+grad+act+logits) | measured GiB | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["predicted_terms"]
        err = (r["predicted_gib"] - r["measured_gib"]) / r["measured_gib"] * 100
        terms = f"{t['optimizer']:.2f}+{t['gradients']:.2f}+{t['activations']:.2f}+{t['buffers']:.2f}"
        print(f"| {r['config']} | {r['peft']} | {r['hidden']} x {r['layers']} | {r['seq']} x {r['micro']} | "
              f"{r['checkpointing']} | {r['attn']} | {r['predicted_gib']:.3f} ({terms}) | {r['measured_gib']:.3f} | {err:+.1f}% |")


if __name__ == "__main__":
    main()
