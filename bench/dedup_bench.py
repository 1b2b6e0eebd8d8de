"""Near-duplicate dedup: ta_data.dedup against the datasketch 2.0.0 baseline, side by side in one run.

    python bench/dedup_bench.py /tmp/dedup_data/corpus.jsonl                 # ours (rensa + numpy) + baseline
    python bench/dedup_bench.py /tmp/dedup_data/corpus.jsonl --no-baseline --engines numpy

The corpus comes from /work/shared/bench/dedup/gen_corpus.py (see its README); truth.jsonl must sit
beside it. Each system runs in its own child process; the parent reads that child's CPU time
(user + sys) and peak RSS with os.wait4, so numbers stay per-process on a shared 2-core box.
docs/CPU-s is reported two ways: in-process after loading the corpus (the baseline's own
`docs_per_cpu_s_excl_load`, 880 in the shared README) and for the whole process (startup, imports
and JSON loading included). Pairs and removed ids are scored by the shared eval_dedup.py against
both ground truths: j5_nfkc (our normalization: NFKC, lowercase, whitespace collapsed) and j5_raw
(the baseline's: lowercase only). Skips with exit 0 when the shared bench or the corpus is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JFIELDS = ("j5_nfkc", "j5_raw")


def load_texts(corpus: Path) -> list[str]:
    """Corpus texts in id order (ids must be 0..N-1, as gen_corpus.py writes them)."""
    docs = [json.loads(line) for line in corpus.open(encoding="utf-8") if line.strip()]
    if [d["id"] for d in docs] != list(range(len(docs))):
        raise SystemExit(f"{corpus}: ids are not 0..N-1 in order")
    return [d["text"] for d in docs]


def run_ours(corpus: Path, out: Path, engine: str, threshold: float) -> None:
    """Child process: dedup the corpus, write pairs.tsv, removed.txt and stats.json under out."""
    sys.path.insert(0, str(REPO))
    from ta_data import dedup as D

    c0 = time.process_time()
    texts = load_texts(corpus)
    c1, t1 = time.process_time(), time.perf_counter()
    params = D.SketchParams.for_threshold(threshold, engine=engine)
    sk = D.sketch(texts, params=params)
    c2 = time.process_time()
    candidates = D.candidate_pairs(sk)
    confirmed = D.confirm_pairs(candidates, texts, threshold)
    c3 = time.process_time()
    result = D.cluster(sk, confirmed, len(candidates))
    pairs = D.expand_exact_pairs(sk, confirmed)
    c4, t4 = time.process_time(), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.tsv").write_text("".join(f"{i}\t{j}\n" for i, j in pairs))
    (out / "removed.txt").write_text("".join(f"{i}\n" for i in sorted(result.removed)))
    stats = {
        "system": f"ta_data.dedup ({engine})", "bands_x_rows": f"{params.bands}x{params.rows}",
        "n_docs": len(texts), "load_cpu_s": round(c1 - c0, 2), "sketch_cpu_s": round(c2 - c1, 2),
        "candidates_confirm_cpu_s": round(c3 - c2, 2), "cluster_cpu_s": round(c4 - c3, 2),
        "cpu_s_excl_load": round(c4 - c1, 2), "wall_s_excl_load": round(t4 - t1, 2),
        "docs_per_cpu_s_excl_load": round(len(texts) / (c4 - c1), 1),
        "n_candidates": len(candidates), "n_confirmed_rep_pairs": len(confirmed), "n_pairs": len(pairs),
        "n_removed": len(result.removed), "n_exact": result.n_exact, "n_near": result.n_near,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1))


def measured(cmd: list[str], log: Path) -> dict:
    """Run cmd as a child; return its exit code, CPU seconds (user + sys), peak RSS (MB) and wall time."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"cpu_s_process": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s_process": round(time.perf_counter() - t0, 2)}


