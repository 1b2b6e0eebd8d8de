"""`python -m ta_train.inspect`: highlighted examples, counts, the doubled-newline lint."""
from __future__ import annotations

import io
import json
import subprocess
import sys

from tests.conftest import REPO
from ta_train.inspect import inspect, lint_double_newlines


def test_lint_reports_newlines_that_meet_the_templates(smollm2_tokenizer):
    messy = [{"role": "user", "content": "\nHi"}, {"role": "assistant", "content": "Hello\n"}]
    found = lint_double_newlines(smollm2_tokenizer, messy)
    assert any("message 0 (user) starts with a newline" in f for f in found)
    clean = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert lint_double_newlines(smollm2_tokenizer, clean) == []


def test_inspect_counts_and_highlights(make_cfg, tmp_path):
    data = tmp_path / "sft.jsonl"
    rows = [
        {"instruction": "What is a tensor?", "input": "", "output": "A multi-dimensional array."},
        {"conversations": [{"role": "user", "content": "\nhi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"role": "user", "content": "only a question"}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    cfg = make_cfg(f"data.sources=[{{path: {data}}}]", "inspect.n=1", "inspect.color=never", "data.system_prompt=null")
    out = io.StringIO()
    summary = inspect(cfg, out)
    text = out.getvalue()
    assert summary["examples"] == 2 and summary["rejected"] == 2 and summary["lint"] == 1
    assert summary["trained_tokens"] > 0 and summary["tokens"] > summary["trained_tokens"]
    assert "[[A multi-dimensional array.<|im_end|>]]" in text
    assert f"{data}:1" in text and "rejected 1: invalid JSON" in text


def test_inspect_cli_writes_no_run_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ta_train.inspect", "model=tiny", "inspect.n=1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== tiny x demo: examples" in proc.stdout
    assert "--- demo (python -m ta_data demo output=DIR: DIR/sft.jsonl):1  (" in proc.stdout  # not a deleted temp file
    assert list(tmp_path.iterdir()) == []
