"""ta_export's CLI starts without torch/transformers, and rejects misspelt arguments before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

LIGHT = ["ta_export.__main__", "ta_export.export", "ta_export.serve", "ta_export.registry", "ta_export.modelfile", "ta_export.runs"]


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_no_torch(module):
    code = f"import sys, {module}\nbad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'lightning', 'peft'))\nassert not bad, bad\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_arguments_are_checked(capsys):
    from ta_export.__main__ import main, parse_list

    assert parse_list("[merged, gguf,ollama]") == ["merged", "gguf", "ollama"] and parse_list("f16") == ["f16"]
    with pytest.raises(SystemExit, match="unexpected argument 'formts=merged'"):
        main(["run=x", "formts=merged"])
    with pytest.raises(SystemExit, match="run=RUN_DIR is required"):
        main(["formats=merged"])
    assert main(["serve", "engine=tgi", "dry_run=true"]) == 1
    assert "expected engine=vllm or engine=llamacpp" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "rollback VERSION" in capsys.readouterr().out
