"""`python -m ta_train.inspect [data=...] [model=...]`: see exactly what training will learn.

Prints a few encoded examples with the trained tokens highlighted (green on a terminal, inside
[[...]] otherwise), then counts over the whole data: examples, tokens, trained tokens, truncated,
rejected (with reasons), and the places where the template and the data together produce a doubled
newline at a role boundary. Loads the tokenizer only, never the model: the first thing to run when a
template looks wrong.
"""
from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from ta_train.__main__ import CONF_DIR
from ta_train.config import TrainConfig, register_configs

register_configs()


def lint_double_newlines(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[str]:
    """Role boundaries where the raw data's newline meets the template's own (before normalizing).

    Returns one message per boundary, e.g. "message 1 (assistant) starts with a newline right after
    the template's header newline". Encoding strips these; the lint tells the data owner.
    """
    from ta_train.chat import render_text

    text = render_text(tokenizer, messages)
    found, cursor = [], 0
    for i, m in enumerate(messages):
        content = m["content"]
        at = text.find(content, cursor) if content else -1
        if at < 0:
            continue
        cursor = at + len(content)
        if content.startswith("\n") and text[:at].endswith("\n"):
            found.append(f"message {i} ({m['role']}) starts with a newline right after the template's newline")
        if content.endswith("\n") and text[cursor:].startswith("\n"):
            found.append(f"message {i} ({m['role']}) ends with a newline right before the template's newline")
    return found


def highlight(tokenizer: Any, enc: dict[str, list[int]], color: bool) -> str:
    """Decoded example with runs of trained tokens marked."""
    from ta_train.chat import IGNORE_INDEX

    pieces, run, trained = [], [], None
    for x, y in zip(enc["input_ids"], enc["labels"]):
        is_trained = y != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            pieces.append((trained, tokenizer.decode(run)))
            run = []
        run.append(x)
        trained = is_trained
    if run:
        pieces.append((bool(trained), tokenizer.decode(run)))
    on, off = ("\x1b[42;30m", "\x1b[0m") if color else ("[[", "]]")
    return "".join(f"{on}{text}{off}" if t else text for t, text in pieces)


def _count_source(cfg: TrainConfig, tokenizer: Any, parsed: Any, counts: collections.Counter,
                  reasons: collections.Counter, show: int, color: bool, out: Any) -> None:
    """Encode one parsed source into `counts` (and `reasons`); print examples while counts["examples"] < show."""
    from ta_train.chat import EncodingRejected, encode_with_info
    from ta_train.data import trained_tokens

    counts["rejected"] += len(parsed.rejects)
    reasons.update(r.reason.split(":")[0] for r in parsed.rejects)
    for line, messages in zip(parsed.lines, parsed.conversations):
        counts["lint"] += len(lint_double_newlines(tokenizer, messages))
        try:
            enc, info = encode_with_info(
                tokenizer, messages, max_seq_len=cfg.data.max_seq_len,
                train_on=cfg.objective.train_on.value, system=cfg.data.system_prompt,
            )
        except EncodingRejected as err:
            counts["rejected"] += 1
            reasons[str(err).split(":")[0]] += 1
            continue
        if counts["examples"] < show:
            print(f"--- {parsed.path}:{line}  ({len(enc['input_ids'])} tokens, {trained_tokens(enc)} trained)", file=out)
            print(highlight(tokenizer, enc, color), file=out)
        counts["examples"] += 1
        counts["tokens"] += len(enc["input_ids"])
        counts["trained_tokens"] += trained_tokens(enc)
        counts["truncated"] += any(info.values())


def inspect(cfg: TrainConfig, out: Any = sys.stdout) -> dict[str, Any]:
    """Encode every source of cfg.data, print the first cfg.inspect.n examples and the counts.

    With data.val_sources set, also reads the validation files as training does
    (`ta_train.data.read_val_sources`: a missing file names data.val_sources[k].path; each file
    capped at data.val_max_samples records) and returns `val_records` (records read, all files),
    `val_examples` (the capped records that encode: what validation will use) and `val_rejected`
    (malformed lines, and capped records that do not encode).
    """
    from ta_train.data import SourceRecords, read_source, read_val_sources, resolve_source_path
    from ta_train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    color = cfg.inspect.color == "always" or (cfg.inspect.color == "auto" and out.isatty())
    counts: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    val: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as work:
        for source in cfg.data.sources:
            parsed = read_source(resolve_source_path(source, Path(work)), source.format)
            if source.path == "demo":  # its file is a temporary one: name the lines of `ta_data demo`'s sft.jsonl
                parsed.path = "demo (python -m ta_data demo output=DIR: DIR/sft.jsonl)"
            _count_source(cfg, tokenizer, parsed, counts, reasons, cfg.inspect.n, color, out)
        val_items, val_rejects, val_files = read_val_sources(cfg.data, Path(work))
        capped = SourceRecords("data.val_sources", [m for _, _, m in val_items], [n for _, n, _ in val_items], val_rejects)
        _count_source(cfg, tokenizer, capped, val, reasons, 0, color, out)
        val_records = sum(f["records"] for f in val_files.values())
    summary = {k: counts[k] for k in ("examples", "tokens", "trained_tokens", "truncated", "rejected", "lint")}
    share = summary["trained_tokens"] / max(summary["tokens"], 1)
    print(f"\n== {cfg.model.name} x {cfg.data.name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()) + f" (trained share {share:.1%})", file=out)
    if cfg.data.val_sources is not None:
        summary.update(val_records=val_records, val_examples=val["examples"], val_rejected=val["rejected"])
        print(f"== validation (data.val_sources, up to {cfg.data.val_max_samples} per file): examples {val['examples']} "
              f"of {val_records} records read, rejected {val['rejected']} from {', '.join(val_files) or 'no file'}", file=out)
    for reason, n in reasons.most_common(5):
        print(f"   rejected {n}: {reason}", file=out)
    return summary


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    inspect(OmegaConf.to_object(cfg))  # type: ignore[arg-type]


def main() -> None:
    # Inspecting writes nothing: no run directory, no log file.
    sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    _main()


if __name__ == "__main__":
    main()
