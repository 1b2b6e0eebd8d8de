"""Eager vs regionally compiled (`perf.compile=true`) training steps on CPU: tokens/s and compile time.

    nice -n 10 python bench/compile_bench.py                      # SmolLM2-135M's shape, 4 x 512, fp32
    nice -n 10 python bench/compile_bench.py --layers 4 --precision bf16 --peft lora --ckpt

Both models come from the real builder (`ta_train.model.build_model` on a composed TrainConfig:
random-init Llama, same seed, so the same weights), one eager and one with every decoder layer
compiled. A step is forward + token-summed cross-entropy (`ta_train.losses`) + backward + AdamW on a
fixed random batch (no padding: every row is --seq tokens), autocast bf16 with --precision bf16.
The first compiled step includes compilation: it is reported as `compile_s` (first compiled step
minus the median eager step) and excluded from tokens/s, as are --warmup further steps per model.
Timed blocks alternate eager / compiled --repeats times, so load from other processes on a shared
machine hits both; the table gives the median block and the best block per mode.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# SmolLM2-135M: 30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536, 49,152 tokens, tied: 134.5M
SMOLLM2_135M = dict(hidden_size=576, n_heads=9, n_kv_heads=3, intermediate_size=1536, vocab_size=49152)


def n_params(layers: int, shape: dict) -> int:
    d, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = d // shape["n_heads"] * shape["n_kv_heads"]
    return layers * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d) + v * d + d


def build(args: argparse.Namespace, compiled: bool):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs
    from ta_train.model import build_model

    arch = [f"model.arch.{k}={v}" for k, v in SMOLLM2_135M.items()]
    overrides = [
        "model=tiny", "+hw=cpu", *arch, f"model.arch.n_layers={args.layers}",
        f"model.arch.n_params={n_params(args.layers, SMOLLM2_135M)}", "model.init_std=0.02",
        f"peft={args.peft}", "peft.dropout=0.0", f"gradient_checkpointing={str(args.ckpt).lower()}",
        f"perf.compile={str(compiled).lower()}", f"perf.compile_mode={args.mode}", "run_dir=/tmp/ta-compile-bench",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("train", overrides=overrides))
    model = build_model(cfg).train()
    return model


def make_step(model, batch, bf16: bool):
    import torch

    from ta_train.losses import sum_token_cross_entropy

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=batch, use_cache=False).logits
        loss_sum, n = sum_token_cross_entropy(logits.float(), batch, 0.0)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--peft", choices=["none", "lora"], default="none")
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--mode", default="default", help="perf.compile_mode")
    ap.add_argument("--warmup", type=int, default=1, help="steps per model after the first, not timed")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per block")
    ap.add_argument("--repeats", type=int, default=3, help="alternating eager/compiled blocks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    batch = torch.randint(0, SMOLLM2_135M["vocab_size"], (args.micro, args.seq), generator=torch.Generator().manual_seed(0))
    steps = {"eager": make_step(build(args, False), batch, args.precision == "bf16"),
             "compiled": make_step(build(args, True), batch, args.precision == "bf16")}
    first = {name: step() for name, step in steps.items()}  # the compiled one compiles here
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    blocks: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds = sum(step() for _ in range(args.steps))
            blocks[name].append(args.micro * args.seq * args.steps / seconds)
    eager_step = args.micro * args.seq / statistics.median(blocks["eager"])
    result = {
        "layers": args.layers, "params": n_params(args.layers, SMOLLM2_135M), "seq": args.seq, "micro": args.micro,
        "precision": args.precision, "peft": args.peft, "ckpt": args.ckpt, "mode": args.mode,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "first_step_s": {k: round(v, 2) for k, v in first.items()},
        "compile_s": round(first["compiled"] - eager_step, 1),
        "tokens_per_s_blocks": {k: [round(x) for x in v] for k, v in blocks.items()},
        "tokens_per_s_median": {k: round(statistics.median(v)) for k, v in blocks.items()},
        "tokens_per_s_best": {k: round(max(v)) for k, v in blocks.items()},
    }
    result["speedup_median"] = round(result["tokens_per_s_median"]["compiled"] / result["tokens_per_s_median"]["eager"], 3)
    result["speedup_best"] = round(result["tokens_per_s_best"]["compiled"] / result["tokens_per_s_best"]["eager"], 3)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
