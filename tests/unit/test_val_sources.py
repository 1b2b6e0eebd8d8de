"""Explicit validation files (`data.val_sources`, e.g. ta_data's val.jsonl) instead of a val_fraction split."""
from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path

import pytest

from ta_train.data import count_overlap, read_val_sources, select_val


def _alpaca(i: int) -> dict:
    return {"instruction": f"What is fact number {i}?", "input": "", "output": f"Fact {i} is true."}


def write_jsonl(path: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(f"{x}\n" for x in extra_lines), encoding="utf-8")
    return path


# -- config --------------------------------------------------------------------------------------

def test_teaching_mix_validates_on_the_pipelines_val_jsonl(make_cfg, tmp_path):
    cfg = make_cfg("data=teaching_mix", f"data.dir={tmp_path}")
    assert [s.path for s in cfg.data.val_sources] == [f"{tmp_path}/val.jsonl"]
    assert cfg.data.val_sources[0].format == "auto"
    assert make_cfg("data=teaching_mix", f"data.dir={tmp_path}", "data.val_sources=null").data.val_sources is None


def test_demo_and_explicit_sources_keep_the_split(make_cfg, tmp_path):
    assert make_cfg("data=demo").data.val_sources is None
    cfg = make_cfg(f"data.val_sources=[{{path: {tmp_path}/v.jsonl, format: sharegpt}}]")
    assert cfg.data.val_sources[0].path == f"{tmp_path}/v.jsonl" and cfg.data.val_sources[0].format == "sharegpt"


