"""`python -m ta_train.report` on the directory of a real tiny training run."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from ta_train.report import write_report
from ta_train.report_data import read_metrics_csv
from ta_train.train import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def naive_columns(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv split by hand (no csv module): column -> (step, value) for non-empty cells."""
    lines = path.read_text().strip().split("\n")
    header = lines[0].split(",")
    cols: dict[str, list[tuple[int, float]]] = {h: [] for h in header}
    for line in lines[1:]:
        cells = line.split(",")
        for name, cell in zip(header, cells):
            if cell:
                cols[name].append((int(cells[header.index("step")]), float(cell)))
    return cols


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_report_of_a_real_run_has_valid_plots_and_the_runs_numbers(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_steps=4", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
                   "data.max_seq_len=128", "optim.lr=1e-2")
    final = run(cfg)
    run_dir = Path(cfg.run_dir)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "ta_train.report", str(run_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "# Run report" in proc.stdout

    for name in ("loss.png", "lr.png", "grad_norm.png", "token_acc.png"):
        width, height = png_size(out / name)
        assert (width, height) == (700, 400), name

    cols = naive_columns(run_dir / "metrics.csv")
    train_loss, val_loss, grad = cols["train/loss"], cols["val/loss"], cols["train/grad_norm"]
    expected = {
        "steps": 4,
        "tokens": int(sum(v for _, v in cols["train/tokens"])),
        "final_train_loss": train_loss[-1][1],
        "best_val_loss": min(v for _, v in val_loss),
        "final_val_loss": val_loss[-1][1],
        "grad_norm_min": min(v for _, v in grad),
        "grad_norm_max": max(v for _, v in grad),
        "model": "tiny", "peft": "lora", "lora_r": 64,
    }
    got = json.loads((out / "report.json").read_text())
    for key, value in expected.items():
        assert got[key] == value, key
    assert [s for s, _ in val_loss] == [2, 3]  # after step 3 (logged 0-based), then at the final step
    assert math.isclose(got["final_val_loss"], final)  # what run() returned to the sweeper
    assert got["plan_peak_gib"] == json.loads((run_dir / "plan.json").read_text())["peak_gib"]
    md = (out / "report.md").read_text()
    for text in ["| optimizer steps | 4 |", f"{expected['tokens']:,}", f"{expected['best_val_loss']:.4f}",
                 f"{expected['final_val_loss']:.4f}", f"{expected['grad_norm_min']:.4f} / {expected['grad_norm_max']:.4f}",
                 "lora (r=64, alpha=128)", "![loss](loss.png)", "![token_acc](token_acc.png)"]:
        assert text in md, text
    perf = [k for k in ("perf/mfu", "perf/tokens_per_s", "perf/tflops", "perf/max_memory_gb") if cols.get(k)]
    assert (out / "perf.png").exists() == bool(perf)  # perf/* metrics are plotted only when logged
    for key in ("perf/mfu", "perf/tokens_per_s"):
        values = [v for _, v in cols.get(key, []) if math.isfinite(v)]
        mean = got[f"mean_{key.split('/')[1]}"]
        assert mean == (pytest.approx(sum(values) / len(values)) if values else None), key


def test_perf_metrics_get_their_own_plot(tmp_path):
    rows = ["epoch,step,train/loss,perf/mfu,perf/tokens_per_s,val/loss",
            "0,0,2.0,0.41,1000.0,", "0,1,1.5,0.43,1100.0,", "0,1,,,,1.7"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    md = write_report(tmp_path).read_text()
    assert png_size(tmp_path / "report" / "perf.png")[0] == 700
    assert "| mean MFU | 0.4200 |" in md and "| mean tokens/s | 1050.0 |" in md and "![perf](perf.png)" in md
    assert not (tmp_path / "report" / "lr.png").exists()  # not logged: not drawn


def test_bad_cells_and_missing_files_are_named(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,oops\n")
    with pytest.raises(ValueError, match=r"metrics.csv: line 3: field 'train/loss': 'oops'"):
        read_metrics_csv(tmp_path / "metrics.csv")
    proc = subprocess.run([sys.executable, "-m", "ta_train.report", str(tmp_path / "nowhere")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nowhere/metrics.csv: not found" in proc.stderr


def test_config_numbers_come_resolved_from_run_json(tmp_path):
    """`.hydra/config.yaml` keeps `optim.lr: ${peft.lr}` as text; the report reads run.json's number (and says GiB)."""
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss,perf/max_memory_gb\n0,0,2.0,1.5\n")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("peft:\n  method: lora\n  lr: 0.0002\noptim:\n  lr: ${peft.lr}\n")
    (tmp_path / "run.json").write_text(json.dumps({"config": {"peft": {"method": "lora", "lr": 2e-4}, "optim": {"lr": 2e-4}}}))
    md = write_report(tmp_path).read_text()
    assert "| peak learning rate | 0.0002 |" in md and "| memory: measured peak | 1.500 GiB (perf/max_memory_gb) |" in md
    assert json.loads((tmp_path / "report" / "report.json").read_text())["lr"] == 2e-4
    (tmp_path / "run.json").unlink()  # an older run without run.json: the composed yaml still reports
    assert "| peft | lora " in write_report(tmp_path).read_text()
