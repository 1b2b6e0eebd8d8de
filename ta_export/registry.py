"""Export versions: one folder per export under `output=DIR`, a manifest each, `current` to roll back.

    exports/
      v0001/  merged/  model-q4_k_m.gguf ...  Modelfile  manifest.json
      v0002/  ...
      current -> v0002        (a symlink, replaced atomically)

A version folder is reserved with mkdir (which fails if it exists), filled, and sealed by writing
`manifest.json` last, so a folder without a manifest is an interrupted export: it is listed as
incomplete and can never become `current`. Nothing is written into a sealed version.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ta_export.runs import ExportError, Run, sha256_file

MANIFEST = "manifest.json"
CURRENT = "current"
_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class Version:
    id: str
    path: Path
    manifest: Optional[dict[str, Any]]  # None: incomplete (interrupted) export

    @property
    def complete(self) -> bool:
        return self.manifest is not None


def versions(root: Path) -> list[Version]:
    """Every version folder under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink() and _VERSION.match(path.name):
            manifest_path = path / MANIFEST
            manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
            found.append(Version(path.name, path, manifest))
    return sorted(found, key=lambda v: int(v.id[1:]))


def reserve_version(root: Path) -> Version:
    """Create the next version folder (v0001, v0002, ...); never reuses an existing id."""
    root.mkdir(parents=True, exist_ok=True)
    number = max((int(v.id[1:]) for v in versions(root)), default=0) + 1
    while True:
        path = root / f"v{number:04d}"
        try:
            path.mkdir()  # atomic: a concurrent export gets the next number
            return Version(path.name, path, None)
        except FileExistsError:
            number += 1


def current(root: Path) -> Optional[str]:
    link = root / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def set_current(root: Path, version_id: str) -> None:
    """Point `current` at a complete version, atomically (a new link renamed over the old one)."""
    known = {v.id: v for v in versions(root)}
    if version_id not in known:
        raise ExportError(f"version {version_id!r} is not in {root}; known: {', '.join(known) or 'none'}")
    if not known[version_id].complete:
        raise ExportError(f"{known[version_id].path} has no {MANIFEST}: an interrupted export cannot be current")
    tmp = root / f".{CURRENT}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version_id, tmp)
    os.replace(tmp, root / CURRENT)


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `folder` (paths relative to it), the manifest aside."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        out[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def _data_card_hashes(run: Run) -> dict[str, str]:
    """sha256 of each data card (`data_card.*`) beside the run's data sources or in its data/ folder."""
    folders = {run.path / "data"}
    for source in run.cfg.data.sources:
        path = Path(source.path).expanduser()
        if path.exists():
            folders.add(path if path.is_dir() else path.parent)
    cards = sorted(p for folder in folders if folder.is_dir() for p in folder.glob("data_card.*") if p.is_file())
    return {str(p): sha256_file(p) for p in cards}


def _eval_scores(run: Run) -> Optional[dict[str, Any]]:
    for path in (run.path / "scores.json", run.path / "eval" / "scores.json"):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def build_manifest(version: Version, run: Run, formats: list[str], extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What an export holds and where it came from (see the README's manifest table)."""
    cfg = run.cfg
    adapter_file = run.adapter_dir / "adapter_model.safetensors" if run.adapter_dir else None
    run_json = run.path / "run.json"
    return {
        "version": version.id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_dir": str(run.path.resolve()),
        "base_model": {"name": cfg.model.name, "name_or_path": cfg.model.name_or_path, "provider": cfg.model.provider},
        "chat_family": run.family,
        "peft": cfg.peft.method.value,
        "adapter_sha256": sha256_file(adapter_file) if adapter_file and adapter_file.is_file() else None,
        "training_config": json.loads(run_json.read_text(encoding="utf-8"))["config"] if run_json.is_file() else None,
        "data_card_sha256": _data_card_hashes(run),
        "eval_scores": _eval_scores(run),
        "formats": formats,
        "files": file_hashes(version.path),
        **(extra or {}),
    }


def seal(version: Version, manifest: dict[str, Any]) -> Version:
    """Write the manifest (last, via a temp file and rename): the version is then complete."""
    path = version.path / MANIFEST
    if path.exists():
        raise ExportError(f"{path} exists: versions are never rewritten")
    tmp = version.path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return Version(version.id, version.path, manifest)


def format_versions(root: Path) -> str:
    """The `list` command's table: version, time, base model, family, formats, current marker."""
    rows = []
    now = current(root)
    for v in versions(root):
        m = v.manifest
        if m is None:
            rows.append(f"  {v.id}  (incomplete: no {MANIFEST})")
            continue
        mark = "*" if v.id == now else " "
        rows.append(f"{mark} {v.id}  {m['created_utc']}  {m['base_model']['name']}  {m['chat_family']}  {','.join(m['formats'])}  {m['run_dir']}")
    if not rows:
        return f"no exports in {root}"
    return f"exports in {root} (* = current)\n" + "\n".join(rows)
