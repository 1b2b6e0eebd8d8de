"""Which fused attention kernel trains the model: `perf.sdpa_backends`, a priority list for SDPA.

`torch.nn.functional.scaled_dot_product_attention` runs the first kernel of its priority order whose
constraints the call meets. Measured on an H200 (bench/RESULTS.md, forward + backward of 8 x 32 heads
x 2,048 x 64, causal, bf16): cuDNN 1.77 ms, memory-efficient 5.30 ms, PyTorch's FlashAttention-2 10.55
ms, math 39.1 ms. PyTorch's default order tries FlashAttention first; recent releases put cuDNN first
on sm90/sm100 when the cuDNN runtime is 9.15.1 or newer. Where it is not first, the choice is worth
a 16-layer model's step over 100 ms. `perf.sdpa_backends=[cudnn,flash,efficient,math]` sets the order;
the kernels left out of the list are not used at all. cuDNN is refused with an older runtime
(`cudnn_refusal`).

How it is applied: the model's attention implementation becomes `ta_sdpa_<names>` (registered with
transformers' AttentionInterface, with sdpa's own mask function), which calls transformers' sdpa
attention inside `torch.nn.attention.sdpa_kernel(backends, set_priority=True)`. The context sits
inside the attention function, so the forward that gradient checkpointing recomputes during backward
picks the same kernel (a different one would save differently shaped tensors), and dynamo traces it
without a graph break (compiled layers, `perf.compile`). transformers keeps the implementation name
out of config.json, so exported models load anywhere.

Grouped-query attention: without a mask transformers passes `enable_gqa=True` and k, v with the
key/value heads only; a kernel that does not take that (cuDNN in some PyTorch releases) is skipped.
`settle` asks PyTorch on the training device (`torch._fused_sdp_choice`, the dispatcher's own choice
function) which kernel runs with and without repeating k and v to all heads, and repeats them when
that lets an earlier kernel of the list run. Repeated k, v are what the memory plan already counts
for sdpa (ta_train.plan_activations). With a padding or packing mask transformers repeats them itself.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger(__name__)

PREFIX = "ta_sdpa"
# perf.sdpa_backends name -> torch.nn.attention.SDPBackend member (names checked in ta_train.config)
_MEMBERS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
_NAMES = {member: name for name, member in _MEMBERS.items()}


def sdp_backends(names: Sequence[str]) -> list[Any]:
    """The SDPBackend members for perf.sdpa_backends names, in order."""
    from torch.nn.attention import SDPBackend

    return [getattr(SDPBackend, _MEMBERS[n]) for n in names]


def backend_name(index: int) -> str:
    """perf.sdpa_backends name of a `torch._fused_sdp_choice` result ("error": no kernel can run)."""
    from torch.nn.attention import SDPBackend

    for member in _MEMBERS.values():
        if int(getattr(SDPBackend, member)) == index:
            return _NAMES[member]
    return "error" if index == int(SDPBackend.ERROR) else f"backend {index}"


# key parts: never "flash", which transformers reads as "a FlashAttention implementation is in use"
# (utils.generic.is_flash_attention_requested) and then builds no attention mask in some paths
_KEY = {"cudnn": "cudnn", "flash": "fa2", "efficient": "mem", "math": "math"}
# cuDNN attention below this runtime version can access memory out of bounds for query lengths not
# divisible by 128 (pytorch/pytorch#169849); PyTorch only prefers cuDNN from 9.15.1 on
MIN_CUDNN = 91501


def implementation_name(names: Sequence[str], repeat_kv: bool) -> str:
    """Registry key of the implementation for one backend list (letters, digits and '_' only)."""
    return "_".join([PREFIX, *(_KEY[n] for n in names)]) + ("_rkv" if repeat_kv else "")


def cudnn_refusal(names: Sequence[str], cudnn_version: int | None) -> str | None:
    """Why `names` may not list cudnn with this cuDNN runtime (None: it may). Padded SFT batches have
    arbitrary lengths, the case the old runtimes get wrong."""
    if "cudnn" not in names or cudnn_version is None or cudnn_version >= MIN_CUDNN:
        return None
    return (f"perf.sdpa_backends lists cudnn, but this cuDNN runtime is {cudnn_version} (< {MIN_CUDNN}): its attention "
            "can read out of bounds for lengths not divisible by 128 (pytorch/pytorch#169849), which is why PyTorch "
            "does not prefer it there; drop cudnn from the list or install a newer cuDNN")


def _repeat_heads(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, d) -> (B, kv_heads * n_rep, T, d), each key/value head next to its queries."""
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def make_attention(names: Sequence[str], repeat_kv: bool) -> Callable[..., Any]:
    """transformers' sdpa attention under the `names` priority order (the AttentionInterface signature)."""
    from torch.nn.attention import sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa

    backends = sdp_backends(names)
    # whether transformers passes k, v with enable_gqa (else it repeats them itself); its arguments
    # are (mask, key) in older transformers releases
    with_value = len(inspect.signature(use_gqa_in_sdpa).parameters) > 2

    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        n_rep = query.shape[1] // key.shape[1]
        # only where transformers would pass enable_gqa: elsewhere (e.g. head dim > 256) it repeats k, v
        # itself, and repeating them here too would give n_rep * n_rep copies
        if repeat_kv and attention_mask is None and n_rep > 1 and query.shape[2] > 1 and (
            use_gqa_in_sdpa(None, key, value) if with_value else use_gqa_in_sdpa(None, key)
        ):
            key, value = _repeat_heads(key, n_rep), _repeat_heads(value, n_rep)
        with sdpa_kernel(backends, set_priority=True):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return attention


