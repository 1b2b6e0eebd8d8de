"""A real DeepSpeed engine (CPU, gloo), stepped on every micro-batch as Lightning does, updates on
exactly the data's window ends in every epoch once each epoch is whole windows; with a short tail
window it drifts off them after the first epoch (the bug whole_windows fixes)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,  # deepspeed's import and start-up: ~30-60 s on the shared CPU
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"),
]


def test_engine_updates_fall_on_window_ends_only_with_whole_windows():
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": "29543"}
    proc = subprocess.run([sys.executable, "-m", "tests.integration.deepspeed_windows"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    whole, tail = result["whole"], result["tail"]
    assert len(whole["window_end"]) == 3 * 9  # 22 examples / micro 2 = 11 micro-batches, 9 in whole windows of 3
    assert whole["engine_update"] == whole["window_end"] and sum(whole["engine_update"]) == 9
    assert len(tail["window_end"]) == 3 * 11
    assert tail["engine_update"] != tail["window_end"]  # the 2-batch tail closes a window the engine does not
