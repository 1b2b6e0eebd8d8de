"""Every config group composes, every model x hw pair composes, typos fail naming the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, REPO, compose
from ta_train.config import PeftMethod, TrainConfig

GROUPS = ["model", "data", "peft", "precision", "strategy", "objective", "logger", "hw"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def typed(overrides: list[str]) -> TrainConfig:
    cfg, _ = compose(["run_dir=/tmp/x", *overrides])
    return OmegaConf.to_object(cfg)


def test_every_group_has_the_options_the_readme_lists():
    assert options("model") == sorted(
        ["tiny", "smollm2_135m", "qwen7b", "qwen2_5_7b", "llama3_8b", "llama2_7b", "internlm2_7b", "baichuan2_7b", "llama2_13b", "qwen14b"]
    )
    assert options("peft") == ["lora", "none", "qlora"]
    assert options("precision") == ["16-mixed", "32-true", "bf16-mixed"]
    assert options("strategy") == sorted(
        ["auto", "ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"]
    )
    assert options("hw") == sorted(["a100", "h200", "2xa6000", "24g", "t4", "cpu"])
    assert options("logger") == ["csv", "tensorboard", "wandb"]
    assert options("objective") == ["sft"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for group in [*GROUPS, "sweeps", "launcher"]:
        for name in options(group):
            assert f"`{name}`" in readme, f"README does not list {group}={name}"


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "hw"])
def test_every_option_of_a_group_composes(group):
    for name in options(group):
        cfg = typed([f"{group}={name}"])
        assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_with_every_hw_profile(model):
    for hw in options("hw"):
        cfg = typed([f"model={model}", f"+hw={hw}"])
        assert cfg.model.name == model and cfg.hw is not None and cfg.hw.name == hw
        assert cfg.trainer.devices == cfg.hw.devices
        cfg.batch.accumulation(cfg.trainer.devices)  # divisible on every profile
        a = cfg.model.arch
        assert a.hidden_size % a.n_heads == 0 and a.n_heads % a.n_kv_heads == 0


def test_hw_profiles_set_real_trainer_settings():
    t4 = typed(["+hw=t4"])
    assert t4.precision.name == "16-mixed" and t4.hw.flash_attention is False
    zero = typed(["+hw=2xa6000"])
    assert (zero.strategy.name, zero.strategy.zero_stage, zero.trainer.devices) == ("deepspeed", 2, 2)
    assert zero.batch.accumulation(2) == 32
    g24 = typed(["+hw=24g"])
    assert g24.peft.method == PeftMethod.lora and g24.gradient_checkpointing
    a100 = typed(["+hw=a100", "model=qwen7b"])
    assert (a100.precision.name, a100.batch.global_size, a100.trainer.accelerator) == ("bf16-mixed", 128, "gpu")
    cpu = typed(["+hw=cpu"])
    assert (cpu.precision.name, cpu.trainer.accelerator) == ("32-true", "cpu")


def test_command_line_beats_the_hw_profile():
    cfg = typed(["+hw=t4", "precision=bf16-mixed", "batch.micro_size=2"])
    assert cfg.precision.name == "bf16-mixed" and cfg.batch.micro_size == 2


def test_lr_follows_the_peft_method_unless_set():
    assert typed(["peft=lora"]).optim.lr == 2e-4
    assert typed(["peft=none"]).optim.lr == 1e-5
    assert typed(["peft=none", "optim.lr=3e-5"]).optim.lr == 3e-5


def test_seed_defaults():
    cfg = typed([])
    assert (cfg.peft.r, cfg.peft.alpha, cfg.peft.dropout) == (64, 128, 0.05)
    assert cfg.model.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.objective.label_smoothing == 0.05 and cfg.optim.warmup_ratio == 0.03
    assert cfg.trainer.gradient_clip_val == 1.0
    q = typed(["peft=qlora"]).peft
    assert (q.quant_type, q.double_quant, q.compute_dtype) == ("nf4", True, "auto")
    from ta_train.model import qlora_compute_dtype

    assert qlora_compute_dtype("auto", typed(["+hw=a100"]).precision.name) == "bfloat16"
    assert qlora_compute_dtype("auto", typed(["+hw=t4"]).precision.name) == "float16"


@pytest.mark.parametrize("override, message", [
    ("precision.name=bf17-mixed", "precision.name='bf17-mixed': expected one of"),
    ("strategy.name=horovod", "strategy.name='horovod'"),
    ("logger.name=mlflow", "logger.name='mlflow'"),
    # Lightning would take lower case, but the planner and the FSDP grad norm compare exact names
    ("strategy=fsdp strategy.fsdp_sharding=no_shard", "strategy.fsdp_sharding='no_shard': expected one of"),
])
def test_string_choices_fail_before_anything_loads(override, message):
    with pytest.raises(Exception, match=message):
        typed(override.split())


@pytest.mark.parametrize("override, message", [
    ("perf.ce_chunk_rows=0", r"perf\.ce_chunk_rows=0: expected a positive"),
    ("perf.ce_chunk_rows=-4", r"perf\.ce_chunk_rows=-4: expected a positive"),
    ("perf.compile_mode=fast", r"perf\.compile_mode='fast': expected one of"),
    ("perf.compile_backend=xla", r"perf\.compile_backend='xla': expected one of"),
    ("perf.compile_dynamic=maybe", r"compile_dynamic"),
])
def test_bad_perf_values_fail_at_composition_naming_the_key(override, message):
    with pytest.raises(Exception, match=message):
        typed([override])


def test_non_divisible_batch_is_an_error():
    cfg = typed(["batch.global_size=10", "batch.micro_size=4"])
    with pytest.raises(ValueError, match="global_size=10 is not a multiple"):
        cfg.batch.accumulation(1)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ta_train", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_step=3", "Key 'max_step' not in 'TrainerConfig'"),
        ("model=qwen8b", "Could not find 'model/qwen8b'"),
        ("peft.r=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("model.chat_family=vicuna", "model.chat_family"),
    ],
)
def test_typos_fail_at_composition_naming_the_key(override, message):
    proc = run_cli(override, "--cfg", "job")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cfg_job_prints_the_config_without_importing_torch():
    code = (
        "import sys; sys.argv=['ta_train','+hw=a100','model=qwen7b','--cfg','job'];"
        "import runpy\n"
        "try:\n    runpy.run_module('ta_train', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "name_or_path: Qwen/Qwen2-7B-Instruct" in proc.stdout
    assert "name: a100" in proc.stdout
