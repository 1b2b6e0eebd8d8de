"""`export_run`: a training run -> a new sealed version (merged HF model, GGUF files, Modelfile, manifest).

Checks that can fail (run dir, family, chat template, GGUF support) run before the slow steps, and an
export that fails midway removes its half-written version folder, so `current` only ever points at
complete exports.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ta_export.registry import Version, build_manifest, reserve_version, seal, set_current
from ta_export.runs import ExportError, Run, load_run

log = logging.getLogger(__name__)

FORMATS = ("merged", "gguf", "ollama")
DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")
PREFERRED_OLLAMA_QUANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16", "bf16", "f32")


def check_formats(formats: Sequence[str]) -> list[str]:
    wanted = list(dict.fromkeys(f.lower() for f in formats))
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise ExportError(f"formats={list(formats)!r}: expected one or more of {list(FORMATS)}")
    if "ollama" in wanted and "gguf" not in wanted:
        raise ExportError("formats: ollama needs gguf too (the Modelfile's FROM is a GGUF file): formats=[merged,gguf,ollama]")
    return wanted


def gguf_exporter() -> Callable[..., list[Path]]:
    """ta_export.gguf.export_gguf, or a clear error when this checkout or install lacks it."""
    try:
        from ta_export.gguf import export_gguf
    except ImportError as err:
        raise ExportError(
            f"GGUF export is unavailable here ({err}); install the export extra (pip install '.[export]') "
            "or export formats=[merged] only"
        ) from err
    return export_gguf


def ollama_gguf(files: Sequence[Path]) -> Path:
    """The GGUF the Modelfile uses: the first of q4_k_m, q5_k_m, q8_0, f16, bf16, f32 that was written."""
    for quant in PREFERRED_OLLAMA_QUANTS:
        for path in files:
            if path.name.endswith(f"-{quant}.gguf"):
                return path
    if not files:
        raise ExportError("no GGUF file was written, so there is nothing for the Modelfile's FROM")
    return Path(files[0])


def ollama_name(run: Run, version: Version) -> str:
    return f"ta-{run.cfg.model.name}-{version.id}".lower().replace("_", "-")


def export_run(
    run_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    quants: Sequence[str] = DEFAULT_QUANTS,
    output: str | Path = "exports",
    progress: bool = True,
) -> tuple[Version, list[str]]:
    """Export a run into a new version under `output`, make it current; returns it and the ollama lines."""
    wanted = check_formats(formats)
    run = load_run(run_dir)
    export_gguf = gguf_exporter() if "gguf" in wanted else None
    tokenizer = None
    if "ollama" in wanted:  # refuse a template the Modelfile cannot reproduce before any slow step
        from ta_export.merge import load_run_tokenizer
        from ta_export.modelfile import check_template

        tokenizer = load_run_tokenizer(run)
        check_template(tokenizer, run.family)
    version = reserve_version(Path(output))
    try:
        lines = _fill(version, run, wanted, quants, export_gguf, tokenizer, progress)
        version = seal(version, build_manifest(version, run, wanted, {"gguf_quants": list(quants) if export_gguf else []}))
    except BaseException:
        shutil.rmtree(version.path, ignore_errors=True)
        raise
    set_current(Path(output), version.id)
    return version, lines


def _fill(version: Version, run: Run, wanted: list[str], quants: Sequence[str], export_gguf: Optional[Callable[..., list[Path]]], tokenizer: Any, progress: bool) -> list[str]:
    from ta_export.merge import merge_run
    from ta_export.modelfile import ollama_commands, write_modelfile

    merged = merge_run(run, version.path / "merged", progress=progress)
    lines: list[str] = []
    if export_gguf is not None:
        files = export_gguf(merged, version.path, list(quants), progress=progress)
        if "ollama" in wanted:
            modelfile = write_modelfile(version.path, ollama_gguf(files), tokenizer, run.cfg)
            lines = ollama_commands(ollama_name(run, version), modelfile)
    if "merged" not in wanted:  # only the GGUF's source: versions are never rewritten, so drop it now
        shutil.rmtree(merged)
    return lines
