"""DeepSpeed on CPU, one real step each with LoRA: ZeRO-2 + CPU offload (eager, and with perf.compile's
compiled layers); ZeRO-2 and ZeRO-3 with torch's AdamW, multi-tensor and fused (optim.fused); and the
ZeRO-3 adapter save (gathered, full shapes) against a plain save (Size([0]) placeholders).

Runs tests/integration/deepspeed_steps.py in its own process (it initializes torch.distributed
with gloo). Slow: ~20 s of CPU plus deepspeed's import, and the first run on a machine compiles
DeepSpeedCPUAdam and the CPU comm op (~5 min, cached after).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"),
]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_PORT": "29541"}
    proc = subprocess.run([sys.executable, "-m", "tests.integration.deepspeed_steps", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), out


@pytest.mark.parametrize("scenario", ["zero2_offload", "zero3", "zero2_offload_compile", "zero2", "zero2_fused", "zero3_fused"])
def test_one_real_step_matches_plain_autograd(steps, scenario):
    r = steps[0][scenario]
    assert 0 < r["loss"] < 100
    # the engine's global norm (before clipping at 1.0) is the naive total norm of the same grads
    assert r["engine_grad_norm"] == pytest.approx(r["naive_grad_norm"], rel=1e-4)
    assert r["engine_grad_norm"] > 1.0  # so clipping was active and the norm is still pre-clip
    assert r["changed"] and all(r["changed"].values())


def test_offload_uses_deepspeed_cpu_adam(steps):
    assert steps[0]["zero2_offload"]["optimizer"] == "DeepSpeedCPUAdam"


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_fused_adamw_under_zero_steps_the_partitions_as_multi_tensor_adamw(steps, stage):
    # optim.fused stays on under ZeRO-1/2/3: the engine steps the client torch AdamW on its fp32
    # partitions after its own clipping, so the single-kernel step must give the same update
    import torch

    r, out = steps
    assert r[stage]["fused"] == [False] and r[f"{stage}_fused"]["fused"] == [True]
    plain, fused = torch.load(out / f"{stage}.after.pt"), torch.load(out / f"{stage}_fused.after.pt")
    assert plain.keys() == fused.keys() and len(plain) == 16
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-6, atol=1e-9)


def test_resume_keeps_the_fused_step_deepspeed_was_built_with(steps):
    # the engine's load_checkpoint hands torch's load_state_dict the checkpoint's param groups
    r = steps[0]["zero2_fused"]
    assert r["fused_after_resume"] == [False]  # the multi-tensor checkpoint switched it
    assert r["fused_after_keep"] == [True]  # CausalLMModule.on_train_start switches it back


def test_zero3_adapter_holds_full_gathered_tensors(steps):
    import torch
    from safetensors.torch import load_file

    r, out = steps[0]["zero3"], steps[1]
    assert r["partitioned"] > 0 and r["local_shapes"] == [[0]]  # the module itself holds placeholders
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    gathered = torch.load(out / "gathered.pt")
    assert len(saved) == len(r["expected"]) == 16  # 2 layers x q,k,v,o x A,B
    for name, shape in r["expected"].items():
        key = name.replace(".default", "")  # peft drops the adapter name in the file
        assert list(saved[key].shape) == shape and min(shape) > 0
        assert torch.equal(saved[key], gathered[name])
    plain = load_file(out / "adapter_plain" / "adapter_model.safetensors")
    assert all(t.numel() == 0 for t in plain.values())  # the failure the gather avoids
    assert (out / "adapter" / "tokenizer_config.json").exists()