def evaluate(shared: Path, corpus: Path, pairs: Path, removed: Path | None, threshold: float, jfield: str) -> dict:
    """Score pairs (and removed ids) with the shared eval_dedup.py; returns its JSON."""
    cmd = [sys.executable, str(shared / "eval_dedup.py"), "--pairs", str(pairs), "--threshold", str(threshold),
           "--jfield", jfield, "--truth", str(corpus.parent / "truth.jsonl"), "--corpus", str(corpus)]
    if removed is not None:
        cmd += ["--removed", str(removed)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def scores(shared: Path, corpus: Path, pairs: Path, removed: Path | None, threshold: float) -> dict:
    """Removal and pair P/R/F1 under both ground truths, plus template false merges."""
    res = {}
    for jf in JFIELDS:
        e = evaluate(shared, corpus, pairs, removed, threshold, jf)
        res[jf] = {"removal": e["doc_level_removal"], "pairs": e["pair_level"],
                   "template_false_merges": e["template_family_false_merges"],
                   "planted_recall_by_mode": e["planted_recall_by_mode"]}
    return res


def run_baseline(shared: Path, corpus: Path, out: Path, threshold: float) -> list[dict]:
    """datasketch 2.0.0 via the shared bench_datasketch.py: raw LSH pairs and MinHash-verified pairs."""
    out.mkdir(parents=True, exist_ok=True)
    proc = measured([sys.executable, str(shared / "bench_datasketch.py"), "--corpus", str(corpus), "--threshold",
                     str(threshold), "--num-perm", "128", "--out", str(out)], out / "log.txt")
    tag = f"datasketch_t{threshold}_p128_sha1"
    stats = json.loads((out / f"bench_{tag}.json").read_text())
    rows = []
    for suffix, label in (("", "LSH candidates"), ("_verified", "+ MinHash-estimate check")):
        layout = f"{stats['bands_b']}x{stats['rows_r']}"
        rows.append({"system": f"datasketch 2.0.0 MinHashLSH, {label}", "bands_x_rows": layout,
                     "docs_per_cpu_s_excl_load": stats["docs_per_cpu_s_excl_load"], **proc, "n_docs": stats["n_docs"],
                     "scores": scores(shared, corpus, out / f"pairs_{tag}{suffix}.tsv", None, threshold)})
    return rows


def machine() -> str:
    """CPU model, logical CPUs and Python version of this box."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    """Markdown table: speed, memory and removal P/R/F1 under both truths."""
    lines = ["| system | bands x rows | docs/CPU-s (excl. load) | docs/CPU-s (whole process) | peak RSS | "
             "removal P / R / F1 (j5_nfkc) | removal P / R / F1 (j5_raw) | template false merges |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        prf = {jf: "{precision:.3f} / {recall:.3f} / {f1:.3f}".format(**s[jf]["removal"]) for jf in JFIELDS}
        lines.append(f"| {r['system']} | {r['bands_x_rows']} | {r['docs_per_cpu_s_excl_load']:,.0f} | "
                     f"{r['n_docs'] / r['cpu_s_process']:,.0f} | {r['peak_rss_mb']:.0f} MB | {prf['j5_nfkc']} | "
                     f"{prf['j5_raw']} | {s['j5_nfkc']['template_false_merges']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path, help="corpus.jsonl from gen_corpus.py (truth.jsonl beside it)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--engines", default="rensa,numpy", help="comma-separated MinHash engines to run")
    ap.add_argument("--no-baseline", action="store_true", help="skip datasketch (about 2 CPU-minutes)")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("TA_SHARED", "/work/shared")))
    ap.add_argument("--out", type=Path, default=Path("/tmp/dedup_bench"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_ours(args.corpus, args.out, args.worker, args.threshold)
        return
    shared = args.shared / "bench" / "dedup"
    for need in (shared / "eval_dedup.py", args.corpus, args.corpus.parent / "truth.jsonl"):
        if not need.exists():
            print(f"skip: {need} not found (see {shared}/README.md to generate the corpus)")
            return
    rows = []
    for engine in [e for e in args.engines.split(",") if e]:
        out = args.out / f"ours_{engine}"
        out.mkdir(parents=True, exist_ok=True)
        proc = measured([sys.executable, __file__, str(args.corpus), "--worker", engine, "--out", str(out),
                         "--threshold", str(args.threshold)], out / "log.txt")
        stats = json.loads((out / "stats.json").read_text())
        score = scores(shared, args.corpus, out / "pairs.tsv", out / "removed.txt", args.threshold)
        rows.append({**stats, **proc, "scores": score})
    if not args.no_baseline:
        try:
            import datasketch  # noqa: F401
        except ImportError:
            print("datasketch not installed: baseline skipped (pip install datasketch==2.0.0 xxhash jieba==0.42.1)")
        else:
            rows += run_baseline(shared, args.corpus, args.out / "baseline", args.threshold)
    summary = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "corpus": str(args.corpus),
               "threshold": args.threshold, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(rows))
    print(f"\ndetails: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
