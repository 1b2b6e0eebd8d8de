"""End to end: `python -m ta_data` on the demo course with planted PII, run as a user runs it.

No planted PII string may reach any file under the output folder (intermediates and rejects
included), the summary names the counts, a rerun is byte-identical, `stage=dedup` runs alone, and
`python -m ta_train data=teaching_mix` composes against the output, trains on its sft.jsonl and
validates on its val.jsonl.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from ta_data.demo import COURSE_DIR

PLANTED = {
    "PHONE": ["13812345678", "+86 139-1234-5678", "１５９１２３４５６７８", "13700001111"],
    "EMAIL": ["zhang.wei@pku.edu.cn", "lm2021＠163.com", "ta.help [at] mails.tsinghua.edu.cn"],
    "ID_CARD": ["11010519491231002X", "440308199901010012"],
    "STUDENT_ID": ["2021123456", "2019004211", "PB20000001"],
    "NAME": ["王小明", "韦鹏玉", "John Smith"],
}

OFFICE_HOURS = """# Office hours and contacts

## 答疑安排

助教韦鹏玉老师今天答疑，有问题可以打电话13812345678，或者发邮件到zhang.wei@pku.edu.cn。
王小明同学的作业已批改，学号 2021123456 的同学请到办公室领取梯度下降的作业。
身份证号11010519491231002X的同学请核对选课信息，手机：１５９１２３４５６７８。

## Contacts

Prof. John Smith will cover chapter 3 on the learning rate and gradient descent next week.
Email ta.help [at] mails.tsinghua.edu.cn with questions, or call +86 139-1234-5678 after class.
Student ID: 2019004211 asked about feature scaling and the mean squared error loss.
"""

QA_LOG = [
    {"question": "学号是PB20000001，我的梯度下降作业交了吗？", "answer": "交了。请发邮件 lm2021＠163.com 确认作业成绩。"},
    {"question": "Why does a large learning rate make the loss diverge?",
     "answer": "Each step overshoots the minimum, so the loss grows instead of shrinking."},
]

# Rejected whole by the clean stage (confidential) and by quality (too short): their rejects must be scrubbed too.
CONFIDENTIAL = "# 讲义\n\n【内部资料】\n\n身份证号440308199901010012，电话13812345678，这份讲义不得外传，仅供助教使用。\n"
SHORT = "学号 2021123456\n"
HOMEWORK = """# 作业一

