"""Export versions: ids never reused, sealed versions never rewritten, `current` swapped atomically."""
from __future__ import annotations

import os

import pytest

from ta_export.registry import current, format_versions, reserve_version, seal, set_current, versions
from ta_export.runs import ExportError


def make_version(root, formats=("merged",)):
    v = reserve_version(root)
    (v.path / "merged").mkdir()
    (v.path / "merged" / "config.json").write_text("{}")
    return seal(v, {"version": v.id, "created_utc": "2026-11-30T00:00:00Z", "base_model": {"name": "tiny"}, "chat_family": "chatml",
                    "formats": list(formats), "run_dir": "/runs/x", "files": {}})


def test_versions_count_up_and_rollback_repoints_current(tmp_path):
    a, b = make_version(tmp_path), make_version(tmp_path)
    assert [a.id, b.id] == ["v0001", "v0002"]
    set_current(tmp_path, b.id)
    assert current(tmp_path) == "v0002"
    set_current(tmp_path, a.id)
    assert os.readlink(tmp_path / "current") == "v0001" and not any(p.name.startswith(".current") for p in tmp_path.iterdir())
    assert "* v0001" in format_versions(tmp_path) and "  v0002" in format_versions(tmp_path)


def test_an_interrupted_export_is_listed_and_can_never_be_current(tmp_path):
    make_version(tmp_path)
    half = reserve_version(tmp_path)  # no manifest: interrupted
    assert [v.complete for v in versions(tmp_path)] == [True, False]
    assert "v0002  (incomplete" in format_versions(tmp_path)
    with pytest.raises(ExportError, match="interrupted export cannot be current"):
        set_current(tmp_path, half.id)
    assert reserve_version(tmp_path).id == "v0003"  # ids are never reused


def test_sealed_versions_are_never_rewritten(tmp_path):
    v = make_version(tmp_path)
    with pytest.raises(ExportError, match="never rewritten"):
        seal(v, {"version": v.id})
    (tmp_path / "v0005").mkdir()  # an id taken by hand is skipped, not written into
    assert reserve_version(tmp_path).id == "v0006"