def register(names: Sequence[str], repeat_kv: bool) -> str:
    """Register the implementation (and sdpa's mask function under the same key); returns the key."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    key = implementation_name(names, repeat_kv)
    if key not in AttentionInterface._global_mapping:
        AttentionInterface.register(key, make_attention(names, repeat_kv))
        AttentionMaskInterface.register(key, sdpa_mask)
    return key


def _configs(model: Any) -> list[Any]:
    """The transformers configs whose attention implementation the layers read (PEFT-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [base.config]


def install(model: Any, names: Sequence[str], repeat_kv: bool = False) -> str:
    """Route the model's sdpa attention through the `names` order; returns the implementation key."""
    key = register(names, repeat_kv)
    for config in _configs(model):
        current = config._attn_implementation
        if current != "sdpa" and not str(current).startswith(PREFIX):
            raise ValueError(f"perf.sdpa_backends applies to sdpa attention; this model runs {current!r}")
        config._attn_implementation = key
    return key


@dataclass(frozen=True)
class Choice:
    """What PyTorch runs on the training device for unmasked rows (with GQA passed natively or with
    k, v repeated) and for rows with a mask."""

    native: str
    repeated: str
    masked: str
    repeat_kv: bool
    gqa: bool = False  # fewer key/value heads than query heads
    decode: str = ""  # one query token against the cache (generation after training)

    @property
    def unmasked(self) -> str:
        return self.repeated if self.repeat_kv else self.native

    def describe(self, names: Sequence[str] | None) -> str:
        order = " > ".join(names) if names else "in PyTorch's order"
        how = f" (k, v repeated to all heads; enable_gqa would run {self.native})" if self.repeat_kv else ""
        decode = f"; one-token generation runs {self.decode}" if self.decode else ""
        return f"sdpa kernels {order}: unmasked rows run {self.unmasked}{how}; masked rows run {self.masked}{decode}"


def probe(names: Sequence[str] | None, *, n_heads: int, n_kv_heads: int, head_dim: int, seq_len: int,
          dtype: torch.dtype, device: Any) -> Choice:
    """Ask the dispatcher which kernel runs for one training-shaped call, under the `names` order
    (None: PyTorch's own order and enabled kernels, what a run without perf.sdpa_backends gets).

    Shapes (1, heads, seq_len, head_dim) on `device` in `dtype` with requires_grad (some kernels
    differ for training), causal without a mask as transformers calls it for full rows, and with a
    boolean (1, 1, T, T) mask as it calls it for padded or packed rows (k, v then repeated).
    """
    from torch.nn.attention import sdpa_kernel

    seq_len = max(int(seq_len), 2)
    shape = (1, n_heads, seq_len, head_dim)
    q = torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)
    kv = torch.zeros((1, n_kv_heads, seq_len, head_dim), dtype=dtype, device=device, requires_grad=True)
    full = torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)
    mask = torch.ones((1, 1, seq_len, seq_len), dtype=torch.bool, device=device).tril()

    one = torch.zeros((1, n_heads, 1, head_dim), dtype=dtype, device=device)

    def kernel(query: torch.Tensor, k: torch.Tensor, m: torch.Tensor | None) -> str:
        causal = m is None and query.shape[2] > 1
        try:  # no viable kernel: CUDA returns SDPBackend.ERROR, the CPU dispatcher raises
            return backend_name(torch._fused_sdp_choice(query, k, k, m, 0.0, causal, scale=None, enable_gqa=True))
        except RuntimeError:
            return "error"

    def choices() -> tuple[str, ...]:
        return kernel(q, kv, None), kernel(q, full, None), kernel(q, full, mask), kernel(one, kv, None)

    gqa = n_kv_heads < n_heads
    if names is None:
        native, repeated, masked, decode = choices()
        return Choice(native=native, repeated=repeated, masked=masked, repeat_kv=False, gqa=gqa, decode=decode)
    with sdpa_kernel(sdp_backends(names), set_priority=True):
        native, repeated, masked, decode = choices()
    repeat_kv = prefers_repeat(names, native=native, repeated=repeated, gqa=gqa)
    choice = Choice(native=native, repeated=repeated, masked=masked, repeat_kv=repeat_kv, gqa=gqa, decode=decode)
    if "error" in (choice.unmasked, choice.masked):
        rows = "unmasked" if choice.unmasked == "error" else "padded or packed (masked)"
        raise ValueError(
            f"perf.sdpa_backends={list(names)}: no listed kernel runs {rows} rows on {device} in {dtype} "
            f"({n_heads} heads, head dim {head_dim}, {seq_len} tokens); add a fallback such as math at the end"
        )
    return choice