@pytest.mark.parametrize("override, message", [
    ("data.val_sources=[{pth: v.jsonl}]", "pth"),
    ("data.val_sources=[{path: v.jsonl, format: csv}]", "data.sources[].format"),
])
def test_a_bad_val_source_fails_at_composition(make_cfg, override, message):
    with pytest.raises(Exception, match=message.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        make_cfg(override)


# -- pure helpers --------------------------------------------------------------------------------

def test_select_val_keeps_everything_that_fits_else_a_seeded_subset_in_file_order():
    assert select_val(5, 8, seed=1) == [0, 1, 2, 3, 4]
    assert select_val(0, 8, seed=1) == []
    picked = select_val(100, 10, seed=1)
    assert len(picked) == 10 and picked == sorted(set(picked)) and all(0 <= i < 100 for i in picked)
    assert select_val(100, 10, seed=1) == picked  # deterministic
    assert select_val(100, 10, seed=2) != picked
    assert select_val(100, 0, seed=1) == []


def test_count_overlap_matches_a_naive_pairwise_count():
    rng = random.Random(0)

    def ex() -> dict[str, list[int]]:
        ids = [rng.randrange(4) for _ in range(rng.randrange(1, 4))]
        return {"input_ids": ids, "labels": [rng.choice([-100, t]) for t in ids]}

    for _ in range(50):
        train, val = [ex() for _ in range(rng.randrange(0, 8))], [ex() for _ in range(rng.randrange(0, 8))]
        naive = sum(1 for v in val if any(v["input_ids"] == t["input_ids"] and v["labels"] == t["labels"] for t in train))
        assert count_overlap(train, val) == naive
    same_ids = {"input_ids": [1, 2], "labels": [-100, 2]}
    assert count_overlap([same_ids], [{"input_ids": [1, 2], "labels": [1, 2]}]) == 0  # labels differ: not a leak


# -- reading -------------------------------------------------------------------------------------

def test_val_file_malformed_lines_are_rejects_naming_file_line_and_reason(make_cfg, tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", [_alpaca(0)], ("{broken", json.dumps({"prompt": "neither"})))
    cfg = make_cfg(f"data.val_sources=[{{path: {val}}}]")
    items, rejects, per_source = read_val_sources(cfg.data, tmp_path)
    assert [(f, line) for f, line, _ in items] == [(str(val), 1)]
    assert [(r.file, r.line) for r in rejects] == [(str(val), 2), (str(val), 3)]
    assert "invalid JSON" in rejects[0].reason and "neither Alpaca" in rejects[1].reason
    assert per_source == {str(val): {"records": 1, "rejected": 2, "val": 1}}


def test_val_max_samples_caps_each_file(make_cfg, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [_alpaca(i) for i in range(30)])
    b = write_jsonl(tmp_path / "b.jsonl", [_alpaca(100 + i) for i in range(4)])
    cfg = make_cfg(f"data.val_sources=[{{path: {a}}}, {{path: {b}}}]", "data.val_max_samples=10")
    items, _, per_source = read_val_sources(cfg.data, tmp_path)
    assert per_source[str(a)]["val"] == 10 and per_source[str(b)]["val"] == 4 and len(items) == 14
    assert read_val_sources(cfg.data, tmp_path)[0] == items


def test_a_missing_val_file_is_an_error_naming_the_path_and_the_way_back(make_cfg, tmp_path):
    cfg = make_cfg(f"data.val_sources=[{{path: {tmp_path}/nope/val.jsonl}}]")
    with pytest.raises(FileNotFoundError) as err:
        read_val_sources(cfg.data, tmp_path)
    assert f"{tmp_path}/nope/val.jsonl" in str(err.value) and "data.val_sources[0].path" in str(err.value)
    assert "data.val_sources=null" in str(err.value)


# -- the datamodule --------------------------------------------------------------------------------

def _datamodule(cfg, tokenizer, work: Path):
    from ta_train.datamodule import SFTDataModule

    dm = SFTDataModule(cfg.data, tokenizer, micro_size=2, accumulation=1, train_on="assistant", work_dir=work)
    dm.setup("fit")
    return dm


def test_explicit_val_trains_on_every_record_and_validates_on_the_file(make_cfg, smollm2_tokenizer, tmp_path, caplog):
    train = write_jsonl(tmp_path / "sft.jsonl", [_alpaca(i) for i in range(20)])
    val = write_jsonl(tmp_path / "val.jsonl", [_alpaca(100 + i) for i in range(5)] + [_alpaca(3)], ("{broken",))
    cfg = make_cfg(f"data.sources=[{{path: {train}}}]", f"data.val_sources=[{{path: {val}}}]", "data.val_fraction=0.5")
    with caplog.at_level(logging.WARNING, logger="ta_train.datamodule"):
        dm = _datamodule(cfg, smollm2_tokenizer, tmp_path / "work")
    assert dm.stats["sources"][str(train)] == {"records": 20, "rejected": 0, "train": 20, "val": 0}
    assert dm.stats["train_examples"] == 20 and dm.stats["val_examples"] == 6
    assert dm.stats["val_sources"] == {str(val): {"records": 6, "rejected": 1, "val": 6}}
    assert dm.stats["val_overlap_train"] == 1  # _alpaca(3) is in both files
    assert "1 of 6 validation examples are identical to a training example" in caplog.text
    assert dm.report["val_sources"] == [str(val)] and dm.report["val_examples"] == 6
    rejects = [json.loads(x) for x in (tmp_path / "work" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [(str(val), 7)]
    on_disk = json.loads((tmp_path / "work" / "stats.json").read_text())
    assert on_disk["val_sources"][str(val)]["val"] == 6
    assert len(dm.val_dataloader()) == 3  # 6 examples, micro-batches of 2


def test_an_empty_val_file_warns_and_turns_validation_off(make_cfg, smollm2_tokenizer, tmp_path, caplog):
    train = write_jsonl(tmp_path / "sft.jsonl", [_alpaca(i) for i in range(6)])
    val = write_jsonl(tmp_path / "val.jsonl", [])
    cfg = make_cfg(f"data.sources=[{{path: {train}}}]", f"data.val_sources=[{{path: {val}}}]")
    with caplog.at_level(logging.WARNING, logger="ta_train.datamodule"):
        dm = _datamodule(cfg, smollm2_tokenizer, tmp_path / "work")
    assert dm.val_examples == [] and len(dm.val_dataloader()) == 0 and dm.stats["train_examples"] == 6
    assert f"no validation: data.val_sources ({val}) gave no examples" in caplog.text


def test_without_val_sources_the_split_and_stats_are_unchanged(make_cfg, smollm2_tokenizer, tmp_path):
    from ta_train.data import split_indices

    train = write_jsonl(tmp_path / "sft.jsonl", [_alpaca(i) for i in range(20)])
    cfg = make_cfg(f"data.sources=[{{path: {train}}}]", "data.val_fraction=0.2")
    dm = _datamodule(cfg, smollm2_tokenizer, tmp_path / "work")
    tr, va = split_indices(20, 0.2, cfg.data.val_max_samples, cfg.data.shuffle_seed)
    assert dm.stats["sources"][str(train)] == {"records": 20, "rejected": 0, "train": len(tr), "val": len(va)}
    assert set(dm.stats) == {"sources", "train_examples", "train_rows", "val_examples", "train_tokens",
                             "train_trained_tokens", "truncated", "rejected"}
    assert "val_sources" not in dm.report and dm.stats["val_examples"] == len(va) == 4


# -- what the user sees ----------------------------------------------------------------------------

def test_data_report_names_the_val_set_only_when_explicit():
    from ta_train.metrics import data_report, format_report

    report = data_report([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], [], 8)
    assert "validation" not in format_report(report)
    report.update(val_sources=["/d/val.jsonl"], val_examples=7, val_overlap_train=0)
    assert "data: validation 7 examples from /d/val.jsonl, 0 identical to a training example" in format_report(report)


def test_inspect_counts_the_val_files(make_cfg, tmp_path):
    from ta_train.inspect import inspect

    train = write_jsonl(tmp_path / "sft.jsonl", [_alpaca(i) for i in range(3)])
    val = write_jsonl(tmp_path / "val.jsonl", [_alpaca(10), _alpaca(11)], ("{broken",))
    cfg = make_cfg(f"data.sources=[{{path: {train}}}]", f"data.val_sources=[{{path: {val}}}]", "inspect.n=1",
                   "inspect.color=never")
    out = io.StringIO()
    summary = inspect(cfg, out)
    assert summary["examples"] == 3 and summary["rejected"] == 0
    assert summary["val_records"] == 2 and summary["val_examples"] == 2 and summary["val_rejected"] == 1
    cap = cfg.data.val_max_samples
    assert f"== validation (data.val_sources, up to {cap} per file): examples 2 of 2 records read, rejected 1 from {val}" in out.getvalue()
    plain = make_cfg(f"data.sources=[{{path: {train}}}]", "inspect.n=0", "inspect.color=never")
    assert "val_examples" not in inspect(plain, io.StringIO())


def test_inspect_counts_the_capped_val_set_and_names_a_missing_val_file(make_cfg, tmp_path):
    from ta_train.inspect import inspect

    train = write_jsonl(tmp_path / "sft.jsonl", [_alpaca(i) for i in range(3)])
    val = write_jsonl(tmp_path / "val.jsonl", [_alpaca(10 + i) for i in range(7)], ("{broken",))
    cfg = make_cfg(f"data.sources=[{{path: {train}}}]", f"data.val_sources=[{{path: {val}}}]", "data.val_max_samples=3",
                   "inspect.n=0", "inspect.color=never")
    out = io.StringIO()
    summary = inspect(cfg, out)
    assert (summary["val_records"], summary["val_examples"], summary["val_rejected"]) == (7, 3, 1)
    assert f"up to 3 per file): examples 3 of 7 records read, rejected 1 from {val}" in out.getvalue()
    gone = tmp_path / "gone.jsonl"
    missing = make_cfg(f"data.sources=[{{path: {train}}}]", f"data.val_sources=[{{path: {val}}}, {{path: {gone}}}]",
                       "inspect.n=0", "inspect.color=never")
    with pytest.raises(FileNotFoundError, match=r"data\.val_sources\[1\]\.path"):
        inspect(missing, io.StringIO())
