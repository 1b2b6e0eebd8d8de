"""Training throughput (trained-sequence tokens per second) of one config, forward + backward + AdamW.

    python bench/train_throughput.py --model tiny --precision 32-true
    python bench/train_throughput.py --model smollm2_135m --precision bf16-mixed --steps 3

Builds the model exactly as training does (ta_train.model.build_model, LoRA by default), feeds
random token batches of micro x seq tokens, and times `steps` optimizer steps after `warmup` steps.
bf16-mixed/16-mixed run under torch.autocast like Lightning's mixed precision. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def compose_cfg(model: str, precision: str, peft: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    register_configs()
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"precision={precision}", f"peft={peft}", "run_dir=/tmp/bench"])
    return OmegaConf.to_object(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    ap.add_argument("--peft", default="lora", choices=["lora", "none"])
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    import torch

    from ta_train.losses import sum_token_cross_entropy
    from ta_train.model import build_model, count_parameters
    from ta_train.optim import build_optimizer

    cfg = compose_cfg(args.model, args.precision, args.peft)
    model = build_model(cfg).train()
    optimizer, _ = build_optimizer(model, cfg.optim, total_steps=args.steps + args.warmup)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.model.arch.vocab_size, (args.micro, args.seq), generator=g)
    mask = torch.ones_like(ids)

    def step() -> None:
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss_sum, n = sum_token_cross_entropy(logits, ids, 0.05)
        (loss_sum / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    trainable, total = count_parameters(model)
    tokens = args.steps * args.micro * args.seq
    print(json.dumps({
        "model": args.model, "precision": args.precision, "peft": args.peft, "micro": args.micro, "seq": args.seq,
        "steps": args.steps, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
        "trainable_params": trainable, "total_params": total, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
