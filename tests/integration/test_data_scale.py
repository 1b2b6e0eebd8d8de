"""The per-record stages run under Hugging Face `datasets.map(num_proc=2)` give the pipeline's bytes."""
from __future__ import annotations

import pytest

from ta_data.config import compose_config
from ta_data.demo import COURSE_DIR
from ta_data.pipeline import run
from ta_data.stage_io import stage_file
from ta_data.stages_doc import RecordStage

datasets = pytest.importorskip("datasets")


@pytest.mark.slow  # ~25 s: datasets import + two spawned workers per stage
def test_datasets_map_matches_the_pipeline(tmp_path):
    out = tmp_path / "out"
    cfg, plain = compose_config([f"input={COURSE_DIR}", f"output={out}", "progress=false", "keep_raw_stages=true"])
    for stage in ("read", "clean", "quality", "pii"):
        cfg.stage = stage
        run(cfg, plain)
    src = stage_file(out, "read")
    for stage in ("clean", "quality", "pii"):
        ds = datasets.load_dataset("text", data_files=str(src), split="train", cache_dir=str(tmp_path / "hf"))
        mapped = ds.map(RecordStage(stage, cfg), num_proc=2, remove_columns=["text"])
        lines = [r["out"] for r in mapped if r["out"]]
        assert "\n".join(lines) + "\n" == stage_file(out, stage).read_text(encoding="utf-8")
        src = stage_file(out, stage)


def test_record_stage_refuses_corpus_stages():
    cfg, _ = compose_config(["input=x", "output=y"])
    with pytest.raises(ValueError, match="not a per-record stage"):
        RecordStage("dedup", cfg)
