"""`python -m ta_train.report RUN_DIR [--out DIR]`: PNG plots and a markdown summary of a finished run.

Reads `metrics.csv`, `plan.json` and `run.json` (else `.hydra/config.yaml`; ta_train.report_data) and writes, to
`RUN_DIR/report/` unless `--out` says otherwise:
- `loss.png` (train and val loss), `lr.png`, `grad_norm.png`, `token_acc.png`, and `perf.png`
  (MFU, tokens/s, TFLOP/s, memory: whichever `perf/*` metrics the run logged);
- `report.md` (model, PEFT, steps, tokens, best and final val loss, grad-norm range, the memory plan
  beside the measured peak, links to the plots) and `report.json` (the same numbers).
A plot whose metrics the run did not log is skipped, not drawn empty. Needs matplotlib
(`pip install '.[report]'`); no torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ta_train.report_data import RunData, Series, load_run, summarize_run

# file name -> (title, y label, [(metric, legend label)]); a figure per entry, one line per metric
LINE_PLOTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "loss.png": ("Loss", "token-mean cross-entropy", [("train/loss", "train (label-smoothed)"), ("val/loss", "val")]),
    "lr.png": ("Learning rate", "lr", [("train/lr", "train/lr")]),
    "grad_norm.png": ("Gradient norm (before clipping)", "L2 norm", [("train/grad_norm", "train/grad_norm")]),
    "token_acc.png": ("Next-token accuracy", "accuracy", [("train/token_acc", "train"), ("val/token_acc", "val")]),
}
# perf.png: one panel per perf metric the run logged
PERF_PANELS: list[tuple[str, str]] = [
    ("perf/mfu", "MFU"),
    ("perf/tokens_per_s", "tokens/s"),
    ("perf/tflops", "TFLOP/s"),
    ("perf/max_memory_gb", "max memory (GB)"),
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def write_plots(metrics: dict[str, Series], out: Path) -> list[str]:
    """Draw every plot whose metrics exist; returns the file names written, in LINE_PLOTS order."""
    plt = _pyplot()
    written: list[str] = []
    for name, (title, ylabel, lines) in LINE_PLOTS.items():
        present = [(key, label) for key, label in lines if metrics.get(key)]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in present:
            steps, values = zip(*metrics[key])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        if name == "lr.png":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    panels = [(key, label) for key, label in PERF_PANELS if metrics.get(key)]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
        for ax, (key, label) in zip(axes[:, 0], panels):
            steps, values = zip(*metrics[key])
            ax.plot(steps, values)
            ax.set(ylabel=label)
            ax.grid(alpha=0.3)
        axes[0, 0].set_title("Throughput and memory")
        axes[-1, 0].set_xlabel("optimizer step")
        fig.tight_layout()
        fig.savefig(out / "perf.png", dpi=100)
        plt.close(fig)
        written.append("perf.png")
    return written


def fmt(value: Any, spec: str = ".4f") -> str:
    """A number for the report; `-` when it was not logged."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render_markdown(summary: dict[str, Any], plots: list[str], run: RunData) -> str:
    s = summary
    peft = fmt(s["peft"])
    if s["peft"] in ("lora", "qlora"):
        peft += f" (r={s['lora_r']}, alpha={s['lora_alpha']})"
    rows = [
        ("model", f"{fmt(s['model'])} (`{fmt(s['model_path'])}`)"),
        ("peft", peft),
        ("precision / strategy", f"{fmt(s['precision'])} / {fmt(s['strategy'])}"),
        ("peak learning rate", fmt(s["lr"], ".3g")),
        ("optimizer steps", fmt(s["steps"])),
        ("trained tokens", f"{s['tokens']:,} (sum of train/tokens)"),
        ("global batch", f"{fmt(s['global_batch'])} sequences = {fmt(s['plan_micro_batch'])} micro x "
                         f"{fmt(s['plan_accumulation'])} accumulation x {fmt(s['plan_devices'])} devices"),
        ("final train loss", fmt(s["final_train_loss"])),
        ("best val loss", f"{fmt(s['best_val_loss'])} (step {fmt(s['best_val_step'])})"),
        ("final val loss", fmt(s["final_val_loss"])),
        ("grad norm min / max", f"{fmt(s['grad_norm_min'])} / {fmt(s['grad_norm_max'])}"),
        ("final token accuracy train / val", f"{fmt(s['final_train_token_acc'])} / {fmt(s['final_val_token_acc'])}"),
        ("memory: plan peak per device", f"{fmt(s['plan_peak_gib'], '.3f')} GiB (fits: {fmt(s['plan_fits'])})"),
        ("memory: measured peak", f"{fmt(s['measured_max_memory_gb'], '.3f')} GiB (perf/max_memory_gb)"),
        ("mean MFU", fmt(s["mean_mfu"])),
        ("mean tokens/s", fmt(s["mean_tokens_per_s"], ".1f")),
    ]
    if s["nonfinite_train_loss"]:
        rows.append(("NaN/inf train loss steps", str(s["nonfinite_train_loss"])))
    if s["plan_changes"]:
        rows.append(("plan changes", "; ".join(map(str, s["plan_changes"]))))
    lines = [f"# Run report: {run.run_dir.name}", "", f"Run directory: `{run.run_dir}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Plots", ""]
    lines += [f"![{name[:-4]}]({name})" for name in plots] or ["No plottable metrics were logged."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the plots, report.md and report.json; returns the report.md path."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_run(run)
    plots = write_plots(run.metrics, out)
    summary["plots"] = plots
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    path = out / "report.md"
    path.write_text(render_markdown(summary, plots, run), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ta_train.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training run directory (holds metrics.csv)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8"))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
