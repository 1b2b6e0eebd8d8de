"""ta_export on a tiny model trained for real steps: merge parity, versions, CLI, errors, serve commands."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, REPO, compose
from ta_export.runs import ExportError, load_run


def train_run(run_dir: Path, *overrides: str) -> Path:
    from omegaconf import OmegaConf

    from ta_train.train import fit, save_outputs

    cfg, _ = compose([*FAST, f"run_dir={run_dir}", "trainer.max_steps=3", "optim.lr=5e-3", "trainer.limit_val_batches=0", *overrides])
    cfg = OmegaConf.to_object(cfg)
    trainer, module, tokenizer = fit(cfg)
    save_outputs(cfg, trainer, module, tokenizer)
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("export") / "run")


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ta_export", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_merged_logits_equal_base_plus_adapter(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ta_export.merge import load_run_tokenizer, load_unmerged, merge_run

    run = load_run(lora_run)
    merged_dir = merge_run(run, tmp_path / "merged", progress=False)
    tokenizer = load_run_tokenizer(run)
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "What is a loss? 损失是什么？"}], add_generation_prompt=True, return_dict=False)])
    unmerged = load_unmerged(run, tokenizer, "float32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ours, theirs = merged(input_ids=ids).logits, unmerged(input_ids=ids).logits
        with unmerged.disable_adapter():
            base = unmerged(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (theirs - base).abs().max().item() > 1e-3  # the adapter is not a no-op
    assert not any("lora" in k for k in merged.state_dict())
    saved = AutoTokenizer.from_pretrained(merged_dir)
    assert saved.chat_template == tokenizer.chat_template and (merged_dir / "chat_template.jinja").is_file()
    assert merged.generation_config.eos_token_id in (tokenizer.convert_tokens_to_ids("<|im_end|>"), [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    with pytest.raises(ExportError, match="never overwrite"):
        merge_run(run, merged_dir, progress=False)


def test_export_versions_list_and_rollback_through_the_cli(lora_run, tmp_path, capsys):
    from ta_export.__main__ import main

    out = tmp_path / "exports"
    first = cli(f"run={lora_run}", "formats=[merged]", f"output={out}", "progress=false")  # the real entry point, once
    assert first.returncode == 0, first.stderr[-3000:]
    assert "v0001 written" in first.stdout and os.readlink(out / "current") == "v0001"
    assert main([f"run={lora_run}", "formats=merged", f"output={out}", "progress=false"]) == 0
    assert os.readlink(out / "current") == "v0002" and "v0002 written" in capsys.readouterr().out
    manifest = json.loads((out / "v0001" / "manifest.json").read_text())
    from ta_export.runs import sha256_file

    assert manifest["adapter_sha256"] == sha256_file(lora_run / "adapter" / "adapter_model.safetensors")
    assert manifest["base_model"]["name"] == "tiny" and manifest["chat_family"] == "chatml" and manifest["peft"] == "lora"
    assert manifest["training_config"]["data"]["max_seq_len"] == 256
    files = manifest["files"]
    assert "merged/model.safetensors" in files and "merged/tokenizer_config.json" in files
    for rel, info in files.items():
        assert sha256_file(out / "v0001" / rel) == info["sha256"], rel
    assert main(["list", f"output={out}"]) == 0
    listing = capsys.readouterr().out
    assert "* v0002" in listing and "  v0001" in listing
    assert main(["rollback", "v0001", f"output={out}"]) == 0 and os.readlink(out / "current") == "v0001"
    assert main(["rollback", "v0009", f"output={out}"]) == 1
    assert "version 'v0009' is not in" in capsys.readouterr().err


def test_clear_errors_for_missing_run_no_adapter_and_bad_formats(lora_run, tmp_path):
    from ta_export.export import export_run

    with pytest.raises(ExportError, match="no such run directory"):
        export_run(tmp_path / "nope", output=tmp_path / "e")
    bare = tmp_path / "bare"
    shutil.copytree(lora_run, bare, ignore=shutil.ignore_patterns("adapter"))
    with pytest.raises(ExportError, match="no trained weights \\(adapter/adapter_config.json is missing\\)"):
        export_run(bare, formats=["merged"], output=tmp_path / "e")
    with pytest.raises(ExportError, match="ollama needs gguf"):
        export_run(lora_run, formats=["merged", "ollama"], output=tmp_path / "e")
    with pytest.raises(ExportError, match="expected one or more of"):
        export_run(lora_run, formats=["onnx"], output=tmp_path / "e")
    assert not (tmp_path / "e").exists()  # nothing was reserved for a refused export
    from ta_export.__main__ import main

    assert main([f"run={tmp_path / 'nope'}"]) == 1


@pytest.mark.slow  # trains a second run (~20 s on 2 busy cores)
def test_full_fine_tune_run_exports_its_model_as_is(tmp_path):
    from ta_export.export import export_run

    run_dir = train_run(tmp_path / "full", "peft=none", "trainer.max_steps=1")
    version, _ = export_run(run_dir, formats=["merged"], output=tmp_path / "e", progress=False)
    assert version.manifest["adapter_sha256"] is None and version.manifest["peft"] == "none"
    from ta_export.runs import sha256_file

    assert sha256_file(version.path / "merged" / "model.safetensors") == sha256_file(run_dir / "model" / "model.safetensors")


def test_serve_commands_from_an_export_and_from_the_adapter(lora_run, tmp_path, capsys):
    from ta_export.export import export_run
    from ta_export.serve import serve_command

    out = tmp_path / "e"
    version, _ = export_run(lora_run, formats=["merged"], output=out, progress=False)
    cmd, _ = serve_command({"engine": "vllm", "hw": "2xa6000"}, out)
    assert cmd[cmd.index("--model") + 1] == str(version.path / "merged")
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--max-model-len") + 1] == "256"
    assert "--enable-lora" not in cmd
    cmd, _ = serve_command({"engine": "vllm", "hw": "a100", "run": str(lora_run), "adapter": "true"}, out)
    assert cmd[cmd.index("--model") + 1] == str(lora_run / "base")
    assert cmd[cmd.index("--lora-modules") + 1] == f"ta-tiny={lora_run / 'adapter'}" and cmd[cmd.index("--max-lora-rank") + 1] == "64"
    with pytest.raises(ExportError, match="no GGUF file in"):
        serve_command({"engine": "llamacpp"}, out)
    from ta_export.__main__ import main

    assert main(["serve", "engine=vllm", "hw=a100", f"output={out}", "dry_run=true", "api_key=s3cret"]) == 0
    printed = capsys.readouterr().out
    assert "vllm.entrypoints.openai.api_server" in printed and "s3cret" not in printed and "--api-key '***'" in printed


def test_export_with_gguf_writes_a_modelfile_for_ollama(lora_run, tmp_path):
    pytest.importorskip("ta_export.gguf", reason="GGUF export (ta_export.gguf) is not in this checkout")
    from ta_export.export import export_run

    version, lines = export_run(lora_run, formats=["gguf", "ollama"], quants=["f16"], output=tmp_path / "e", progress=False)
    # merged/ was only the GGUF's source: not kept in a version that did not ask for it
    assert not (version.path / "merged").exists() and not any(f.startswith("merged/") for f in version.manifest["files"])
    text = (version.path / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in text and "PARAMETER num_ctx 256" in text
    assert 'SYSTEM """You are the teaching assistant of an intro machine-learning course.' in text
    assert lines == [f"ollama create ta-tiny-v0001 -f {version.path / 'Modelfile'}", "ollama run ta-tiny-v0001"]
    assert {"model-f16.gguf", "Modelfile"} <= set(version.manifest["files"]) and version.manifest["gguf_quants"] == ["f16"]


def test_a_run_with_only_the_hydra_config_loads(lora_run, tmp_path):
    from omegaconf import OmegaConf

    copy = tmp_path / "hydra-only"
    shutil.copytree(lora_run, copy, ignore=shutil.ignore_patterns("run.json", "checkpoints"))
    plain = json.loads((lora_run / "run.json").read_text())["config"]
    plain["run_dir"] = "${hydra:runtime.output_dir}"  # as Hydra writes it
    (copy / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(plain), copy / ".hydra" / "config.yaml")
    run = load_run(copy)
    assert run.cfg.run_dir == str(copy) and run.family == "chatml" and run.cfg.data.max_seq_len == 256
    (copy / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ExportError, match="config.yaml: unreadable YAML"):
        load_run(copy)
