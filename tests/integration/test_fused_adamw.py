"""optim.fused in real training of the tiny Llama: fused and default AdamW give the same losses with
clipping active, the module's clipping inside Lightning's loop equals torch.nn.utils.clip_grad_norm_
on the same gradients, train/grad_norm is the pre-clip norm, and 16-mixed unscales before the hooks."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from ta_train.module import CausalLMModule
from ta_train.train import fit
from tests.integration.test_train_tiny import read_metrics

CLIP = 0.01  # far below the tiny model's gradient norms: every step is clipped
COMMON = ["peft=none", "trainer.max_steps=4", "trainer.limit_val_batches=0", "optim.lr=1e-3",
          f"trainer.gradient_clip_val={CLIP}", "checkpoint.every_n_steps=100"]


def probe_clipping(monkeypatch) -> list[dict]:
    """Wrap the module's configure_gradient_clipping: per call, the cached pre-clip norm and the
    largest deviation of the clipped gradients from torch's clip_grad_norm_ on a copy of them."""
    records: list[dict] = []
    original = CausalLMModule.configure_gradient_clipping

    def probe(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        params = [p for p in self.parameters() if p.grad is not None]
        reference = [torch.zeros_like(p) for p in params]
        for r, p in zip(reference, params):
            r.grad = p.grad.detach().clone()
        norm = self.grad_norm()
        original(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
        ref_norm = torch.nn.utils.clip_grad_norm_(reference, gradient_clip_val)
        rel = max(float(((p.grad - r.grad).abs() / r.grad.abs().clamp_min(1e-30)).max()) for p, r in zip(params, reference))
        records.append({"norm": float(norm), "ref_norm": float(ref_norm), "max_rel_diff": rel, "clip": gradient_clip_val})

    monkeypatch.setattr(CausalLMModule, "configure_gradient_clipping", probe)
    return records


def run(make_cfg, tmp_path: Path, name: str, *overrides: str) -> tuple[dict, dict, CausalLMModule]:
    cfg = make_cfg(*COMMON, *overrides, f"run_dir={tmp_path / name}")
    trainer, module, _ = fit(cfg)
    return read_metrics(Path(cfg.run_dir)), trainer, module


def check_clipping(records: list[dict], metrics: dict[int, dict[str, float]]) -> None:
    assert len(records) == len(metrics) == 4  # once per optimizer step (accumulation 2)
    for step, rec in zip(sorted(metrics), records):
        assert rec["clip"] == CLIP and rec["norm"] > 10 * CLIP  # clipping fired
        assert rec["norm"] == pytest.approx(rec["ref_norm"], rel=1e-6)
        assert rec["max_rel_diff"] < 1e-5, rec  # the same clipped gradients as torch's clip_grad_norm_
        assert metrics[step]["train/grad_norm"] == pytest.approx(rec["norm"], rel=1e-6)  # logged before clipping


def test_fused_and_default_adamw_train_alike_with_clipping(make_cfg, tmp_path, monkeypatch):
    records = probe_clipping(monkeypatch)
    default, _, m_default = run(make_cfg, tmp_path, "default", "precision=bf16-mixed")
    check_clipping(records, default)
    records.clear()
    fused, trainer, m_fused = run(make_cfg, tmp_path, "fused", "precision=bf16-mixed", "optim.fused=true")
    check_clipping(records, fused)
    assert trainer.optimizers[0].defaults["fused"] is True
    for step in default:
        assert fused[step]["train/loss"] == pytest.approx(default[step]["train/loss"], rel=1e-6, abs=1e-6), step
        assert fused[step]["train/grad_norm"] == pytest.approx(default[step]["train/grad_norm"], rel=1e-4), step
    for (name, a), b in zip(m_default.model.named_parameters(), m_fused.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_lightnings_own_clipping_refuses_fused_adamw_under_mixed_precision(make_cfg, tmp_path, monkeypatch):
    """The limitation configure_gradient_clipping works around (Lightning 2.6's MixedPrecision.clip_gradients)."""
    monkeypatch.setattr(CausalLMModule, "configure_gradient_clipping", L.LightningModule.configure_gradient_clipping)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping because it performs unscaling"):
        run(make_cfg, tmp_path, "lightning", "precision=bf16-mixed", "optim.fused=true", "trainer.max_steps=1")


def fp16_on_cpu(monkeypatch) -> None:
    """Lightning turns 16-mixed into bf16-mixed on CPU: give its Trainer the fp16 plugin with a real
    GradScaler instead, as on a GPU."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    real_trainer = L.Trainer

    def trainer(*args, precision=None, plugins=(), **kwargs):
        if precision == "16-mixed":
            plugins, precision = [*plugins, MixedPrecision("16-mixed", "cpu")], None
        return real_trainer(*args, precision=precision, plugins=plugins, **kwargs)

    monkeypatch.setattr(L, "Trainer", trainer)


def test_fp16_mixed_unscales_before_the_hooks_with_fused_adamw(make_cfg, tmp_path, monkeypatch):
    """Lightning turns 16-mixed into bf16-mixed on CPU; its fp16 plugin with a real GradScaler is
    passed instead, as on a GPU. Fused (the module unscales after the closure) and default (the
    plugin unscales) must log the same unscaled norms and reach the same losses."""
    fp16_on_cpu(monkeypatch)
    records = probe_clipping(monkeypatch)
    fp16 = ["precision=16-mixed", "data.max_seq_len=128"]  # fp16 autocast is slow on CPU
    default, t_default, _ = run(make_cfg, tmp_path, "default", *fp16)
    check_clipping(records, default)
    records.clear()
    fused, t_fused, _ = run(make_cfg, tmp_path, "fused", *fp16, "optim.fused=true")
    check_clipping(records, fused)
    for trainer in (t_default, t_fused):
        assert trainer.precision_plugin.scaler is not None and trainer.precision == "16-mixed"
    assert t_fused.optimizers[0].defaults["fused"] is True
    assert t_fused.precision_plugin.scaler.get_scale() == t_default.precision_plugin.scaler.get_scale()
    for step in default:
        assert fused[step]["train/grad_norm"] == pytest.approx(default[step]["train/grad_norm"], rel=1e-3), step
        assert fused[step]["train/loss"] == pytest.approx(default[step]["train/loss"], rel=1e-4), step


def test_resume_keeps_the_adamw_step_this_run_built(make_cfg, tmp_path, monkeypatch):
    """torch's load_state_dict takes "fused" from the checkpoint's param groups: an unfused checkpoint
    resumed with optim.fused=true made the fused-built AdamW step unfused, which under the fp16
    GradScaler failed ("Expected grad_scale and found_inf to be None"); and the other way round a
    run with optim.fused=false silently stepped fused. CausalLMModule.on_train_start keeps this run's."""
    fp16_on_cpu(monkeypatch)
    common = ["peft=none", "trainer.limit_val_batches=0", "checkpoint.every_n_steps=1", "precision=16-mixed",
              "data.max_seq_len=128", "trainer.gradient_clip_val=1.0"]
    fit(make_cfg(*common, "trainer.max_steps=1", f"run_dir={tmp_path / 'plain'}"))
    runs = [("plain", "fused", "true", 2, True), ("fused", "back", "false", 3, None)]
    for source, name, fused, steps, expected in runs:
        cfg = make_cfg(*common, f"optim.fused={fused}", f"trainer.max_steps={steps}", f"run_dir={tmp_path / name}",
                       f"ckpt_path={tmp_path / source / 'checkpoints' / 'last.ckpt'}")
        trainer, _, _ = fit(cfg)
        assert trainer.global_step == steps
        assert all(g["fused"] is expected for g in trainer.optimizers[0].param_groups), name
        assert trainer.precision_plugin.scaler is not None
