"""Packed vs padded training: padding waste and trained tokens per second, same model, same steps.

    python bench/packing_bench.py [--model tiny] [--steps 6] [--micro 4] [--max-seq-len 1024]

Two data sets, encoded with the model's real tokenizer through ta_train.chat: the built-in demo
course, and a long-tailed mix of real SFT samples from ../shared/assets/data (Alpaca en/zh, GSM8K,
CMRC 2018, Firefly; skipped when ../shared is absent). Each runs `steps` optimizer steps of
`micro` rows, padded (length-grouped, as training does) and packed (best-fit decreasing into
max_seq_len rows), forward + backward + AdamW, fp32 on CPU. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "assets" / "data"


def long_tail_conversations() -> list[list[dict[str, str]]]:
    """Real SFT samples in their published forms, turned into conversations."""
    from ta_train.chat import from_alpaca

    convs = []
    for name in ("alpaca_en_demo_first200.jsonl", "alpaca_zh_demo_first200.jsonl"):
        convs += [from_alpaca(json.loads(line)) for line in (DATA / name).open(encoding="utf-8")]
    for line in (DATA / "gsm8k_test_first200.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        convs.append([{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}])
    for line in (DATA / "cmrc2018_dev_first200.jsonl").open(encoding="utf-8"):
        r = json.loads(line)
        answer = r["answers"]["text"][0] if isinstance(r.get("answers"), dict) else str(r.get("answers"))
        convs.append([{"role": "user", "content": f"{r['context']}\n\n{r['question']}"}, {"role": "assistant", "content": answer}])
    for line in (DATA / "firefly_dummy_data.jsonl").open(encoding="utf-8"):
        turns = []
        for t in json.loads(line)["conversation"]:
            turns += [{"role": "user", "content": t["human"]}, {"role": "assistant", "content": t["assistant"]}]
        convs.append(turns)
    return convs


def demo_conversations() -> list[list[dict[str, str]]]:
    from ta_data.demo import build_demo_records
    from ta_train.data import record_to_messages

    return [record_to_messages(r, "auto") for r in build_demo_records()]


def run(model, loader, steps: int) -> tuple[float, int, int]:
    """(seconds, trained tokens, all tokens incl. padding) over `steps` micro-batches."""
    import torch

    from ta_train.losses import sum_token_cross_entropy

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    def cycle():
        while True:
            yield from loader

    it = cycle()
    seconds, trained, total = 0.0, 0, 0
    for step in range(steps + 1):
        batch = next(it)
        start = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"), use_cache=False).logits
        loss, n = sum_token_cross_entropy(logits, batch["labels"], 0.05)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            seconds += time.perf_counter() - start
            trained += int(n)
            total += batch["input_ids"].numel()
    return seconds, trained, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    args = ap.parse_args()

    from bench.train_throughput import compose_cfg
    from ta_train.chat import EncodingRejected, encode_messages
    from ta_train.data import WindowedLoader
    from ta_train.model import build_model, load_tokenizer
    from ta_train.packing import pack_examples

    cfg = compose_cfg(args.model, "32-true", "lora")
    tok = load_tokenizer(cfg.model, cfg.cache_dir)
    model = build_model(cfg).train()
    sets = {"demo course": demo_conversations()}
    if DATA.is_dir():
        sets["long-tailed SFT mix"] = long_tail_conversations()
    else:
        print(f"({DATA} absent: long-tailed mix skipped)")
    print(f"model={args.model} micro={args.micro} max_seq_len={args.max_seq_len} steps={args.steps} (speed-up vs random order)\n")
    print("| data | examples | layout | padding waste | trained tokens/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, convs in sets.items():
        examples = []
        for c in convs:
            try:
                examples.append(encode_messages(tok, c, max_seq_len=args.max_seq_len))
            except EncodingRejected:
                pass
        results = {}
        layouts = (("padded, random order", examples, 1), ("padded, length-grouped", examples, WindowedLoader.GROUP),
                   ("packed", pack_examples(examples, args.max_seq_len), WindowedLoader.GROUP))
        for layout, rows, group in layouts:
            loader = WindowedLoader(rows, micro_size=args.micro, accumulation=1, pad_id=tok.pad_token_id, seed=0)
            loader.GROUP = group  # 1: no length grouping, the naive baseline
            seconds, trained, total = run(model, loader, args.steps)
            real = sum(len(r["input_ids"]) for r in rows)  # waste over the whole epoch's batches
            padded_total = sum(b["input_ids"].numel() for b in loader)
            results[layout] = (1 - real / padded_total, trained / seconds)
        for layout, (waste, tps) in results.items():
            speed = tps / results["padded, random order"][1]
            print(f"| {name} | {len(examples)} | {layout} | {waste:.1%} | {tps:,.0f} | {speed:.2f}x |")


if __name__ == "__main__":
    main()
