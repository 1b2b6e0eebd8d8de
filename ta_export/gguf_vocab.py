"""The tokenizer half of a GGUF: tokens, scores, types, merges, pre-tokenizer, special ids, template.

Everything is read from the merged folder's own `tokenizer.json` / `tokenizer_config.json` and the
HF tokenizer loaded from it, so llama.cpp tokenizes and prompts exactly as training did:
- byte-level BPE (SmolLM2, Qwen2/2.5, Llama-3) -> `tokenizer.ggml.model = gpt2` with merges and
  the pre-tokenizer type whose split regex llama.cpp implements for the tokenizer's own regex;
- SentencePiece-style BPE with byte fallback (Llama-2, Mistral) -> `llama`, with per-token scores
  from the merge ranks (llama.cpp merges the highest-scoring pair first, HF the lowest rank).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The Split regexes of the byte-level tokenizers we support, keyed to llama.cpp's pre-tokenizer
# type that implements the same split. Digits: Qwen2 splits single digits, Llama-3 groups of 1-3.
_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_PRE_TYPES = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}

# gguf TokenType values (gguf.TokenType): kept as ints so this module imports without gguf.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class UnsupportedTokenizer(ValueError):
    """A tokenizer llama.cpp would not split the way HF does (we refuse rather than guess)."""


@dataclass
class GGUFVocab:
    """What goes under `tokenizer.ggml.*` and `tokenizer.chat_template`."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    pre: str  # llama.cpp pre-tokenizer type
    tokens: list[str]
    scores: list[float]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, eot, pad, unk -> id
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str
    end_of_turn: str
    notes: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: a merged model folder needs its tokenizer files") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None


