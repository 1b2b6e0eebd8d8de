"""Hydra callback that collects each sweep job's objective into one summary per sweep.

Every job of a multirun (basic launcher, Optuna, SLURM through submitit) writes its own
`<sweep dir>/sweep_results/<job number>.json` when it ends, from the process that ran it: one file
per job, written to a temp name and renamed, so jobs finishing together on different nodes of a
shared file system never write to the same file (appending to one file is not atomic over NFS).
When the sweep ends, the sweeper's process reads them back and writes
`<sweep dir>/sweep_summary.json` (jobs sorted by `val/loss`, best first) and prints a table.

Only Hydra and the standard library are imported: Hydra builds this callback before `--cfg job`.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESULTS = "sweep_results"  # folder, one <job number>.json per job
SUMMARY = "sweep_summary.json"
METRIC = "val/loss"


def is_rank_zero() -> bool:
    """True in the process that speaks for a job: ranks > 0 (torchrun, SLURM tasks) stay quiet."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "0") != "0":
            return False
    return True


def job_record(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    """One job's line: number, overrides, output dir, status, and the value its main returned."""
    hydra_cfg = config.hydra
    record: dict[str, Any] = {
        "job": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
        "dir": str(hydra_cfg.runtime.output_dir),
        "status": job_return.status.name,
        METRIC: None,
    }
    if job_return.status == JobStatus.COMPLETED:
        value = job_return.return_value
        record[METRIC] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    else:
        record["error"] = f"{type(job_return._return_value).__name__}: {job_return._return_value}"
    return record


def write_result(sweep_dir: Path, record: dict[str, Any]) -> Path:
    """`<sweep dir>/sweep_results/<job>.json`, replaced whole (a re-run job overwrites its file)."""
    folder = sweep_dir / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['job']}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs' records in job order; a file that is not a job record is skipped with a warning."""
    records = []
    for path in sorted((sweep_dir / RESULTS).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            record["job"] = int(record["job"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            log.warning("%s: not a sweep job record (%s), skipped", path, err)
            continue
        records.append(record)
    return sorted(records, key=lambda r: r["job"])


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Jobs sorted by val/loss (jobs without a value last, in job order) and the best one."""
    ranked = sorted(records, key=lambda r: (r[METRIC] is None, r[METRIC] if r[METRIC] is not None else 0.0, r["job"]))
    best = ranked[0] if ranked and ranked[0][METRIC] is not None else None
    return {"metric": METRIC, "direction": "minimize", "n_jobs": len(records), "best": best, "jobs": ranked}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"== sweep: {summary['n_jobs']} jobs, {METRIC} (lower is better) =="]
    for r in summary["jobs"]:
        value = f"{r[METRIC]:.4f}" if r[METRIC] is not None else r["status"].lower()
        lines.append(f"  job {r['job']:>3}  {value:>10}  {' '.join(r['overrides'])}")
    if summary["best"]:
        lines.append(f"best: job {summary['best']['job']} ({summary['best']['dir']})")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Registered in conf/train.yaml under `hydra.callbacks`; does nothing in single-run mode."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not is_rank_zero():
            return
        write_result(Path(config.hydra.sweep.dir), job_record(config, job_return))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        summary = summarize(read_results(sweep_dir))
        (sweep_dir / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(format_summary(summary), flush=True)
