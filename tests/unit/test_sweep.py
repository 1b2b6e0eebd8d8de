"""Sweep plumbing: the per-job results file, the summary, and the torchrun run-dir check."""
from __future__ import annotations

import json

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from ta_train.__main__ import check_torchrun_output_dir
from ta_train.sweep import RESULTS, SUMMARY, SweepSummary, read_results, summarize, write_result


def job_config(tmp_path, num: int, mode: RunMode = RunMode.MULTIRUN):
    return OmegaConf.create({"hydra": {
        "mode": mode, "job": {"num": num}, "overrides": {"task": [f"optim.lr={num}e-4"]},
        "sweep": {"dir": str(tmp_path)}, "runtime": {"output_dir": str(tmp_path / str(num))},
    }})


def job_return(value=None, error: Exception | None = None) -> JobReturn:
    ret = JobReturn()
    ret.status = JobStatus.FAILED if error else JobStatus.COMPLETED
    ret._return_value = error if error else value
    return ret


def test_each_job_writes_its_record_and_the_summary_ranks_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    cb = SweepSummary()
    cb.on_job_end(job_config(tmp_path, 0), job_return(2.5))
    cb.on_job_end(job_config(tmp_path, 1), job_return(error=RuntimeError("CUDA out of memory")))
    cb.on_job_end(job_config(tmp_path, 2), job_return(1.25))
    cb.on_job_end(job_config(tmp_path, 3), job_return(float("nan")))
    assert sorted(p.name for p in (tmp_path / RESULTS).iterdir()) == ["0.json", "1.json", "2.json", "3.json"]
    cb.on_multirun_end(job_config(tmp_path, 0))
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert [j["job"] for j in summary["jobs"]] == [2, 0, 1, 3]  # best first, then no value in job order
    assert summary["best"]["job"] == 2 and summary["best"]["val/loss"] == 1.25
    assert summary["best"]["overrides"] == ["optim.lr=2e-4"] and summary["best"]["dir"] == str(tmp_path / "2")
    failed = summary["jobs"][2]
    assert failed["status"] == "FAILED" and "CUDA out of memory" in failed["error"] and failed["val/loss"] is None
    out = capsys.readouterr().out
    assert "job   2" in out and "1.2500" in out and "failed" in out


def test_single_runs_and_non_zero_ranks_write_nothing(tmp_path, monkeypatch):
    cb = SweepSummary()
    cb.on_job_end(job_config(tmp_path, 0, RunMode.RUN), job_return(1.0))
    monkeypatch.setenv("RANK", "1")
    cb.on_job_end(job_config(tmp_path, 1), job_return(1.0))
    assert not (tmp_path / RESULTS).exists()


def test_a_rerun_job_replaces_its_record_and_broken_files_are_skipped(tmp_path):
    for record in [{"job": 10, "val/loss": 3.0}, {"job": 2, "val/loss": 2.0}, {"job": 10, "val/loss": 1.0}]:
        write_result(tmp_path, record)
    (tmp_path / RESULTS / "99.json").write_text("{truncated")
    records = read_results(tmp_path)
    assert [(r["job"], r["val/loss"]) for r in records] == [(2, 2.0), (10, 1.0)]  # numeric job order
    assert summarize(records)["best"]["job"] == 10 and not list((tmp_path / RESULTS).glob(".*tmp"))
    assert summarize([])["best"] is None and read_results(tmp_path / "missing") == []


@pytest.mark.parametrize("env, mode, overrides, ok", [
    ({}, RunMode.RUN, [], True),  # plain python
    ({"GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "1"}, RunMode.RUN, [], True),  # torchrun, 1 process
    ({"GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, RunMode.RUN, [], False),
    ({"GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, RunMode.RUN, ["hydra.run.dir=runs/x"], True),
    ({"GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, RunMode.MULTIRUN, ["hydra.run.dir=runs/x"], False),
    ({"GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, RunMode.MULTIRUN, ["hydra.sweep.dir=m/x"], True),
    ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, RunMode.RUN, [], True),  # Lightning's own DDP re-launch pins the dir itself
])
def test_torchrun_needs_a_pinned_output_dir(env, mode, overrides, ok):
    if ok:
        check_torchrun_output_dir(env, mode, overrides)
    else:
        with pytest.raises(SystemExit, match="every rank writes to the same folder"):
            check_torchrun_output_dir(env, mode, overrides)

