"""DDP with 2 CPU processes (gloo) on the tiny model, launched the way a user launches it."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

DDP = ["strategy=ddp", "trainer.devices=2", "batch.global_size=8", "batch.micro_size=2",  # 2 x 2 accumulation x 2 ranks
       "data.max_seq_len=128", "trainer.max_steps=8", "optim.lr=2e-2", "trainer.val_check_interval=8",
       "trainer.limit_val_batches=1"]


def rank_errors(stderr: str, keep: int = 2500) -> str:
    """The end of each rank's own stderr lines (Lightning prefixes them "[rankN]:"), then the end of
    the rest: when one rank dies, the survivor's tail alone only says "connection closed by peer"."""
    import re

    by_rank: dict[str, list[str]] = {}
    for line in stderr.splitlines():
        m = re.match(r"\[rank(\d+)\]:", line)
        by_rank.setdefault(m.group(1) if m else "-", []).append(line)
    return "\n".join(f"--- rank {r} ---\n" + "\n".join(lines)[-keep:] for r, lines in sorted(by_rank.items()))


def train_losses(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r["train/loss"]]


@pytest.mark.slow  # two processes start torch + Lightning: ~1-2 min on 2 shared cores
def test_ddp_two_cpu_ranks_train_in_lockstep_and_write_one_adapter(tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "ddp_probe.py"), str(run_dir), *DDP],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, rank_errors(proc.stderr)
    ranks = [torch.load(run_dir / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert w0 and w0.keys() == w1.keys() and all("lora_" in n for n in w0)
    for name in w0:  # gradients were all-reduced every step: identical weights on both ranks
        assert torch.equal(w0[name], w1[name]), name
    losses = train_losses(run_dir)
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    from safetensors.torch import load_file

    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")  # written by rank 0 only
    assert len(saved) == len(w0)
    rank0 = {n.replace(".default", ""): t for n, t in w0.items()}
    for name, tensor in saved.items():
        assert torch.equal(tensor, rank0[name]), name


@pytest.mark.slow
def test_ddp_from_the_cli_shares_one_hydra_run_dir(tmp_path):
    """Lightning re-launches `python -m ta_train ...` for rank 1 with hydra.run.dir pinned to rank 0's."""
    run_dir = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "ta_train", "model=tiny", "+hw=cpu", "trainer.enable_progress_bar=false",
                           "demo.question=null", *DDP, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, rank_errors(proc.stderr)
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["final_val_loss"] < 12.5
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    losses = train_losses(run_dir)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


@pytest.mark.slow
def test_torchrun_ranks_are_used_by_lightning_and_need_a_pinned_run_dir(tmp_path):
    """`torchrun --nproc_per_node=2 -m ta_train ...`: Lightning joins torchrun's 2 processes, spawns none."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "ta_train", "model=tiny",
                "+hw=cpu", "trainer.enable_progress_bar=false", "demo.question=null", *DDP]
    refused = subprocess.run(torchrun, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "pass hydra.run.dir=DIR" in refused.stderr
    run_dir = tmp_path / "torchrun"
    proc = subprocess.run([*torchrun, f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, rank_errors(proc.stderr)
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "train_ddp_process_1" not in log  # no second launcher
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torchrun"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and math.isfinite(summary["final_val_loss"])
    assert log.count("TeachingAssistant run finished") == 1  # rank 0 only


@pytest.mark.slow
def test_guards_under_ddp_name_the_examples_of_every_rank(tmp_path):
    """Rank 1 alone holds a spiking window (step 4) and a NaN micro-batch (step 6): both ranks stop at
    step 6, and spikes.jsonl / summary.json (written by rank 0) name rank 1's examples."""
    run_dir = tmp_path / "guards"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    overrides = [*DDP, "optim.lr=1e-3", "trainer.limit_val_batches=0", "guards.spike_min_history=3", "guards.skip_spikes=true"]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "ddp_guard_probe.py"), str(run_dir), *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, rank_errors(proc.stderr)
    r0, r1 = (json.loads((run_dir / f"guard_rank{r}.json").read_text()) for r in (0, 1))
    assert r0["origins"] == r1["origins"]  # example ids index the same global rows on every rank
    origins = r0["origins"]
    poisoned = r1["poisoned"]
    assert poisoned and not set(poisoned) & set(r0["seen"]["6"])  # the NaN rows live on rank 1 only
    named = [origins[i] for i in dict.fromkeys(poisoned)]
    assert r0["stopped_at"] == r1["stopped_at"] == 6
    assert r0["examples"] == r1["examples"] == named
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["examples"] == named and "the training loss is nan" in summary["stop_reason"]
    spikes = [json.loads(line) for line in (run_dir / "spikes.jsonl").read_text().splitlines()]
    assert [s["step"] for s in spikes] == [4] and spikes[0]["skipped"]
    both = r0["seen"]["4"] + r1["seen"]["4"]  # rank order
    assert spikes[0]["example_ids"] == both
    assert spikes[0]["examples"] == [origins[i] for i in dict.fromkeys(both)]