梯度下降每一步沿着负梯度方向更新参数，学习率决定了每一步走多远。学习率太大时损失会发散，太小时收敛很慢。
请用自己的话解释为什么特征缩放能让梯度下降收敛得更快，并给出一个均方误差损失的例子。
"""


def _id_card_ok() -> None:
    from ta_data.pii import id_card_valid

    assert all(id_card_valid(n) for n in PLANTED["ID_CARD"])


def make_course(root: Path) -> Path:
    course = root / "course"
    shutil.copytree(COURSE_DIR, course)
    (course / "office_hours.md").write_text(OFFICE_HOURS, encoding="utf-8")
    (course / "notes_en_copy.md").write_text((course / "notes_en.md").read_text(encoding="utf-8"), encoding="utf-8")
    (course / "qa_log.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in QA_LOG), encoding="utf-8")
    (course / "internal.md").write_text(CONFIDENTIAL, encoding="utf-8")
    (course / "short.txt").write_text(SHORT, encoding="utf-8")
    # PII in file and folder names: sources, reject files and card.json keys must not carry it
    (course / "homework").mkdir()
    (course / "homework" / "13700001111_王小明同学.md").write_text(HOMEWORK, encoding="utf-8")
    (course / "homework" / "zhang.wei@pku.edu.cn.txt").write_text(SHORT, encoding="utf-8")
    return course


def write_replay(root: Path) -> Path:
    rows = [{"instruction": f"Give a synonym of word number {i}.", "input": "", "output": f"Synonym {i}; "
             + ("call me at 13812345678" if i == 0 else "happy")} for i in range(30)]
    path = root / "alpaca_replay.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ta_data(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ta_data", *args, "progress=false"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "timing.json"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    course, replay, out = make_course(root), write_replay(root), root / "out"
    args = (f"input={course}", f"output={out}", "data=teaching_mix",
            f"data.mix.replay=[{{path: {replay}, format: alpaca, ratio: 0.2}}]")
    first = ta_data(*args)
    return args, out, first, snapshot(out)


def test_no_planted_pii_in_any_output_file(run):
    _id_card_ok()
    _, out, _, files = run
    assert {"chunks.jsonl", "sft.jsonl", "val.jsonl", "evalset.jsonl", "rejects.jsonl", "card.json"} <= set(files)
    leaks = [(name, s) for name, data in files.items() for group in PLANTED.values() for s in group
             if s in data.decode("utf-8")]
    assert not leaks
    text = files["stages/pii.jsonl"].decode()
    for tag in ("<PHONE>", "<EMAIL>", "<ID_CARD>", "<STUDENT_ID>", "<NAME_1>"):
        assert tag in text


def test_outputs_follow_the_contracts(run):
    _, out, _, files = run
    chunks = [json.loads(line) for line in files["chunks.jsonl"].decode().splitlines()]
    assert chunks and all({"id", "text", "source", "chapter", "start", "end", "lang", "n_tokens"} <= set(c) for c in chunks)
    assert any(c["start"] is not None for c in chunks)  # the transcript keeps its times
    sft = [json.loads(line) for line in files["sft.jsonl"].decode().splitlines()]
    assert all({"source", "timestamp", "kind"} <= set(r["meta"]) for r in sft)
    kinds = {r["meta"]["kind"] for r in sft}
    assert {"answer", "refusal", "open"} <= kinds
    evalset = [json.loads(line) for line in files["evalset.jsonl"].decode().splitlines()]
    assert {e["kind"] for e in evalset} == {"factual", "refusal", "format", "citation"}
    assert all(e["messages"][-1]["role"] == "user" and e["reference"] for e in evalset)
    assert all(e.get("citations") for e in evalset if e["kind"] == "citation")
    held = {(e["messages"][-1]["content"], e.get("context") or "", e["reference"]) for e in evalset}
    trained = {(r["instruction"], r["input"], r["output"]) for r in sft if "instruction" in r}
    assert not held & trained  # held-out items are never trained on
    rejects = [json.loads(line) for line in files["rejects.jsonl"].decode().splitlines()]
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "confidential" in reasons and "too short" in reasons and "exact duplicate" in reasons
    assert all({"file", "line", "reason", "record"} <= set(r) for r in rejects)
    card = json.loads(files["card.json"])
    assert card["duplicates_removed"]["exact"] >= 1
    assert card["pii_found"]["PHONE"] >= 3 and card["pii_found"]["NAME"] >= 3
    assert card["config"]["data"]["name"] == "teaching_mix" and card["token_histogram"]
    assert not (out / "stages" / "read.jsonl").exists()  # raw (unscrubbed) intermediates are gone


def test_summary_names_the_counts(run):
    _, _, first, _ = run
    summary = first.stdout
    for title in ("records per stage", "records per source", "records per language", "PII found",
                  "duplicates removed", "rejects by reason", "outputs"):
        assert f"== {title}" in summary
    assert any(line.split()[:1] == ["PHONE"] and int(line.split()[-1]) >= 3 for line in summary.splitlines())
    assert any(line.startswith("dedup ") for line in summary.splitlines())


def test_rerun_is_byte_identical_and_dedup_runs_alone(run):
    args, out, _, files = run
    ta_data(*args)
    assert snapshot(out) == files
    alone = ta_data(*args, "stage=dedup")
    assert "dedup" in alone.stdout
    assert snapshot(out)["stages/dedup.jsonl"] == files["stages/dedup.jsonl"]


def test_ta_train_composes_against_the_output(run, make_cfg):
    from ta_train.data import read_source, resolve_source_path

    _, out, _, _ = run
    cfg = make_cfg("data=teaching_mix", f"data.dir={out}")
    assert cfg.data.name == "teaching_mix" and cfg.data.mix["format"] == "alpaca"
    path = resolve_source_path(cfg.data.sources[0], out)
    assert path == out / "sft.jsonl"
    records = read_source(path, cfg.data.sources[0].format)
    assert records.conversations and not records.rejects


@pytest.mark.slow  # imports torch + Lightning and trains the tiny model 2 steps (~30 s)
def test_ta_train_trains_two_steps_on_the_output(run, make_cfg):
    """Trains on all of sft.jsonl and validates on exactly the records of val.jsonl (data.val_sources)."""
    import csv

    from ta_train.train import fit

    _, out, _, files = run
    n_train = len(files["sft.jsonl"].decode().splitlines())
    n_val = len(files["val.jsonl"].decode().splitlines())
    assert 0 < n_val <= 64  # under teaching_mix's val_max_samples: every record is kept
    cfg = make_cfg("data=teaching_mix", f"data.dir={out}", "data.max_seq_len=1024", "trainer.max_steps=2",
                   "trainer.val_check_interval=1", "checkpoint.every_n_steps=2")
    trainer, _, _ = fit(cfg)
    dm = trainer.datamodule
    assert len(dm.val_examples) == n_val and dm.stats["val_sources"] == {
        str(out / "val.jsonl"): {"records": n_val, "rejected": 0, "val": n_val}}
    assert dm.stats["sources"][str(out / "sft.jsonl")]["train"] == n_train  # no val_fraction held out
    assert dm.stats["val_overlap_train"] == 0  # the pipeline's split leaks nothing
    rows = list(csv.DictReader((Path(cfg.run_dir) / "metrics.csv").open()))
    assert any(r.get("train/loss") for r in rows)
    assert [float(r["val/loss"]) for r in rows if r.get("val/loss")]  # logged at steps 1 and 2
    report = json.loads((Path(cfg.run_dir) / "data_stats.json").read_text())
    assert report["val_sources"] == [str(out / "val.jsonl")] and report["val_examples"] == n_val
