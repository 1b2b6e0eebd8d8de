"""Merged HF folder -> GGUF files that llama.cpp runs as training ran the model.

f32, f16 and bf16 are written here with the PyPI `gguf` package (tensor by tensor, so memory holds
one tensor at a time); q8_0 and the k-quants are made from the full-precision file by llama.cpp's
own `llama_model_quantize` (through llama-cpp-python's low-level bindings). The header carries the
tokenizer exactly as training used it (ta_export.gguf_vocab) and the family's hyperparameters
(ta_export.gguf_tensors).
"""
from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Sequence

from ta_export.gguf_tensors import ModelShape, UnsupportedFamily, iter_arrays, plan_tensors, read_shape, rope_type
from ta_export.gguf_vocab import GGUFVocab, UnsupportedTokenizer, build_vocab, write_vocab

log = logging.getLogger(__name__)

__all__ = ["export_gguf", "UnsupportedFamily", "UnsupportedTokenizer", "DIRECT_TYPES", "QUANT_TYPES", "gguf_path"]

DIRECT_TYPES = ("f32", "f16", "bf16")  # written here
# quantized by llama.cpp: our name -> llama_ftype constant name in llama_cpp
QUANT_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M"}
_FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}  # gguf.LlamaFileType values


def gguf_path(out_dir: Path, quant: str, name: str = "model") -> Path:
    """Where export_gguf writes the `quant` file: OUT/NAME-QUANT.gguf."""
    return Path(out_dir) / f"{name}-{quant}.gguf"


def _check_quants(quants: Sequence[str]) -> list[str]:
    wanted = [q.lower() for q in quants]
    known = (*DIRECT_TYPES, *QUANT_TYPES)
    bad = [q for q in wanted if q not in known]
    if bad or not wanted:
        raise ValueError(f"gguf.quant={list(quants)!r}: expected one or more of {list(known)}")
    return list(dict.fromkeys(wanted))


def _source_type(shape: ModelShape) -> str:
    """The full-precision type that holds the merged weights exactly (quantization starts from it)."""
    return {"bfloat16": "bf16", "float16": "f16"}.get(shape.torch_dtype.replace("torch.", ""), "f32")


def export_gguf(
    merged_dir: Path,
    out_dir: Path,
    quants: Sequence[str] = ("f16",),
    progress: bool = True,
    *,
    name: str = "model",
    end_of_turn: str | None = None,
) -> list[Path]:
    """Write one GGUF per entry of `quants` (f32, f16, bf16, q8_0, q4_k_m, q5_k_m); returns the paths.

    merged_dir: an HF folder (config.json, safetensors, tokenizer with its chat template) of a
    Llama-family (Llama-2/3, SmolLM2, Mistral-style) or Qwen2/2.5 model; other families raise
    UnsupportedFamily. end_of_turn: the token that closes an assistant turn (default: the family's
    end-of-turn token the chat template writes, else eos). Quantized types need llama-cpp-python.
    """
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    if not merged_dir.is_dir():
        raise FileNotFoundError(f"merged model folder {merged_dir} does not exist")
    wanted = _check_quants(quants)
    shape = read_shape(merged_dir)
    rope_type(shape)  # unsupported rope scaling fails before any writing
    vocab = build_vocab(merged_dir, shape.vocab_rows, end_of_turn)
    for note in vocab.notes:
        log.warning("%s: %s", merged_dir, note)
    plans = plan_tensors(merged_dir, shape)
    quantized = [q for q in wanted if q in QUANT_TYPES]
    if quantized:
        _quantize_fn()  # fail before writing anything when llama-cpp-python is missing
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for q in [q for q in wanted if q in DIRECT_TYPES]:
        written[q] = _write_direct(gguf_path(out_dir, q, name), q, shape, vocab, plans, name, progress)
    if quantized:
        source_type = _source_type(shape)
        source = written.get(source_type)
        temporary = source is None
        if temporary:
            source = _write_direct(out_dir / f".{name}-{source_type}.tmp.gguf", source_type, shape, vocab, plans, name, progress)
        try:
            for q in _bar(quantized, progress, "quantize"):
                written[q] = quantize_gguf(source, gguf_path(out_dir, q, name), q)
        finally:
            if temporary:
                source.unlink(missing_ok=True)
    return [written[q] for q in wanted]


def _bar(items: list, progress: bool, desc: str, unit: str = "file"):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit)


def _write_direct(path: Path, ggml_type: str, shape: ModelShape, vocab: GGUFVocab, plans: list, name: str, progress: bool) -> Path:
    """Write header, vocab and tensors of one f32/f16/bf16 GGUF; atomic (temp file + rename)."""
    import gguf
    import numpy as np

    tmp = path.with_name(path.name + f".part-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), shape.arch)
    try:
        _write_header(writer, shape, vocab, name, ggml_type)
        raw = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}
        for plan in plans:
            kind = "f32" if len(plan.shape) == 1 else ggml_type
            n = int(np.prod(plan.shape))
            dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.int16}[kind]
            writer.add_tensor_info(plan.gguf_name, plan.shape, np.dtype(dtype), n * np.dtype(dtype).itemsize, raw_dtype=raw[kind])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        arrays = iter_arrays(plans, shape, ggml_type)
        for plan in _bar(plans, progress, f"gguf {ggml_type}", "tensor"):
            writer.write_tensor_data(next(arrays))
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return path


def _write_header(writer, shape: ModelShape, vocab: GGUFVocab, name: str, ggml_type: str) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    if shape.head_dim != shape.hidden // shape.n_heads:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    if rope_type(shape) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(shape.rope_scaling["factor"]))
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab_rows)
    writer.add_file_type(_FILE_TYPE[ggml_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)


def _quantize_fn():
    try:
        import llama_cpp
    except ImportError as err:
        raise RuntimeError(
            "q8_0 / k-quant GGUFs are made by llama.cpp's quantizer: install llama-cpp-python "
            "(pip install '.[export]', or `make llama-cpp` for the cached wheel)"
        ) from err
    return llama_cpp


def quantize_gguf(source: Path, out: Path, quant: str, n_threads: int = 0) -> Path:
    """Quantize a full-precision GGUF with llama.cpp's llama_model_quantize (metadata is kept)."""
    llama_cpp = _quantize_fn()
    if quant not in QUANT_TYPES:
        raise ValueError(f"quant={quant!r}: llama.cpp quantizes to one of {list(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = n_threads or (os.cpu_count() or 1)
    tmp = out.with_name(out.name + f".part-{os.getpid()}")
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({source} -> {quant}) failed with code {rc}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
