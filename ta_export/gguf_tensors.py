"""The weights half of a GGUF: which family a merged folder is, and its tensors in llama.cpp's layout.

HF Llama checkpoints rotate each attention head in halves (dims i and i + d/2 form a rotary pair:
transformers' `rotate_half`); llama.cpp's `llama` architecture rotates adjacent pairs (2i, 2i+1),
the layout of Meta's original checkpoints. So the rows of q_proj / k_proj (and their biases) are
reordered per head, half-major -> pair-major. Qwen2 is run by llama.cpp with NeoX-style rotation,
which is HF's own layout: its weights are written unchanged (the logits test checks both).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ta_export.gguf_vocab import read_json

# model_type in config.json -> (llama.cpp architecture, whether Q/K rows are permuted)
FAMILIES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}


class UnsupportedFamily(ValueError):
    """The merged model's family has no GGUF writer here yet."""


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters a GGUF header needs, read from config.json."""

    model_type: str
    arch: str  # llama.cpp architecture name
    permute_qk: bool
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int  # tokens (max_position_embeddings)
    rope_theta: float
    rms_eps: float
    vocab_rows: int  # embedding rows (>= the tokenizer's length)
    tie_embeddings: bool
    rope_scaling: dict[str, Any]
    torch_dtype: str


def read_shape(merged_dir: Path) -> ModelShape:
    """config.json -> ModelShape; an unsupported family raises UnsupportedFamily naming it."""
    path = merged_dir / "config.json"
    cfg = read_json(path)
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        archs = ", ".join(cfg.get("architectures") or []) or "no architectures field"
        raise UnsupportedFamily(
            f"{path}: field 'model_type' is {model_type!r} ({archs}): GGUF export of this family is not supported yet "
            f"(supported: {', '.join(sorted(FAMILIES))}: Llama-2/3, SmolLM2, Mistral-style, Qwen2/2.5)"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"{path}: field {key!r} is missing or not an integer")
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    n_heads = cfg["num_attention_heads"]
    arch, permute = FAMILIES[model_type]
    return ModelShape(
        model_type=model_type,
        arch=arch,
        permute_qk=permute,
        n_layers=cfg["num_hidden_layers"],
        hidden=cfg["hidden_size"],
        intermediate=cfg["intermediate_size"],
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        context_length=cfg.get("max_position_embeddings") or 2048,
        rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        vocab_rows=cfg["vocab_size"],
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling={k: v for k, v in rope.items() if k != "rope_theta"},
        torch_dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"),
    )


def rope_type(shape: ModelShape) -> str:
    kind = shape.rope_scaling.get("rope_type") or shape.rope_scaling.get("type") or "default"
    if kind not in ("default", "linear", "llama3"):
        raise UnsupportedFamily(f"rope scaling {kind!r} of this {shape.model_type} model is not supported yet for GGUF export")
    return kind


def llama3_rope_factors(shape: ModelShape) -> np.ndarray:
    """Per-frequency divisors of Llama-3.1's rope scaling (llama.cpp reads them as `rope_freqs`).

    Wavelengths shorter than original_ctx / high_freq_factor keep their frequency, longer than
    original_ctx / low_freq_factor are slowed by `factor`, and the band between is interpolated.
    """
    s = shape.rope_scaling
    factor, low, high = float(s["factor"]), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s["original_max_position_embeddings"])
    freqs = 1.0 / shape.rope_theta ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def rows_to_pairs(w: Any, n_heads: int) -> Any:
    """Reorder a q/k projection's output rows per head from HF's halves to llama.cpp's pairs.

    w: [n_heads * head_dim, ...] (a weight or a bias; numpy array or torch tensor).
    Row h*d + 2i + j <- row h*d + j*d/2 + i.
    """
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def safetensors_files(merged_dir: Path) -> list[Path]:
    index = merged_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [merged_dir / s for s in shards]
    single = merged_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{merged_dir}: no model.safetensors or model.safetensors.index.json (a merged HF folder)")
    return [single]


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where its data is and how it is transformed."""

    gguf_name: str
    hf_name: str  # "" for tensors computed here (rope_freqs)
    file: Path | None
    shape: tuple[int, ...]  # HF (row-major) shape
    permute_heads: int  # 0: as is; else the head count for rows_to_pairs


def plan_tensors(merged_dir: Path, shape: ModelShape) -> list[TensorPlan]:
    """Every tensor of the merged model mapped to its GGUF name (unknown names are an error)."""
    import gguf
    from safetensors import safe_open

    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[shape.arch]
    names = gguf.get_tensor_name_map(arch, shape.n_layers)
    plans: list[TensorPlan] = []
    for file in safetensors_files(merged_dir):
        with safe_open(str(file), framework="pt") as fh:
            for hf_name in fh.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed by llama.cpp from rope theta
                if hf_name == "lm_head.weight" and shape.tie_embeddings:
                    continue  # llama.cpp reuses token_embd when output.weight is absent
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UnsupportedFamily(f"{file}: tensor {hf_name!r} has no GGUF name for {shape.arch}; not supported yet")
                heads = 0
                if shape.permute_qk and ".self_attn.q_proj." in hf_name:
                    heads = shape.n_heads
                elif shape.permute_qk and ".self_attn.k_proj." in hf_name:
                    heads = shape.n_kv_heads
                plans.append(TensorPlan(gguf_name, hf_name, file, tuple(fh.get_slice(hf_name).get_shape()), heads))
    if rope_type(shape) == "llama3":
        plans.append(TensorPlan("rope_freqs.weight", "", None, (shape.head_dim // 2,), 0))
    emb = next((p for p in plans if p.gguf_name == "token_embd.weight"), None)
    if emb is None:
        raise ValueError(f"{merged_dir}: no token embedding tensor (model.embed_tokens.weight)")
    return plans


def load_tensor(plan: TensorPlan, shape: ModelShape) -> Any:
    """The tensor in HF dtype as a torch tensor, Q/K rows reordered for llama.cpp when needed."""
    import torch
    from safetensors import safe_open

    if plan.file is None:
        return torch.from_numpy(llama3_rope_factors(shape))
    with safe_open(str(plan.file), framework="pt") as fh:
        t = fh.get_tensor(plan.hf_name)
    if plan.permute_heads:
        if t.shape[0] % (plan.permute_heads * 2):
            raise ValueError(f"{plan.file}: {plan.hf_name} has {t.shape[0]} rows, not a multiple of 2 x {plan.permute_heads} heads")
        t = rows_to_pairs(t, plan.permute_heads)
    return t


def iter_arrays(plans: list[TensorPlan], shape: ModelShape, ggml_type: str) -> Iterator[np.ndarray]:
    """Tensor data in plan order as numpy arrays of the GGUF type (1-D tensors stay f32)."""
    import torch

    for plan in plans:
        t = load_tensor(plan, shape)
        kind = "f32" if t.dim() == 1 else ggml_type
        if kind == "bf16":  # raw bf16 bits; exact when the weights are bf16 already
            yield t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        else:
            yield t.to(torch.float32 if kind == "f32" else torch.float16).contiguous().numpy()
