"""GGUF files read back with the `gguf` package's reader: tensors, layout, metadata, clear errors.

No llama.cpp needed here (tests/integration/test_gguf_llamacpp.py runs the files in llama.cpp).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.gguf_models import random_llama_dir, random_qwen2_dir
from tests.tokenizers import real_tokenizer
from ta_export.gguf import UnsupportedFamily, export_gguf, gguf_path
from ta_export.gguf_tensors import llama3_rope_factors, read_shape, rows_to_pairs
from ta_export.gguf_vocab import UnsupportedTokenizer, pre_tokenizer_type


def read(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


def test_rows_to_pairs_matches_a_naive_per_head_reorder():
    n_heads, d, cols = 3, 8, 5
    w = np.arange(n_heads * d * cols, dtype=np.float32).reshape(n_heads * d, cols)
    expected = np.empty_like(w)
    for h in range(n_heads):
        for i in range(d // 2):
            for j in range(2):  # pair (2i, 2i+1) <- (i, i + d/2)
                expected[h * d + 2 * i + j] = w[h * d + j * d // 2 + i]
    assert np.array_equal(rows_to_pairs(w, n_heads), expected)
    bias = np.arange(n_heads * d, dtype=np.float32)
    assert np.array_equal(rows_to_pairs(bias, n_heads), expected[:, 0] / cols)
    assert torch.equal(rows_to_pairs(torch.from_numpy(w), n_heads), torch.from_numpy(expected))


def test_llama3_rope_factors_match_transformers(tmp_path):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                         vocab_size=32, max_position_embeddings=131072, rope_parameters=scaling)
    config.save_pretrained(tmp_path)
    shape = read_shape(tmp_path)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    assert np.allclose(llama3_rope_factors(shape), (plain / theirs.double()).numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind,family,expected", [("smollm2", "chatml", "gpt-2"), ("qwen3", "chatml", "qwen2"),
                                                  ("llama3", "llama3", "llama-bpe"), ("llama2", "llama2", "default")])
def test_pre_tokenizer_type_of_real_tokenizers(kind, family, expected, tmp_path):
    real_tokenizer(kind, family).save_pretrained(tmp_path)
    tj = json.loads((tmp_path / "tokenizer.json").read_text())
    assert pre_tokenizer_type(tj, tmp_path / "tokenizer.json") == expected


def test_unknown_pre_tokenizer_is_refused():
    tj = {"pre_tokenizer": {"type": "Whitespace"}}
    with pytest.raises(UnsupportedTokenizer, match="tokenizer.json: field 'pre_tokenizer'.*not supported yet"):
        pre_tokenizer_type(tj, Path("m/tokenizer.json"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    tok = real_tokenizer("smollm2", "chatml")
    return random_llama_dir(tok, tmp_path_factory.mktemp("llama") / "merged"), tok


def test_llama_gguf_has_the_training_tokenizer_and_permuted_qk(tiny_llama, tmp_path):
    merged, tok = tiny_llama
    paths = export_gguf(merged, tmp_path, ["f32", "f16", "bf16"], progress=False)
    assert paths == [gguf_path(tmp_path, q) for q in ("f32", "f16", "bf16")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    fields, tensors = read(paths[0])
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == 0
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.chat_template"] == tok.chat_template
    assert fields["tokenizer.ggml.tokens"][:3] == [tok.convert_ids_to_tokens(i) for i in range(3)]
    assert len(fields["tokenizer.ggml.tokens"]) == len(tok) == fields["llama.vocab_size"]
    assert len(fields["tokenizer.ggml.merges"]) > 40000
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == im_end
    assert fields["tokenizer.ggml.eot_token_id"] == im_end
    assert fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert fields["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.ggml.token_type"][im_end] == 3  # CONTROL: parsed only as a special token
    assert fields["llama.context_length"] == 1024 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd

    from safetensors.torch import load_file

    hf = load_file(str(merged / "model.safetensors"))
    q = np.asarray(tensors["blk.1.attn_q.weight"].data).reshape(64, 64)
    k = np.asarray(tensors["blk.1.attn_k.weight"].data).reshape(32, 64)
    assert np.array_equal(q, rows_to_pairs(hf["model.layers.1.self_attn.q_proj.weight"].numpy(), 4))
    assert np.array_equal(k, rows_to_pairs(hf["model.layers.1.self_attn.k_proj.weight"].numpy(), 2))
    assert np.array_equal(np.asarray(tensors["blk.1.attn_v.weight"].data).reshape(32, 64), hf["model.layers.1.self_attn.v_proj.weight"].numpy())

    f16_fields, f16 = read(paths[1])
    assert f16_fields["general.file_type"] == 1
    assert f16["blk.0.ffn_up.weight"].tensor_type.name == "F16" and f16["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    _, bf16 = read(paths[2])
    bits = np.asarray(bf16["token_embd.weight"].data).view(np.uint16).astype(np.uint32) << 16
    emb = hf["model.embed_tokens.weight"].numpy()
    assert bf16["token_embd.weight"].tensor_type.name == "BF16"
    assert np.allclose(bits.view(np.float32).reshape(emb.shape), emb, rtol=2**-8, atol=0)


@pytest.mark.slow  # ~70 s: reading back Qwen's 151k tokens and merges with GGUFReader
def test_qwen2_gguf_keeps_hf_rotary_layout_and_biases(tmp_path):
    tok = real_tokenizer("qwen3", "chatml")
    merged = random_qwen2_dir(tok, tmp_path / "merged")
    (path,) = export_gguf(merged, tmp_path / "out", ["f32"], progress=False)
    fields, tensors = read(path)
    assert fields["general.architecture"] == "qwen2" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["qwen2.rope.freq_base"] == pytest.approx(1e6)
    assert fields["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    from safetensors.torch import load_file

    hf = load_file(str(merged / "model.safetensors"))
    assert np.array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(64, 64), hf["model.layers.0.self_attn.q_proj.weight"].numpy())
    assert np.array_equal(np.asarray(tensors["blk.0.attn_k.bias"].data), hf["model.layers.0.self_attn.k_proj.bias"].numpy())
    assert "output.weight" in tensors  # untied head


def test_unsupported_family_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(tmp_path / "m")
    with pytest.raises(UnsupportedFamily, match=r"config.json: field 'model_type' is 'gpt2' \(GPT2LMHeadModel\).*not supported yet"):
        export_gguf(tmp_path / "m", tmp_path / "out", ["f16"], progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_quant_and_missing_folder_are_clear(tiny_llama, tmp_path):
    merged, _ = tiny_llama
    with pytest.raises(ValueError, match=r"gguf.quant=\['q3_x'\]: expected one or more of"):
        export_gguf(merged, tmp_path, ["q3_x"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_gguf(tmp_path / "nope", tmp_path, ["f16"])
