"""Live perf/* and token-accuracy metrics in metrics.csv, and a W&B run (offline) readable as a dashboard."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from ta_train.perf import train_flops_per_token
from ta_train.train import fit, run

SMALL = ["batch.micro_size=2", "batch.global_size=4", "data.max_seq_len=128", "trainer.max_steps=3",
         "trainer.val_check_interval=3", "trainer.limit_val_batches=1"]


def columns(run_dir: Path) -> dict[str, list[float]]:
    """metrics.csv as column -> the non-empty values, in row order."""
    out: dict[str, list[float]] = {}
    with (run_dir / "metrics.csv").open() as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if v:
                    out.setdefault(k, []).append(float(v))
    return out


def test_perf_and_token_accuracy_columns_on_cpu_without_a_peak(make_cfg):
    cfg = make_cfg(*SMALL)
    assert cfg.hw.peak_tflops == 0  # the cpu profile has no datasheet peak
    trainer, module, _ = fit(cfg)
    cols = columns(Path(cfg.run_dir))
    for key in ("perf/tokens_per_s", "perf/trained_tokens_per_s", "perf/tflops", "perf/step_s", "perf/max_memory_gb",
                "train/token_acc", "train/grad_norm"):
        assert len(cols[key]) == 3, key  # every optimizer step
    assert "perf/mfu" not in cols and "perf/gpu_util" not in cols
    assert all(0 < t for t in cols["perf/tokens_per_s"])
    assert all(0 < tr < t for tr, t in zip(cols["perf/trained_tokens_per_s"], cols["perf/tokens_per_s"]))
    assert all(0.05 < m < 64 for m in cols["perf/max_memory_gb"])  # peak RSS of this process, GiB
    adapter = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    lo, hi = (train_flops_per_token(cfg.model.arch, n, adapter) for n in (1, cfg.data.max_seq_len))
    for tflops, tps in zip(cols["perf/tflops"], cols["perf/tokens_per_s"]):
        # FLOPs per token of LoRA at a length within the data's (values pass through float32 logging)
        assert lo * 0.999 <= tflops * 1e12 / tps <= hi * 1.001
    assert all(0 <= a <= 1 for a in cols["train/token_acc"] + cols["val/token_acc"])
    data = json.loads((Path(cfg.run_dir) / "data_stats.json").read_text())
    assert cols["data/examples"] == [data["examples"]] and 0 < data["trained_share"] < 1
    assert sum(b["count"] for b in data["len_histogram"]) == data["examples"]


def test_a_measured_peak_gives_mfu(make_cfg):
    cfg = make_cfg(*SMALL, "trainer.max_steps=2", "trainer.limit_val_batches=0", "perf.measure_peak=true")
    fit(cfg)
    cols = columns(Path(cfg.run_dir))
    peak = cols["perf/peak_tflops_measured"][0]
    assert peak > 0 and len(cols["perf/mfu"]) == 2
    for mfu, tflops in zip(cols["perf/mfu"], cols["perf/tflops"]):
        assert mfu == pytest.approx(tflops / peak, rel=1e-4) and 0 < mfu < 1


def wandb_records(path: Path) -> list:
    """Records of an offline run's .wandb file: a ':W&B' header (7 bytes), then LevelDB-log blocks of
    32 KiB whose chunks (4-byte CRC, 2-byte length, 1-byte type: full/first/middle/last) hold protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, chunks = 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if room < 7 or kind == 0:  # block trailer or padding
            pos += room
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        else:
            chunks.append(buf + chunk)
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def test_wandb_offline_run_has_grouped_metrics_config_plan_and_adapter(make_cfg, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(*SMALL, "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=wandb", "logger.log_model=true")
    try:
        run(cfg)
    finally:
        wandb.finish()
    run_dirs = list((Path(cfg.run_dir) / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    assert {"plan.json", "data_stats.json"} <= {p.name for p in (run_dirs[0] / "files").iterdir()}
    # wandb-core writes the .wandb file from its own process; on a busy machine the history records
    # can land after wandb.finish() returns, so read until they are there (30 s at most)
    deadline = time.monotonic() + 30
    while True:
        records = wandb_records(next(run_dirs[0].glob("run-*.wandb")))
        if any(r.WhichOneof("record_type") == "history" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    history, config, axes, artifacts = set(), set(), {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history |= {i.key or "/".join(i.nested_key) for i in r.history.item}
        elif kind == "config":
            config |= {i.key or "/".join(i.nested_key) for i in r.config.update}
        elif kind == "metric":
            axes[r.metric.glob_name or r.metric.name] = r.metric.step_metric
        elif kind == "artifact":
            artifacts[r.artifact.type] = {m.path for m in r.artifact.manifest.contents}
    assert {"train/loss", "train/token_acc", "train/grad_norm", "val/loss", "perf/tokens_per_s", "perf/tflops", "data/trained_share"} <= history
    assert {"model", "optim", "guards", "perf", "params"} <= config
    assert all(axes[f"{g}/*"] == "trainer/global_step" for g in ("train", "val", "perf", "data"))
    assert artifacts["plan"] == {"plan.json", "data_stats.json"}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= artifacts["model"]


def test_val_token_accuracy_equals_a_naive_count_over_the_val_set(make_cfg):
    import torch

    from ta_train.losses import IGNORE_INDEX

    cfg = make_cfg(*SMALL, "trainer.limit_val_batches=null", "peft=none", "optim.lr=1e-3")
    trainer, module, _ = fit(cfg)  # validates once, after the last step: with the final weights
    logged = columns(Path(cfg.run_dir))["val/token_acc"]
    correct = total = 0
    module.eval()
    with torch.no_grad():
        for batch in trainer.datamodule.val_dataloader():
            logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            keep = labels != IGNORE_INDEX
            correct += int((logits[:, :-1].argmax(-1) == labels)[keep].sum())
            total += int(keep.sum())
    assert total > 0 and logged == [pytest.approx(correct / total, abs=1e-6)]