def pre_tokenizer_type(tokenizer_json: dict[str, Any], where: Path) -> str:
    """llama.cpp's pre-tokenizer type for this tokenizer.json's `pre_tokenizer`, or a clear error."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Metaspace"]:
        return "default"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own split regex (llama.cpp spells it with a dash)
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # single digits, then GPT-2's regex
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = parts[0].get("pattern", {}).get("Regex")
        if regex in SPLIT_PRE_TYPES:
            return SPLIT_PRE_TYPES[regex]
    raise UnsupportedTokenizer(
        f"{where}: field 'pre_tokenizer' ({json.dumps(pre)[:200]}) is not a pre-tokenizer ta knows how llama.cpp "
        "reproduces (supported: GPT-2/SmolLM2, Qwen2, Llama-3 byte-level BPE, SentencePiece Metaspace): not supported yet"
    )


def _merge_strings(merges: list[Any]) -> list[str]:
    """tokenizer.json merges (either "a b" strings or [a, b] pairs) as GGUF "a b" strings."""
    if merges and isinstance(merges[0], list):
        # a space inside a part would split wrongly: byte-level BPE writes it as U+0120 anyway
        return [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
    return list(merges)


def _token_table(tokenizer_json: dict[str, Any], n_vocab: int, where: Path) -> tuple[list[str], list[int], dict[str, dict]]:
    """Token text and type for ids 0..n_vocab-1; ids no token uses become [PAD<i>] (UNUSED)."""
    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    added = {a["id"]: a for a in tokenizer_json.get("added_tokens", [])}
    tokens: list[str | None] = [None] * n_vocab
    types = [UNUSED] * n_vocab
    for text, i in vocab.items():
        if i >= n_vocab:
            raise ValueError(f"{where}: token {text!r} has id {i} but the model has only {n_vocab} embedding rows")
        tokens[i], types[i] = text, (BYTE if _BYTE_TOKEN.fullmatch(text) else NORMAL)
    for i, a in added.items():
        if i >= n_vocab:
            raise ValueError(f"{where}: added token {a['content']!r} has id {i} but the model has only {n_vocab} embedding rows")
        tokens[i], types[i] = a["content"], (CONTROL if a.get("special") else USER_DEFINED)
    filled = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    return filled, types, {a["content"]: a for a in added.values()}


def _spm_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Score = minus the rank of the first merge producing the token (0 for unmerged pieces).

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest;
    HF's BPE merges the pair of lowest rank: ranking results by their merge rank makes them agree.
    """
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1)
        rank.setdefault(a + b, r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def detect_end_of_turn(template: str, eos_token: str) -> str:
    """The family's end-of-turn token that the chat template writes, else the eos token."""
    from ta_train.chat_families import FAMILIES

    for spec in FAMILIES.values():
        if spec.end_of_turn != eos_token and spec.end_of_turn in template:
            return spec.end_of_turn
    return eos_token


def build_vocab(merged_dir: Path, n_vocab: int, end_of_turn: str | None = None) -> GGUFVocab:
    """Read the merged folder's tokenizer into GGUF vocab fields (n_vocab: embedding rows)."""
    from transformers import AutoTokenizer

    tj_path = merged_dir / "tokenizer.json"
    tj = read_json(tj_path)
    model = tj.get("model", {})
    pre = pre_tokenizer_type(tj, tj_path)
    if model.get("type") != "BPE":
        raise UnsupportedTokenizer(f"{tj_path}: field 'model.type' is {model.get('type')!r}; only BPE tokenizers are supported yet")
    spm = pre == "default"
    if spm != bool(model.get("byte_fallback")):
        raise UnsupportedTokenizer(f"{tj_path}: field 'model.byte_fallback' does not match the {pre!r} pre-tokenizer; not supported yet")
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    if len(tok) > n_vocab:
        raise ValueError(f"{merged_dir}: the tokenizer has {len(tok)} tokens but the embeddings only {n_vocab} rows")
    template = tok.chat_template
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{merged_dir}: the tokenizer has no chat template (chat_template.jinja / tokenizer_config.json); "
                         "export a ta run, whose tokenizer carries the template training used")
    tokens, types, added = _token_table(tj, n_vocab, tj_path)
    merges = _merge_strings(model.get("merges", []))
    if spm:
        scores = _spm_scores(tokens, merges)
        if tok.unk_token_id is not None:
            types[tok.unk_token_id] = UNKNOWN
    else:
        scores = [0.0] * n_vocab
    eot = end_of_turn or detect_end_of_turn(template, tok.eos_token)
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "eot": tok.convert_tokens_to_ids(eot),
           "pad": tok.pad_token_id, "unk": tok.unk_token_id}
    probe = tok("a", add_special_tokens=True)["input_ids"]
    vocab = GGUFVocab(
        model="llama" if spm else "gpt2",
        pre=pre,
        tokens=tokens,
        scores=scores,
        types=types,
        merges=[] if spm else merges,
        special_ids={k: v for k, v in ids.items() if isinstance(v, int)},
        add_bos=tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id],
        add_eos=tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id],
        add_space_prefix=spm and _prepends_space(tj),
        chat_template=template,
        end_of_turn=eot,
    )
    for name in ("eos", "eot"):
        if name in vocab.special_ids and types[vocab.special_ids[name]] not in (CONTROL, USER_DEFINED):
            vocab.notes.append(f"{name} token id {vocab.special_ids[name]} is not an added special token")
    return vocab


def _prepends_space(tokenizer_json: dict[str, Any]) -> bool:
    """llama.cpp's add_space_prefix for a Metaspace tokenizer.

    llama.cpp prefixes "▁" to the start of the text and to the text after every special token.
    `prepend_scheme: always` (legacy Llama-2 tokenizers) does the same; `first` (how transformers 5
    converts Llama-2) prefixes only a text that starts the input. Chat prompts start with the BOS
    special token, after which `first` adds nothing: no prefix reproduces them exactly.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    return pre.get("prepend_scheme", "always") == "always" and pre.get("add_prefix_space", True) is not False


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Add the vocab fields to a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for name, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_chat_template(vocab.chat_template)
