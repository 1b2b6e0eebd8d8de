"""Whole-pipeline benchmark: generate N MB of course-like text, run `python -m ta_data` on it, report MB/s
and peak RSS. Goal: time grows linearly with the input, peak RSS stays (nearly) flat. On a shared box
wall time follows the other jobs' load; CPU seconds (user + sys of the pipeline and its workers) do not.

    nice -n 10 python bench/pipeline_bench.py --sizes 10,100 --work /tmp/ta_bench [--num-proc 2]

The generated course (seeded, so every run reads the same bytes) mixes Markdown notes (headings,
paragraphs) and SRT transcripts (timed cues), about 60% Chinese / 40% English paragraphs of random
words from a fixed vocabulary (so unrelated paragraphs share almost no 5-grams), with 5% of the
notes' sections exact copies of an earlier one, 2% near copies (one word or two characters
changed), and 1% of paragraphs carrying a phone number, an e-mail, a student ID or a cued name. Each size runs in a fresh process (the
pipeline's own timing.json gives its seconds per stage and peak RSS of it and its workers).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EN_WORDS = [w for w in (
    "gradient descent learning rate loss function model parameter weight bias feature vector matrix "
    "training validation test data set sample batch epoch step update converge diverge minimum error "
    "square mean regression linear logistic probability estimate variance noise signal overfit "
    "regularize penalty norm derivative slope curve surface contour plot axis scale standardize "
    "normalize optimizer momentum adaptive schedule warmup decay cosine stochastic mini full closed "
    "form solution equation system inverse transpose product sum average median outlier robust"
).split()]
ZH_CHARS = list(
    "梯度下降学习率损失函数模型参数权重偏置特征向量矩阵训练验证测试数据集样本批次轮步更新收敛发散最小误差平方均值回归"
    "线性逻辑概率估计方差噪声信号过拟合正则惩罚范数导数斜率曲线曲面等高图坐标轴缩放标准化归一优化器动量自适应调度预热衰减"
    "余弦随机小全闭式解方程系统逆转置乘积求和平均中位异常稳健的是在了和有我们这个一不可以会对也就要把从到用"
)
SURNAMES, GIVEN = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"), list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平")


def _paragraph(rng: random.Random, zh: bool) -> str:
    if zh:
        sents = ["".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(12, 30))) + "。" for _ in range(rng.randint(3, 6))]
        return "".join(sents)
    sents = [" ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(8, 18))).capitalize() + "." for _ in range(rng.randint(3, 6))]
    return " ".join(sents)


def _pii(rng: random.Random, zh: bool) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"电话1{rng.choice('3589')}{rng.randrange(10**9):09d}" if zh else f"call 13{rng.randrange(10**9):09d}"
    if kind == 1:
        return f"邮箱 s{rng.randrange(10**6)}@pku.edu.cn" if zh else f"mail s{rng.randrange(10**6)}@gmail.com"
    if kind == 2:
        return f"学号 20{rng.randrange(10**8):08d}" if zh else f"Student ID: 20{rng.randrange(10**8):08d}"
    return f"{rng.choice(SURNAMES)}{rng.choice(GIVEN)}{rng.choice(GIVEN)}同学说" if zh else "Hi Emily, see the notes"


def _paragraphs(rng: random.Random):
    """Endless fresh paragraphs (60% Chinese); 1% carry a piece of PII."""
    while True:
        zh = rng.random() < 0.6
        p = _paragraph(rng, zh)
        if rng.random() < 0.01:
            p += ("，" if zh else " ") + _pii(rng, zh) + ("。" if zh else ".")
        yield p


def _near_copy(rng: random.Random, text: str) -> str:
    """The text with one word (English) or two characters (Chinese) replaced: Jaccard of 5-grams ~0.95."""
    words = text.split(" ")
    if len(words) > 20:
        words[rng.randrange(len(words))] = rng.choice(EN_WORDS)
        return " ".join(words)
    at = rng.randrange(len(text) - 2)
    return text[:at] + rng.choice(ZH_CHARS) + rng.choice(ZH_CHARS) + text[at + 2:]


def _sections(rng: random.Random):
    """Section bodies (2-5 paragraphs): 5% exact copies of an earlier section, 2% near copies."""
    paras, made = _paragraphs(rng), []
    while True:
        r = rng.random()
        if made and r < 0.05:
            body = rng.choice(made)
        elif made and r < 0.07:
            body = _near_copy(rng, rng.choice(made))
        else:
            body = "\n\n".join(next(paras) for _ in range(rng.randint(2, 5)))
            if len(made) < 2000:
                made.append(body)
        yield body


def _stamp(t: float) -> str:
    h, m, s = int(t // 3600), int(t % 3600 // 60), t % 60
    return f"{h:02d}:{m:02d}:{int(s):02d},{int(s % 1 * 1000):03d}"


def generate(root: Path, mb: float, seed: int = 0) -> int:
    """Write about mb MB of course files under root; returns the bytes written."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paras, sections, total, n = _paragraphs(rng), _sections(rng), 0, 0
    while total < mb * 1e6:
        if n % 4 == 3:  # a transcript
            t, lines = 0.0, []
            for k in range(1, 201):
                dur = rng.uniform(2, 6)
                lines += [str(k), f"{_stamp(t)} --> {_stamp(t + dur)}", next(paras)[:120], ""]
                t += dur
            text, name = "\n".join(lines), f"lecture_{n:05d}.srt"
        else:
            parts = [f"# Chapter {n}"]
            for sec in range(8):
                parts += [f"## Section {n}.{sec}", next(sections)]
            text, name = "\n\n".join(parts) + "\n", f"notes_{n:05d}.md"
        (root / name).write_text(text, encoding="utf-8")
        total += len(text.encode("utf-8"))
        n += 1
    return total


def run_one(course: Path, out: Path, num_proc: int) -> dict:
    cmd = [sys.executable, "-m", "ta_data", f"input={course}", f"output={out}", "progress=false", f"num_proc={num_proc}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pipeline and its pool workers
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    timing = json.loads((out / "timing.json").read_text())
    card = json.loads((out / "card.json").read_text())
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": timing["peak_rss_mb"], "stage_s": timing["seconds"],
            "stages": card["stages"], "duplicates": card["duplicates_removed"], "pii": card["pii_found"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100", help="comma-separated MB")
    ap.add_argument("--work", default="/tmp/ta_pipeline_bench")
    ap.add_argument("--num-proc", type=int, default=1)
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    for mb in [float(s) for s in args.sizes.split(",")]:
        course = work / f"course_{mb:g}mb"
        size = sum(p.stat().st_size for p in course.rglob("*") if p.is_file()) if course.is_dir() else generate(course, mb)
        res = run_one(course, work / f"out_{mb:g}mb", args.num_proc)
        res |= {"mb": round(size / 1e6, 2), "mb_per_s": round(size / 1e6 / res["wall_s"], 3),
                "mb_per_cpu_s": round(size / 1e6 / res["cpu_s"], 3)}
        rows.append(res)
        print(json.dumps(res, sort_keys=True), flush=True)
    print("\n| input MB | wall s | CPU s | MB/s (wall) | MB per CPU-s | peak RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mb']} | {r['wall_s']} | {r['cpu_s']} | {r['mb_per_s']} | {r['mb_per_cpu_s']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
