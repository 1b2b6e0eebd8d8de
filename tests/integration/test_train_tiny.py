"""Real training of the tiny Llama (random weights, SmolLM2's real tokenizer) on the demo course."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import REPO
from ta_train.train import fit


def read_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> the train/* values logged for it."""
    rows: dict[int, dict[str, float]] = {}
    with (run_dir / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                rows[int(row["step"])] = {k: float(v) for k, v in row.items() if k.startswith("train/") and v}
    return rows


class Snapshot(L.Callback):
    """Copies every parameter when training starts."""

    def on_fit_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_tiny_lora_trains_20_steps_loss_falls_and_only_adapters_change(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_steps=20", "optim.lr=2e-2", "trainer.val_check_interval=10", "checkpoint.every_n_steps=10")
    snap = Snapshot()
    trainer, module, tokenizer = fit(cfg, [snap])
    losses = [m["train/loss"] for _, m in sorted(read_metrics(Path(cfg.run_dir)).items())]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, snap.before[n])}
    lora = {n for n, _ in module.model.named_parameters() if "lora_" in n}
    assert lora and changed == lora  # every adapter weight moved, no base weight did
    ckpts = Path(cfg.run_dir) / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and (ckpts / "best.ckpt").is_file()
    state = torch.load(ckpts / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)  # adapter-only checkpoints under LoRA


def test_resume_mid_run_gives_the_same_next_step_loss(make_cfg, tmp_path):
    common = ["trainer.max_steps=6", "checkpoint.every_n_steps=3", "trainer.limit_val_batches=0", "peft.dropout=0.1"]
    whole = make_cfg(*common, f"run_dir={tmp_path / 'whole'}", "data.prefetch=2")  # collated ahead: the same steps
    fit(whole)
    first = make_cfg(*common, f"run_dir={tmp_path / 'first'}")
    fit(first, [StopAt(3)])
    assert max(read_metrics(Path(first.run_dir))) == 2
    resumed = make_cfg(*common, f"run_dir={tmp_path / 'resumed'}", f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    fit(resumed)
    a, b = read_metrics(Path(whole.run_dir)), read_metrics(Path(resumed.run_dir))
    assert sorted(b) == [3, 4, 5]
    for step in (3, 4, 5):
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], abs=1e-6), step
        assert b[step]["train/tokens"] == a[step]["train/tokens"]
        assert b[step]["train/lr"] == pytest.approx(a[step]["train/lr"], rel=1e-9)


def test_resume_in_place_keeps_the_earlier_metrics_and_logs_each_step_once(make_cfg, tmp_path):
    # stopped at step 5 with its checkpoint at 3: steps 3 and 4 are trained (and logged) again
    common = ["trainer.max_steps=6", "checkpoint.every_n_steps=3", "trainer.limit_val_batches=0", f"run_dir={tmp_path}"]
    fit(make_cfg(*common), [StopAt(5)])
    before = read_metrics(tmp_path)
    assert sorted(before) == [0, 1, 2, 3, 4]
    fit(make_cfg(*common, "ckpt_path=last"))
    with (tmp_path / "metrics.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3, 4, 5]  # each once, in order
    after = read_metrics(tmp_path)
    assert all(after[s] == before[s] for s in (0, 1, 2))  # the rows before the checkpoint are the first run's
    for s in (3, 4):  # the same steps trained again from the checkpoint
        assert after[s]["train/loss"] == pytest.approx(before[s]["train/loss"], abs=1e-6)


def test_resume_from_an_epochs_last_batch_starts_the_next_epoch(make_cfg, tmp_path):
    # 62 demo examples / micro 8 = 8 micro-batches = 4 optimizer steps per epoch
    common = ["trainer.max_steps=-1", "trainer.limit_val_batches=0", "checkpoint.every_n_steps=4",
              "batch.micro_size=8", "batch.global_size=16", "data.max_seq_len=128"]
    whole = make_cfg(*common, "trainer.max_epochs=2", f"run_dir={tmp_path / 'whole'}")
    fit(whole)
    one = make_cfg(*common, "trainer.max_epochs=2", f"run_dir={tmp_path / 'one'}")
    fit(one, [StopAt(4)])  # interrupted right after epoch 0's last batch
    resumed = make_cfg(*common, "trainer.max_epochs=2", f"run_dir={tmp_path / 'resumed'}",
                       f"ckpt_path={tmp_path / 'one' / 'checkpoints' / 'last.ckpt'}")
    fit(resumed)
    a, b = read_metrics(Path(whole.run_dir)), read_metrics(Path(resumed.run_dir))
    assert sorted(a) == list(range(8)) and sorted(b) == [4, 5, 6, 7]
    for step in b:  # epoch 1's shuffle, not a replay of epoch 0
        assert b[step]["train/tokens"] == a[step]["train/tokens"]
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], abs=1e-6)


def test_full_fine_tune_changes_base_weights(make_cfg):
    cfg = make_cfg("peft=none", "trainer.max_steps=2", "trainer.limit_val_batches=0", "optim.lr=1e-3")
    snap = Snapshot()
    _, module, _ = fit(cfg, [snap])
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p, snap.before[n])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.embed_tokens.weight" in changed


def test_cli_runs_and_fills_the_run_directory(tmp_path):
    run_dir = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "ta_train", "model=tiny", "trainer.max_steps=5", "trainer.val_check_interval=5",
         "data.max_seq_len=256", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in [".hydra/config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "adapter/adapter_config.json",
                "adapter/adapter_model.safetensors", "adapter/tokenizer_config.json", "adapter/chat_template.jinja",
                "metrics.csv", "summary.json", "data/sft.jsonl", "data/rejects.jsonl", "plan.json"]:
        assert (run_dir / rel).exists(), rel
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 5 and "demo_answer" in summary
    assert "TeachingAssistant run finished" in proc.stdout and str(run_dir / "adapter") in proc.stdout
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/lr", "val/loss", "train/token_acc", "train/grad_norm"} <= set(header)


def test_saved_adapter_loads_with_plain_peft_and_matches(make_cfg):
    from peft import AutoPeftModelForCausalLM

    from ta_train.train import save_outputs

    cfg = make_cfg("trainer.max_steps=3", "optim.lr=5e-3", "trainer.limit_val_batches=0")
    trainer, module, tokenizer = fit(cfg)
    adapter = save_outputs(cfg, trainer, module, tokenizer)
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "What is a loss?"}], add_generation_prompt=True, return_dict=False)])
    module.model.eval()
    with torch.no_grad():
        ours = module.model(input_ids=ids).logits
        theirs = loaded(input_ids=ids).logits
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(theirs, plain, atol=1e-4)  # the adapter is not a no-op
