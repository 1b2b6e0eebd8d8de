"""perf.fused_ce=true trains the real tiny model to the same losses and accuracies as the full logits."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from ta_train.train import fit


def logged(run_dir: Path) -> tuple[dict[int, dict[str, float]], list[dict[str, float]]]:
    """(step -> train/* values, the val/* rows in order) from metrics.csv."""
    train, val = {}, []
    with (run_dir / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row.get("train/loss"):
                train[int(row["step"])] = {k: float(v) for k, v in row.items() if k.startswith("train/") and v}
            if row.get("val/loss"):
                val.append({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    return train, val


def run_both(make_cfg, tmp_path: Path, *overrides: str):
    out = {}
    for fused in (False, True):
        cfg = make_cfg(*overrides, f"perf.fused_ce={str(fused).lower()}", f"run_dir={tmp_path / f'fused-{fused}'}")
        _, module, _ = fit(cfg)
        assert (module._fused is not None) == fused  # the fused path really ran (no silent fallback)
        params = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        out[fused] = (*logged(Path(cfg.run_dir)), params)
    return out[False], out[True]


def assert_same_run(unfused, fused, steps: int) -> None:
    (train0, val0, params0), (train1, val1, params1) = unfused, fused
    assert sorted(train0) == sorted(train1) == list(range(steps))
    for step in train0:
        assert train1[step]["train/loss"] == pytest.approx(train0[step]["train/loss"], abs=1e-5), step
        assert train1[step]["train/token_acc"] == train0[step]["train/token_acc"], step
        assert train1[step]["train/tokens"] == train0[step]["train/tokens"], step
    assert len(val0) == len(val1) >= 1
    for a, b in zip(val0, val1):
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=1e-5)
        assert b["val/token_acc"] == a["val/token_acc"]
    for name, p in params0.items():  # the updates agree too, not only the logged numbers
        torch.testing.assert_close(params1[name], p, rtol=1e-4, atol=1e-5, msg=name)


# Learning rates stay moderate: Adam turns float-rounding noise in near-zero gradient entries into
# whole lr-sized steps, so at lr 2e-2 two equal runs drift apart by ~1e-4 in loss by step 3.
@pytest.mark.slow  # two training runs: ~40-70 s on 2 busy cores
def test_full_fine_tune_with_tied_embeddings_matches_the_unfused_run(make_cfg, tmp_path):
    # tiny: lm_head is the embedding (tied), trained; 2 micro-batches per step, 3 steps, chunks of 64 rows
    common = ["peft=none", "optim.lr=1e-3", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "trainer.limit_val_batches=2", "checkpoint.every_n_steps=100", "perf.ce_chunk_rows=64"]
    assert_same_run(*run_both(make_cfg, tmp_path, *common), steps=3)


@pytest.mark.slow  # two training runs: ~40 s on 2 busy cores
def test_lora_with_packing_matches_the_unfused_run(make_cfg, tmp_path):
    # LoRA: frozen (tied) head, no weight gradient; packed rows: position_ids and no attention mask
    common = ["peft=lora", "optim.lr=2e-3", "data.packing=true", "trainer.max_steps=3", "trainer.val_check_interval=3",
              "trainer.limit_val_batches=2", "checkpoint.every_n_steps=100", "perf.ce_chunk_rows=100"]
    assert_same_run(*run_both(make_cfg, tmp_path, *common), steps=3)
