"""CUDA paths of ta_train on one GPU: bf16 full fine-tune and LoRA, QLoRA (bitsandbytes nf4),
FlashAttention-2 (when installed), DeepSpeed ZeRO-2, with MFU and peak memory against the plan.

    bash bench/gpu_check.sh                 # all cases, a markdown table on stdout
    python bench/gpu_check.py case full_bf16 --out /tmp/x.json   # one case (what the table runs)
    python bench/gpu_check.py all --device cpu --shape tiny       # smoke test of the script itself
    bash bench/gpu_check.sh --cases kernels,full_bf16,full_bf16_compile,lora_bf16,lora_bf16_compile

The `*_compile` cases (perf.compile=true: every decoder layer compiled by inductor) are not in the
default list (they add compile time; the whole default run stays under 10 minutes): name them with
--cases. Their first steps compile, so they warm up for WARMUP_COMPILE steps (each warm-up step's
seconds are in `warmup_step_s`) and get COMPILE_EXTRA_S more seconds of time limit.

Every training case goes through the real framework: Hydra compose of conf/train.yaml, the memory
plan (ta_train.plan), and `ta_train.train.fit` (data module, CausalLMModule, Lightning Trainer). The
model is a random-init Llama with Llama-3.2-1B's shape (16 layers, hidden 2048, 32 heads, 8 KV heads,
MLP 8192, tied embeddings) and SmolLM2's 49,152-token tokenizer: 1.07B parameters. Data: generated
long Alpaca records that fill every 2,048-token row (no padding), so tokens/s counts real tokens.

Each case runs in its own process (a fresh CUDA context, so peak memory is the case's own) with its
own time limit; a failing case prints its error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.step_profile import PROFILE_STEPS, make_profiler  # noqa: E402
WORK = Path(os.environ.get("GPU_CHECK_DIR", "/tmp/ta-gpu-check"))

SHAPES = {
    # Llama-3.2-1B's shape with SmolLM2's vocabulary: 16 x 60.8M + 49152 x 2048 = 1.074B parameters.
    "1b": dict(n_layers=16, hidden_size=2048, n_heads=32, n_kv_heads=8, intermediate_size=8192, vocab_size=49152),
    # For the CPU smoke test of this script.
    "tiny": dict(n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=128, vocab_size=49152),
}
SEQ = {"1b": 2048, "tiny": 128}
WARMUP, TIMED = 3, 10
# compiled cases: step 1 compiles the layer's forward and backward (one graph for all 16 layers),
# later warm-up steps absorb autotuning or a recompile; timing starts after these
WARMUP_COMPILE, COMPILE_EXTRA_S = 5, 240

CUDNN_FIRST = "[cudnn,flash,efficient,math]"
# name -> overrides on top of the shape, the gpu/cpu device settings and the data
CASES: dict[str, list[str]] = {
    "full_bf16": ["peft=none", "precision=bf16-mixed", "batch.micro_size=8"],
    "lora_bf16": ["peft=lora", "precision=bf16-mixed", "batch.micro_size=8"],
    "lora_bf16_ckpt": ["peft=lora", "precision=bf16-mixed", "batch.micro_size=8", "gradient_checkpointing=true"],
    "qlora_bf16": ["peft=qlora", "precision=bf16-mixed", "batch.micro_size=8"],
    "lora_fa2": ["peft=lora", "precision=bf16-mixed", "batch.micro_size=8", "model.attn_implementation=flash_attention_2"],
    "full_zero2": ["peft=none", "precision=bf16-mixed", "batch.micro_size=8", "strategy=deepspeed_zero2"],
    # torch's fused AdamW (one kernel over the fp32 states, no sqrt(v) temporary), clipped by the module
    "full_bf16_fused_adamw": ["peft=none", "precision=bf16-mixed", "batch.micro_size=8", "optim.fused=true"],
    # chunked lm_head + cross-entropy (ta_train.fused_ce): no 16,384 x 49,152 logits; the freed
    # memory allows micro-batch 16
    "full_bf16_fused_ce": ["peft=none", "precision=bf16-mixed", "batch.micro_size=8", "perf.fused_ce=true"],
    "full_bf16_fused_ce_mb16": ["peft=none", "precision=bf16-mixed", "batch.micro_size=16", "perf.fused_ce=true"],
    "full_bf16_compile": ["peft=none", "precision=bf16-mixed", "batch.micro_size=8", "perf.compile=true"],
    # SDPA kernel order (ta_train.attention): cuDNN attention first (1.77 ms vs FlashAttention's
    # 10.55 ms per layer, forward + backward, measured on the H200 by the kernels case)
    "full_bf16_cudnn": ["peft=none", "precision=bf16-mixed", "batch.micro_size=8", f"perf.sdpa_backends={CUDNN_FIRST}"],
    "lora_bf16_cudnn": ["peft=lora", "precision=bf16-mixed", "batch.micro_size=8", f"perf.sdpa_backends={CUDNN_FIRST}"],
    "lora_bf16_compile": ["peft=lora", "precision=bf16-mixed", "batch.micro_size=8", "perf.compile=true"],
    # everything at once: compiled layers, chunked loss, and the micro-batch the freed memory allows
    "full_bf16_fused_ce_mb16_compile": [
        "peft=none", "precision=bf16-mixed", "batch.micro_size=16", "perf.fused_ce=true", "perf.compile=true",
    ],
}
# everything measured to help at once: cuDNN attention, fused AdamW, the chunked loss and the
# micro-batch its memory allows (+ compiled layers in the _compile case)
FAST = ["peft=none", "precision=bf16-mixed", "batch.micro_size=16", "perf.fused_ce=true",
        f"perf.sdpa_backends={CUDNN_FIRST}", "optim.fused=true"]
CASES["full_bf16_fast"] = FAST
CASES["full_bf16_fast_compile"] = [*FAST, "perf.compile=true"]
OPT_IN = {"full_bf16_compile", "lora_bf16_compile", "full_bf16_fused_ce_mb16_compile", "full_bf16_fast_compile"}  # not run unless named in --cases


def warmup_steps(name: str) -> int:
    return WARMUP_COMPILE if name.endswith("_compile") else WARMUP
NEEDS = {"qlora_bf16": "bitsandbytes", "lora_fa2": "flash_attn", "full_zero2": "deepspeed"}


def n_params(shape: dict) -> int:
    d, f, v, L = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], shape["n_layers"]
    kv = d // shape["n_heads"] * shape["n_kv_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
    return L * per_layer + v * d + d  # tied embeddings + final norm


def micro_size(name: str) -> int:
    return next(int(o.split("=")[1]) for o in CASES[name] if o.startswith("batch.micro_size="))


def data_rows() -> int:
    """Training rows for (warmup + timed + profiled) steps of the largest micro-batch, plus 1%
    validation and slack."""
    return int(max((warmup_steps(n) + TIMED + PROFILE_STEPS) * micro_size(n) for n in CASES) * 1.02) + 16


def write_data(path: Path, rows: int, words: int, seed: int = 0) -> None:
    """Alpaca records whose answers are longer than a row, so every row is a full max_seq_len."""
    rng = random.Random(seed)
    vocab = [f"{rng.choice('bcdfghjklmnprstvw')}{rng.choice('aeiou')}{rng.choice('nrstl')}" for _ in range(3000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(rows):
            text = " ".join(rng.choice(vocab) for _ in range(words))
            f.write(json.dumps({"instruction": f"Summarize lecture {i}.", "input": "", "output": text}) + "\n")


def case_overrides(name: str, shape_name: str, device: str, data: Path) -> list[str]:
    shape = SHAPES[shape_name]
    arch = [f"model.arch.{k}={v}" for k, v in shape.items()]
    steps = warmup_steps(name) + TIMED + (PROFILE_STEPS if device == "cuda" else 0)
    micro = micro_size(name)
    # the h200 profile turns optim.fused on: off here, so full_bf16 stays the foreach-AdamW baseline
    # that full_bf16_fused_adamw is compared with (the cases that want it set it again)
    hw = ["+hw=h200", "optim.fused=false"] if device == "cuda" else ["+hw=cpu", "hw.peak_tflops=0"]
    return [
        "model=tiny", *hw, *arch, f"model.arch.n_params={n_params(shape)}", "model.init_std=0.02",
        "model.attn_implementation=sdpa", "model.arch.tie_embeddings=true", "model.arch.max_positions=4096",
        f"data.sources=[{{path: {data}, format: alpaca}}]", f"data.max_seq_len={SEQ[shape_name]}",
        "data.val_fraction=0.01", "data.system_prompt=null", "demo.question=null",
        f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "trainer.val_check_interval=null",
        "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=100000", "logger=csv",
        *CASES[name],
        # one micro-batch per optimizer step, so the timed window is whole steps; the plan may not
        # change the settings being measured
        f"batch.global_size={micro}", "plan.strict=true",
        f"run_dir={WORK / 'runs' / name}",
        *([f"cache_dir={os.environ['TA_CACHE_DIR']}"] if os.environ.get("TA_CACHE_DIR") else []),
    ]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("train", overrides=overrides))


def make_timer(warmup: int):
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepTimer(L.Callback):
        """Wall time and tokens of the optimizer steps after `warmup`, CUDA-synchronized."""

        def __init__(self) -> None:
            self.t0 = self.t1 = self.t_step = 0.0
            self.tokens = self.trained = 0
            self.warmup_s: list[float] = []  # seconds of each warm-up step (compilation shows here)

        def _sync(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_fit_start(self, trainer, pl_module) -> None:
            # a benchmark writes no multi-GB checkpoints
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step < warmup:
                self.t_step = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step <= warmup and len(self.warmup_s) < warmup:
                self._sync()
                self.warmup_s.append(time.perf_counter() - self.t_step)
            if trainer.global_step < warmup:
                return
            if trainer.global_step == warmup and not self.t0:
                self._sync()
                self.t0 = time.perf_counter()
                return
            if self.t1:  # the timed window is over; profiled steps follow (bench/step_profile.py)
                return
            # host values of the batch (ta_train.data): reading them waits for no device
            self.tokens += batch["token_counts"][0]  # tokens, padding excluded
            self.trained += batch["trained_index"].numel()  # trained positions (its shape, known on the host)
            if trainer.global_step >= warmup + TIMED:
                self._sync()
                self.t1 = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            if not self.t1:
                self._sync()
                self.t1 = time.perf_counter()

    return StepTimer()


def run_case(name: str, shape_name: str, device: str) -> dict:
    import torch

    from ta_train.perf import mfu, train_flops_per_token
    from ta_train.plan import plan_for
    from ta_train.train import fit

    data = WORK / "data" / f"{shape_name}.jsonl"
    overrides = case_overrides(name, shape_name, device, data)
    if name.startswith("qlora"):
        overrides += save_base(shape_name, overrides)
    cfg = compose(overrides)
    plan = plan_for(cfg)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup = warmup_steps(name)
    timer = make_timer(warmup)
    profiler = make_profiler(warmup + TIMED)  # CUDA only: the steps after the timed ones
    trainer, module, _ = fit(cfg, extra_callbacks=[timer, profiler])
    seconds = timer.t1 - timer.t0
    tok_s = timer.tokens / seconds
    adapter = None
    if cfg.peft.method.value != "none":
        adapter = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    flops = train_flops_per_token(cfg.model.arch, cfg.data.max_seq_len, adapter)
    out = {
        "case": name, "ok": True, "steps_timed": min(trainer.global_step - warmup, TIMED), "seconds": round(seconds, 3),
        "warmup_step_s": [round(x, 2) for x in timer.warmup_s],
        "tokens_per_s": round(tok_s), "trained_share": round(timer.trained / max(timer.tokens, 1), 3),
        "tflops": round(tok_s * flops / 1e12, 1), "mfu": mfu(tok_s, flops, cfg.hw.peak_tflops),
        "micro_batch": cfg.batch.micro_size, "seq": cfg.data.max_seq_len,
        "attn": module.model.config._attn_implementation, "plan_peak_gib": plan.peak_gib,
        "plan_breakdown": plan.breakdown, "plan_fits": plan.fits, "loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "fused_ce": module._fused is not None,  # perf.fused_ce really ran (no fallback)
    }
    out.update(sdpa_kernels(cfg, module, device))
    if profiler.summary is not None:  # where the device time of a step went, and its idle time
        out["profile"] = profiler.summary
    out.update(logged_perf(Path(cfg.run_dir) / "metrics.csv", warmup))
    if cfg.perf.compile:  # graphs dynamo captured; more than one per direction means recompiles
        import torch._dynamo.utils

        out["compiled_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    if device == "cuda":
        gib = 2**30
        out["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / gib, 2)
        out["max_reserved_gib"] = round(torch.cuda.max_memory_reserved() / gib, 2)
        free, total = torch.cuda.mem_get_info()
        out["device_used_gib_at_end"] = round((total - free) / gib, 2)
    return out


def sdpa_kernels(cfg, module, device: str) -> dict:
    """Which SDPA kernel the case's attention ran: as settled (perf.sdpa_backends) or PyTorch's order."""
    from ta_train.attention import probe_model

    choice = module.attention_choice
    if choice is None and module.model.config._attn_implementation == "sdpa":
        choice = probe_model(module.model, None, precision=cfg.precision.name, seq_len=cfg.data.max_seq_len, device=device)
    if choice is None:
        return {}
    return {"kernel": choice.unmasked, "sdpa": choice.describe(cfg.perf.sdpa_backends)}


def logged_perf(csv_path: Path, warmup: int = WARMUP) -> dict:
    """The run's own live perf/* metrics (ta_train.throughput), median over the timed steps: those
    of steps warmup .. warmup + TIMED - 1 (the csv's step column counts from 0), not the profiled
    ones after them (slowed by the profiler) nor rows logged outside a step (step 0's data/*)."""
    import csv
    import statistics

    if not csv_path.exists():
        return {}
    rows = [r for r in csv.DictReader(csv_path.open()) if r.get("step") and warmup <= int(r["step"]) < warmup + TIMED]
    out = {}
    for key in ("perf/mfu", "perf/tokens_per_s", "perf/max_memory_gb"):
        values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if values:
            out["logged_" + key.split("/")[1]] = round(statistics.median(values), 4)
    return out


def save_base(shape_name: str, overrides: list[str]) -> list[str]:
    """QLoRA loads its base from disk through bitsandbytes: save the random model once (bf16)."""
    import torch

    from ta_train.model import load_tokenizer, random_llama

    base_dir = WORK / f"base-{shape_name}"
    if not (base_dir / "config.json").exists():
        cfg = compose([o for o in overrides if not o.startswith("peft=")])
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = random_llama(cfg.model, torch.bfloat16, "sdpa")
        model.save_pretrained(base_dir)
        load_tokenizer(cfg.model, cfg.cache_dir).save_pretrained(base_dir)
        del model
    return ["model.random_init=false", "model.provider=null", f"model.name_or_path={base_dir}"]


def kernels(device: str) -> dict:
    """Dense bf16 GEMM rate and which SDPA kernels run (FlashAttention inside PyTorch vs math)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict = {"case": "kernels", "ok": True, "torch": torch.__version__}
    if device != "cuda":
        return out
    out["gpu"] = torch.cuda.get_device_name()
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    out["gemm_bf16_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - t) / 1e12, 1)
    # forward + backward of the 1b shape's attention (8 x 2,048 tokens, 32 heads of 64), causal:
    # "mha" all heads equal; "gqa" 8 key/value heads passed with enable_gqa (what transformers does
    # without a mask), "gqa_rkv" the same k, v repeated to 32 heads first (ta_train.attention)
    def qkv(kv_heads: int) -> list:
        return [torch.randn(8, h, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for h in (32, kv_heads, kv_heads)]

    def repeated(x):
        return x[:, :, None].expand(8, 8, 4, 2048, 64).reshape(8, 32, 2048, 64)

    calls = {
        "mha": (qkv(32), lambda q, k, v: (q, k, v), False),
        "gqa": (qkv(8), lambda q, k, v: (q, k, v), True),
        "gqa_rkv": (qkv(8), lambda q, k, v: (q, repeated(k), repeated(v)), True),
    }
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        for label, (tensors, prep, gqa) in calls.items():
            key = f"sdpa_{backend.name.lower()}_{label}_ms"
            grad = torch.randn(8, 32, 2048, 64, device="cuda", dtype=torch.bfloat16)
            try:
                with sdpa_kernel([backend]):
                    for i in range(4):
                        if i == 1:
                            torch.cuda.synchronize()
                            t = time.perf_counter()
                        q, k, v = prep(*tensors)
                        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
                        o.backward(grad)
                    torch.cuda.synchronize()
                out[key] = round((time.perf_counter() - t) / 3 * 1e3, 2)
            except RuntimeError as exc:
                out[key] = f"unavailable: {str(exc).splitlines()[0][:80]}"
    from ta_train.attention import probe

    shape = dict(n_heads=32, n_kv_heads=8, head_dim=64, seq_len=2048, dtype=torch.bfloat16, device="cuda")
    out["sdpa_default_order"] = probe(None, **shape).describe(None)
    out["sdpa_cudnn_first"] = probe(["cudnn", "flash", "efficient", "math"], **shape).describe(["cudnn", "flash", "efficient", "math"])
    import importlib.util

    for pkg in ("flash_attn", "bitsandbytes", "deepspeed"):
        spec = importlib.util.find_spec(pkg)
        out[pkg] = "not installed" if spec is None else _version(pkg)
    return out


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg.replace("_", "-"))
    except PackageNotFoundError:
        return "installed"


def child(args: argparse.Namespace) -> int:
    try:
        result = kernels(args.device) if args.name == "kernels" else run_case(args.name, args.shape, args.device)
    except Exception as exc:  # the table shows it; the other cases still run
        traceback.print_exc()
        result = {"case": args.name, "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    Path(args.out).write_text(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(results: list[dict]) -> str:
    rows = ["| case | attn | micro x seq | tokens/s | TFLOP/s | MFU | plan peak GiB | max allocated GiB | max reserved GiB | loss | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["case"] == "kernels":
            continue
        if not r.get("ok"):
            rows.append(f"| {r['case']} | | | | | | | | | | {r.get('error', r.get('skipped', ''))[:120]} |")
            continue
        m = r.get("mfu")
        rows.append(
            f"| {r['case']} | {r['attn']}{' / ' + r['kernel'] if r.get('kernel') else ''} | {r['micro_batch']} x {r['seq']} | {r['tokens_per_s']:,} | {fmt(r['tflops'])} "
            f"| {fmt(m * 100 if m is not None else None)}% | {fmt(r['plan_peak_gib'], 2)} | {fmt(r.get('max_allocated_gib'), 2)} "
            f"| {fmt(r.get('max_reserved_gib'), 2)} | {fmt(r['loss'], 3)} | {r['steps_timed']} steps timed{', fused CE' if r.get('fused_ce') else ''} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["all", "case"])
    ap.add_argument("name", nargs="?")
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--timeout", type=int, default=150, help="seconds per case")
    ap.add_argument("--cases", default=",".join(["kernels", *(c for c in CASES if c not in OPT_IN)]))
    ap.add_argument("--json", default=None, help="also write all results here")
    args = ap.parse_args()
    if args.what == "case":
        return child(args)
    import importlib.util

    WORK.mkdir(parents=True, exist_ok=True)
    # (warmup + timed + profiled) x the largest micro-batch + the 1% held out for validation: the
    # epoch never ends inside the timed or profiled steps
    write_data(WORK / "data" / f"{args.shape}.jsonl", rows=data_rows(), words=1800 if args.shape == "1b" else 120)
    results = []
    for name in args.cases.split(","):
        need = NEEDS.get(name)
        if need and importlib.util.find_spec(need) is None:
            results.append({"case": name, "ok": False, "skipped": f"{need} not installed"})
            print(f"== {name}: skipped ({need} not installed)", flush=True)
            continue
        out = WORK / f"{name}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "case", name, "--shape", args.shape, "--device", args.device, "--out", str(out)]
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        limit = args.timeout + (COMPILE_EXTRA_S if name.endswith("_compile") else 0)
        try:
            subprocess.run(cmd, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            pass
        result = json.loads(out.read_text()) if out.exists() else {"case": name, "ok": False, "error": f"no result within {limit} s"}
        result["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(result, default=str), flush=True)
        results.append(result)
        if args.json:  # after every case: a session cut short keeps what finished
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print()
    print(table(results))
    profiled = [r for r in results if r.get("profile", {}).get("kernels")]
    if profiled:  # per step, ms: span, device busy / idle, and kernel time by kind (bench/step_profile.py)
        print()
        for r in profiled:
            p = r["profile"]
            kinds = ", ".join(f"{k} {v}" for k, v in p["kinds_ms"].items())
            by_op = f" ({p.get('by_op_ms', 0)} ms of it by launching op, the rest by kernel name)"
            print(f"{r['case']}: step {p['span_ms']} ms, busy {p['busy_ms']}, idle {p['idle_ms']}; {kinds}{by_op}")
    kern = next((r for r in results if r["case"] == "kernels"), None)
    if kern:
        print()
        print(" ".join(f"{k}={v}" for k, v in kern.items() if k not in ("case", "ok")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
