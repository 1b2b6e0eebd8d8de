"""Each guard provoked on the tiny model: an all-masked dataset, an absurd LR, a poisoned batch, a
fully masked batch, a loss spike, and validation loss rising while training loss falls."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from ta_train.guards import OverfitStopping, TrainingStopped, stop_reason
from ta_train.train import fit, run

# one micro-batch of 2 short examples per optimizer step, no validation unless a test asks
SMALL = ["batch.micro_size=2", "batch.global_size=2", "data.max_seq_len=128", "trainer.limit_val_batches=0"]


def test_data_without_trained_tokens_refuses_to_start(make_cfg, tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"question {i}?"}]}) + "\n" for i in range(6)))
    cfg = make_cfg(*SMALL, f"data.sources=[{{path:'{path}'}}]")
    with pytest.raises(ValueError, match=r"refusing to train: the data has no trained tokens .*6 records rejected because every label would be -100"):
        fit(cfg)
    assert len((Path(cfg.run_dir) / "data" / "rejects.jsonl").read_text().splitlines()) == 6


def test_absurd_lr_stops_on_nan_and_keeps_the_last_good_checkpoint(make_cfg):
    cfg = make_cfg(*SMALL, "optim.lr=1e6", "trainer.max_steps=8", "checkpoint.every_n_steps=1")
    with pytest.raises(TrainingStopped, match="lower optim.lr") as err:
        fit(cfg)
    run_dir = Path(cfg.run_dir)
    step = err.value.step
    assert "training loss is nan" in err.value.reason or "gradient norm is" in err.value.reason
    assert err.value.examples and all(e.startswith(str(run_dir / "data" / "sft.jsonl")) for e in err.value.examples)
    # the checkpoint of `step` held the weights that broke: last.ckpt is the one before, and it is finite
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] < step and all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped"] and summary["step"] == step and "Likely causes" in summary["stop_reason"]


class PoisonAt(L.Callback):
    """At optimizer step `step`, the embedding output turns NaN (what a NaN in float inputs does)."""

    def __init__(self, step: int):
        self.step, self.ids, self.hook = step, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.hook is None:
            self.ids, self.origins = list(batch["example_ids"]), trainer.datamodule.train_origins
            emb = pl_module.model.get_input_embeddings()
            self.hook = emb.register_forward_hook(lambda m, i, out: out * float("nan"))


def test_poisoned_batch_is_named_and_no_checkpoint_follows_it(make_cfg):
    cfg = make_cfg(*SMALL, "trainer.max_steps=6", "checkpoint.every_n_steps=1")
    poison = PoisonAt(2)
    with pytest.raises(TrainingStopped, match="training stopped at step 2: the training loss is nan") as err:
        fit(cfg, [poison])
    assert err.value.examples == [poison.origins[i] for i in dict.fromkeys(poison.ids)]  # file:line of each
    ckpts = Path(cfg.run_dir) / "checkpoints"
    # last.ckpt of step 2 holds the weights the poisoned step ran with: set aside, step 1's is back
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 1
    assert torch.load(ckpts / "last-unverified.ckpt", weights_only=False)["global_step"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["last-unverified.ckpt", "last.ckpt"]


class MaskAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["labels"].fill_(-100)
            batch["trained_index"] = batch["trained_index"][:0]  # made from the labels when collated


def test_fully_masked_batch_stops_on_zero_loss(make_cfg):
    cfg = make_cfg(*SMALL, "trainer.max_steps=4")
    with pytest.raises(TrainingStopped, match="exactly 0.*no trained token") as err:
        fit(cfg, [MaskAt(1)])
    assert err.value.step == 1


class SpikeAt(L.Callback):
    """At step `step` the logits are scaled x30 (a batch the model finds absurdly hard);
    records the adapter weights before and after that step."""

    def __init__(self, step: int):
        self.step, self.ids, self.hook, self.before, self.after = step, None, None, None, None

    def _lora(self, pl_module):
        return {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if "lora_" in n}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.ids = list(batch["example_ids"])
            self.before = self._lora(pl_module)
            head = pl_module.model.get_output_embeddings()
            self.hook = head.register_forward_hook(lambda m, i, out: out * 30)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hook is not None and self.after is None:
            self.hook.remove()
            self.after = self._lora(pl_module)


def test_loss_spike_is_logged_with_its_examples_and_skipped(make_cfg):
    cfg = make_cfg(*SMALL, "trainer.max_steps=6", "guards.spike_min_history=3", "guards.skip_spikes=true", "optim.lr=1e-3")
    spike = SpikeAt(4)
    trainer, module, _ = fit(cfg, [spike])
    records = [json.loads(line) for line in (Path(cfg.run_dir) / "spikes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4]
    assert records[0]["skipped"] and records[0]["zscore"] > 6 and records[0]["example_ids"] == spike.ids
    origins = trainer.datamodule.train_origins
    assert records[0]["examples"] == [origins[i] for i in dict.fromkeys(spike.ids)]
    assert all(torch.equal(spike.before[n], spike.after[n]) for n in spike.before)  # the update was dropped
    assert trainer.global_step == 6


class ValWorsens(L.Callback):
    """Validation k sees its logits scaled by 1 + 0.5k: val loss rises while training goes on."""

    def __init__(self, start: int = 0):
        self.k, self.hook = start, None

    def on_validation_start(self, trainer, pl_module):
        scale = 1 + 0.5 * self.k
        self.hook = pl_module.model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * scale)
        self.k += 1

    def on_validation_end(self, trainer, pl_module):
        self.hook.remove()


def test_val_rising_while_train_falls_stops_early_with_the_reason_in_the_summary(make_cfg, monkeypatch):
    cfg = make_cfg("batch.micro_size=2", "batch.global_size=2", "data.max_seq_len=128", "optim.lr=2e-2",
                   "trainer.max_steps=12", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                   "guards.early_stopping.patience=2", "checkpoint.every_n_steps=100")
    callbacks = [ValWorsens()]
    monkeypatch.setattr("ta_train.train.build_trainer", _with_callbacks(callbacks))
    run(cfg)
    summary = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert summary["steps"] == 6  # validations after steps 2 (best), 4 and 6: patience 2 runs out
    assert summary["stop_reason"].startswith("early stopping at step 6: overfitting: val/loss")
    assert "train loss fell from" in summary["stop_reason"]


class CrashAt(L.Callback):
    """Raises at the start of step `step`, after the checkpoint of the step before was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_overfit_stopping_keeps_its_history_across_a_resume_from_last_ckpt(make_cfg, tmp_path):
    common = ["batch.micro_size=2", "batch.global_size=2", "data.max_seq_len=128", "optim.lr=2e-2",
              "trainer.max_steps=12", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
              "guards.early_stopping.patience=2", "checkpoint.every_n_steps=1"]
    first = make_cfg(*common, f"run_dir={tmp_path / 'first'}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(first, [ValWorsens(), CrashAt(5)])  # validations after steps 2 (best) and 4, then a crash
    last = Path(first.run_dir) / "checkpoints" / "last.ckpt"
    key = OverfitStopping(2, first.guards.early_stopping.min_delta).state_key
    saved = torch.load(last, weights_only=False)
    state = saved["callbacks"][key]
    assert saved["global_step"] == 5 and state["wait_count"] == 1 and state["train_at_best"] is not None
    resumed = make_cfg(*common, f"run_dir={tmp_path / 'resumed'}", f"ckpt_path={last}")
    trainer, _, _ = fit(resumed, [ValWorsens(start=2)])
    # the validation after step 6 runs out patience 2 and compares with the training loss at step 2's
    # best, as the uninterrupted run does (test above)
    reason = stop_reason(trainer)
    assert trainer.global_step == 6, reason
    assert reason.startswith("early stopping at step 6: overfitting: val/loss")
    assert f"train loss fell from {state['train_at_best']:.4f} to" in reason


def test_overfit_stopping_state_round_trips_under_a_key_of_its_settings():
    a, b = OverfitStopping(patience=2, min_delta=0.0), OverfitStopping(patience=5, min_delta=0.01)
    assert a.state_key != b.state_key and "patience" in a.state_key
    a._recent, a._seen_step, a.train_at_best, a.train_now, a.wait_count = [2.5, 2.25], 7, 3.0, 2.75, 1
    a.best_score = torch.tensor(1.5)
    c = OverfitStopping(patience=2, min_delta=0.0)
    c.load_state_dict(a.state_dict())
    assert (c._recent, c._seen_step, c.train_at_best, c.train_now, c.wait_count) == ([2.5, 2.25], 7, 3.0, 2.75, 1)
    assert float(c.best_score) == 1.5 and c.state_key == a.state_key


def _with_callbacks(callbacks):
    from ta_train import train

    original = train.build_trainer

    def build(cfg, run_dir, extra_callbacks=None):
        return original(cfg, run_dir, [*(extra_callbacks or []), *callbacks])

    return build
