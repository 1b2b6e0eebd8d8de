"""The architecture's import rules, checked in a fresh interpreter per module.

ta_data is plain Python: no torch, Lightning or other ta package; optional heavy libraries load only
when used. Config composition and planning run before anything heavy loads.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

TA_DATA_FORBIDDEN = ("torch", "lightning", "transformers", "ta_train", "ta_eval", "ta_export", "ta_rag")

BOUNDARIES = {
    "ta_data.records": TA_DATA_FORBIDDEN,
    "ta_data.readers": TA_DATA_FORBIDDEN + ("pypdf",),
    "ta_data.clean": TA_DATA_FORBIDDEN + ("ftfy", "opencc"),
    "ta_data.quality": TA_DATA_FORBIDDEN + ("lingua",),
    "ta_data.pii": TA_DATA_FORBIDDEN + ("jieba",),
    "ta_data.dedup": TA_DATA_FORBIDDEN,
    "ta_data.demo": TA_DATA_FORBIDDEN,
    "ta_data.pipeline": TA_DATA_FORBIDDEN,
    "ta_data.__main__": TA_DATA_FORBIDDEN + ("hydra",),
    "ta_train.config": ("torch", "transformers", "lightning"),
    "ta_train.plan": ("torch", "transformers", "lightning"),
    "ta_train.report": ("torch", "transformers", "lightning", "matplotlib"),  # matplotlib only when plotting
    "ta_train.sweep": ("torch", "transformers", "lightning"),  # Hydra builds it before `--cfg job`
}


@pytest.mark.parametrize("module", sorted(BOUNDARIES))
def test_module_imports_only_what_its_layer_allows(module):
    forbidden = BOUNDARIES[module]
    code = (
        f"import sys, {module}\n"
        f"bad = sorted({{m for m in sys.modules if m.split('.')[0] in {forbidden!r}}})\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
