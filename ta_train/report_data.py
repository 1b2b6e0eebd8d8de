"""Read a finished run directory and reduce it to the numbers `python -m ta_train.report` prints.

Pure Python (csv, json, yaml): no torch, no matplotlib. `metrics.csv` is Lightning's CSVLogger
file: one row per logging call with `epoch`, `step` and a column per metric, empty where the row
did not log that metric (train rows and validation rows are separate).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Series = list[tuple[int, float]]  # (step, value) in file order


@dataclass
class RunData:
    """What a run directory holds that the report needs."""

    run_dir: Path
    metrics: dict[str, Series]  # column -> its non-empty cells
    config: dict[str, Any] = field(default_factory=dict)  # run.json's config, else .hydra/config.yaml
    plan: dict[str, Any] | None = None  # plan.json
    summary: dict[str, Any] | None = None  # summary.json


def read_metrics_csv(path: Path) -> dict[str, Series]:
    """Every metric column as (step, value) pairs, skipping empty cells.

    A cell that is not a number is an error naming the file, the line and the column.
    """
    series: dict[str, Series] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: line 1: no 'step' column in the header {reader.fieldnames}")
        names = [n for n in reader.fieldnames if n not in ("epoch", "step")]
        for name in names:
            series[name] = []
        for row in reader:
            line = reader.line_num
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line}: field 'step': {row['step']!r} is not a number") from None
            for name in names:
                cell = row.get(name)
                if cell in (None, ""):
                    continue
                try:
                    series[name].append((step, float(cell)))
                except ValueError:
                    raise ValueError(f"{path}: line {line}: field {name!r}: {cell!r} is not a number") from None
    return series


def load_run(run_dir: Path) -> RunData:
    """metrics.csv (required), then the config, plan.json and summary.json when present."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.csv"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: not found; RUN_DIR must be a training run directory")
    run = RunData(run_dir=run_dir, metrics=read_metrics_csv(metrics_path))
    # run.json holds the config as the run used it (interpolations resolved: `optim.lr: ${peft.lr}`
    # is a number there); .hydra/config.yaml is the composed text, the fallback for older runs.
    hydra_cfg, run_json = run_dir / ".hydra" / "config.yaml", run_dir / "run.json"
    if run_json.is_file():
        run.config = json.loads(run_json.read_text(encoding="utf-8")).get("config", {})
    elif hydra_cfg.is_file():
        run.config = yaml.safe_load(hydra_cfg.read_text(encoding="utf-8")) or {}
    for name in ("plan", "summary"):
        path = run_dir / f"{name}.json"
        if path.is_file():
            setattr(run, name, json.loads(path.read_text(encoding="utf-8")))
    return run


def _finite(series: Series) -> Series:
    return [(s, v) for s, v in series if math.isfinite(v)]


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def summarize_run(run: RunData) -> dict[str, Any]:
    """The report's numbers. Steps are optimizer steps as logged (0-based `step` column); a value is
    None when its metric was not logged. NaN/inf cells are left out of minima and maxima."""
    m, cfg = run.metrics, run.config
    train_loss = m.get("train/loss", [])
    val_loss = _finite(m.get("val/loss", []))
    grad = _finite(m.get("train/grad_norm", []))
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "model": _get(cfg, "model.name"),
        "model_path": _get(cfg, "model.name_or_path"),
        "peft": _get(cfg, "peft.method"),
        "lora_r": _get(cfg, "peft.r"),
        "lora_alpha": _get(cfg, "peft.alpha"),
        "precision": _get(cfg, "precision.name"),
        "strategy": _get(cfg, "strategy.name"),
        "lr": _get(cfg, "optim.lr"),
        "global_batch": _get(cfg, "batch.global_size"),
        "steps": max(s for s, _ in train_loss) + 1 if train_loss else 0,
        "tokens": int(sum(v for _, v in m.get("train/tokens", []))),
        "final_train_loss": train_loss[-1][1] if train_loss else None,
        "best_val_loss": min(v for _, v in val_loss) if val_loss else None,
        "best_val_step": min(val_loss, key=lambda sv: sv[1])[0] if val_loss else None,
        "final_val_loss": val_loss[-1][1] if val_loss else None,
        "grad_norm_min": min(v for _, v in grad) if grad else None,
        "grad_norm_max": max(v for _, v in grad) if grad else None,
        "final_train_token_acc": _last(m.get("train/token_acc")),
        "final_val_token_acc": _last(m.get("val/token_acc")),
        "nonfinite_train_loss": sum(1 for _, v in train_loss if not math.isfinite(v)),
    }
    for key in ("perf/mfu", "perf/tokens_per_s", "perf/tflops"):
        values = [v for _, v in _finite(m.get(key, []))]
        out[f"mean_{key.split('/')[1]}"] = sum(values) / len(values) if values else None
    memory = [v for _, v in _finite(m.get("perf/max_memory_gb", []))]
    out["measured_max_memory_gb"] = max(memory) if memory else None
    plan = run.plan or {}
    out["plan_peak_gib"] = plan.get("peak_gib")
    out["plan_fits"] = plan.get("fits")
    out["plan_micro_batch"] = plan.get("micro_batch")
    out["plan_accumulation"] = plan.get("accumulation")
    out["plan_devices"] = plan.get("devices")
    out["plan_changes"] = plan.get("changes")
    return out


def _last(series: Series | None) -> float | None:
    return series[-1][1] if series else None
