"""Sweeps (`python -m ta_train -m ...`) and launchers, run and composed through the real CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST, REPO

TINY = [*FAST, "data.max_seq_len=128", "batch.global_size=4", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ta_train", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a subprocess that trains twice: ~30 s of CPU (the summary logic has fast unit tests)
def test_grid_sweep_of_two_jobs_trains_both_and_summarizes_them(tmp_path):
    """The lora_lr grid with its axes narrowed on the command line (the command line wins): 2 jobs."""
    sweep = tmp_path / "sweep"
    proc = cli("-m", "+sweeps=lora_lr", "optim.lr=1e-3,2e-2", "peft.r=8", *TINY, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["n_jobs"] == 2 and summary["metric"] == "val/loss"
    jobs = {j["job"]: j for j in summary["jobs"]}
    assert sorted(jobs) == [0, 1]
    for num, lr in ((0, "0.001"), (1, "0.02")):
        job = jobs[num]
        assert job["status"] == "COMPLETED" and math.isfinite(job["val/loss"])
        assert f"optim.lr={lr}" in job["overrides"] and "peft.r=8" in job["overrides"]
        assert job["dir"] == str(sweep / str(num))
        run = json.loads((sweep / str(num) / "summary.json").read_text())
        assert run["final_val_loss"] == job["val/loss"] and run["steps"] == 2
        cfg = yaml.safe_load((sweep / str(num) / ".hydra" / "config.yaml").read_text())
        assert cfg["peft"]["r"] == 8 and cfg["optim"]["lr"] == float(lr) and cfg["demo"]["question"] is None
    assert summary["best"]["val/loss"] == min(j["val/loss"] for j in jobs.values())
    assert jobs[0]["val/loss"] != jobs[1]["val/loss"]
    assert "== sweep: 2 jobs" in proc.stdout


def hydra_node(*overrides: str) -> dict:
    """`python -m ta_train ... --cfg hydra` parsed (interpolations left as written)."""
    proc = cli(*overrides, "--cfg", "hydra", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout)["hydra"]


def test_shipped_sweeps_compose():
    grid = hydra_node("+sweeps=lora_lr")
    assert grid["mode"] == "MULTIRUN" and grid["sweeper"]["params"] == {"optim.lr": "1e-4,2e-4,5e-4", "peft.r": "8,16,64"}
    assert grid["sweep"]["dir"] == "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}" and grid["sweep"]["subdir"] == "${hydra.job.num}"
    assert grid["callbacks"]["sweep_summary"]["_target_"] == "ta_train.sweep.SweepSummary"
    optuna = hydra_node("+sweeps=optuna", "hydra.sweeper.n_trials=7")
    sweeper = optuna["sweeper"]
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "minimize"
    assert sweeper["n_trials"] == 7 and sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert set(sweeper["params"]) == {"optim.lr", "peft.r"}


def test_slurm_launcher_composes_from_the_trainer_and_hw_settings():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    node = hydra_node("+launcher=slurm", "+hw=a100")
    assert node["launcher"]["_target_"].endswith("SlurmLauncher") and node["mode"] == "MULTIRUN"
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", ["+launcher=slurm", "+hw=2xa6000", "trainer.num_nodes=3", "hw.partition=gpu48"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    resolved = {k: OmegaConf.select(cfg, f"hydra.launcher.{k}") for k in ("nodes", "gpus_per_node", "tasks_per_node", "partition")}
    assert resolved == {"nodes": 3, "gpus_per_node": 2, "tasks_per_node": 2, "partition": "gpu48"}
    assert launcher["timeout_min"] == 1440 and any("NCCL" in line for line in launcher["setup"])
    local = hydra_node("+launcher=local")
    assert local["launcher"]["_target_"] == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.slow  # two real trials plus Optuna's start-up
def test_optuna_sweep_runs_two_trials_and_records_the_best(tmp_path):
    sweep = tmp_path / "optuna"
    proc = cli("-m", "+sweeps=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
               *TINY, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optim.lr", "peft.r"}
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["n_jobs"] == 2 and all(math.isfinite(j["val/loss"]) for j in summary["jobs"])
    assert best["best_value"] == pytest.approx(summary["best"]["val/loss"])