def prefers_repeat(names: Sequence[str], *, native: str, repeated: str, gqa: bool) -> bool:
    """Repeat k, v for unmasked GQA rows when that runs a kernel earlier in `names` than enable_gqa does."""
    rank = {n: i for i, n in enumerate(names)}
    return gqa and rank.get(repeated, len(names)) < rank.get(native, len(names))


def compute_dtype(precision: str, model: Any) -> torch.dtype:
    """The dtype q, k, v have in training: the autocast dtype under mixed precision, else the weights'."""
    mixed = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
    if precision in mixed:
        return mixed[precision]
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def probe_model(model: Any, names: Sequence[str] | None, *, precision: str, seq_len: int, device: Any) -> Choice:
    """`probe` with the model's head counts and head size and the dtype q, k, v have in training."""
    config = _configs(model)[0]
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return probe(names, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, seq_len=seq_len,
                 dtype=compute_dtype(precision, model), device=device)


def settle(model: Any, names: Sequence[str], *, precision: str, seq_len: int, device: Any) -> Choice:
    """Probe on the training device and install the implementation that runs the earliest kernel."""
    if torch.device(device).type == "cuda":
        # the loaded library's version: torch's getVersionInt is cudnnGetVersion() (the compile-time
        # CUDNN_VERSION only in static builds, where the two are the same library)
        refusal = cudnn_refusal(names, torch.backends.cudnn.version())
        if refusal:
            raise ValueError(refusal)
    choice = probe_model(model, names, precision=precision, seq_len=seq_len, device=device)
    install(model, names, choice.repeat_kv)
    log.info("attention: %s", choice.describe(names))
    if choice.decode == "error":  # training runs; generation in this process (demo.question) would fail
        log.warning("perf.sdpa_backends=%s: no listed kernel runs one-token generation on %s; add math at the end "
                    "if this run generates (demo.question)", list(names), device)
    return choice
