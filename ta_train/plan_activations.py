"""Activation and logits arithmetic of the memory plan (split from `ta_train.plan_memory`): what one
micro-batch's forward saves for backward per decoder layer, the head, and the loss buffers at their peak.

Pure arithmetic, no torch. Each formula was checked tensor by tensor against autograd's saved
tensors and the CPU allocator's events (bench/activation_audit.py, tests/unit/test_activation_audit.py).
"""
from __future__ import annotations

from ta_train.config import ArchConfig
from ta_train.plan_memory import QLORA_UNQUANTIZED_BYTES, Setup, dtype_bytes


def _resid_bytes(s: Setup) -> int:
    """Bytes per element of the residual stream: it takes the embedding's dtype."""
    if s.method == "none":
        return 2 if s.deepspeed_half else 4  # fp32 embedding output under autocast
    if s.method == "qlora":
        return QLORA_UNQUANTIZED_BYTES
    return dtype_bytes(s.frozen_dtype)


# Decoder-layer linears by the activation they read: the attention norm's output (q, k, v, fused
# W_pack/wqkv/c_attn), the attention output (o), the MLP norm's output (gate, up; InternLM2 w1, w3),
# the SwiGLU product (down; w2). A full fine-tune of a Llama layer has 3, 1, 2 and 1 of them.
_INPUT_OF = {
    "q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "W_pack": "qkv", "wqkv": "qkv", "c_attn": "qkv",
    "o_proj": "o", "wo": "o", "gate_proj": "up", "up_proj": "up", "w1": "up", "w3": "up", "down_proj": "down", "w2": "down",
}
_FULL_CONSUMERS = {"qkv": 3, "o": 1, "up": 2, "down": 1}


def _input_bytes(s: Setup, consumers: int, width: int, xb: int, presaved: bool) -> float:
    """Bytes per token the linears reading one activation (width, xb bytes/element) save for backward.

    A linear saves its input only for its own weight's gradient: frozen base linears save none.
    Full fine-tune: each linear saves what it multiplies. Under autocast that is its own half cast
    of an fp32 input (autocast caches casts of weights, not of activations: q, k and v make three
    copies); an input already in the compute dtype is one shared storage, free when another op keeps
    it anyway (`presaved`: sdpa/FA2 keep their output, which is o_proj's input).
    LoRA adapters: peft casts the input to the adapter dtype (fp32), dropout, then lora_A under
    autocast casts to half and saves that: e bytes per target (a fresh copy per target whenever a
    cast happens). Dropout > 0 also keeps its mask: CUDA's fused kernel a bool (1 byte), CPU's
    unfused dropout a noise tensor in the adapter dtype (4 bytes; 2 under DeepSpeed half).
    Without dropout and without any cast (fp32 everywhere) all targets share the input itself.
    """
    if consumers == 0:
        return 0.0
    e = 2 if s.half else 4
    if s.method == "none":
        if xb == e:
            return 0.0 if presaved else float(e * width)
        return float(consumers * e * width)
    adapter = 2 if s.deepspeed_half else 4
    if s.lora_dropout > 0:
        return float(consumers * ((adapter if s.cpu else 1) + e) * width)
    if xb == adapter == e:
        return 0.0 if presaved else float(e * width)
    return float(consumers * e * width)


def layer_activation_bytes_per_token(arch: ArchConfig, s: Setup) -> float:
    """Bytes one decoder layer saves for backward per token, T x T terms excluded (`score_bytes_per_sequence`).

    Korthikanti et al. 2022 ("Reducing Activation Recomputation", eq. 2) count 34*s*b*h bytes per
    GPT layer in fp16; this is the same bookkeeping for HF's Llama/Qwen layer (RMSNorm, RoPE, GQA,
    SwiGLU of width f) as autograd really runs it, checked tensor by tensor with
    bench/activation_audit.py (saved-tensor hooks, every storage once; exact on CPU for full
    fine-tuning and LoRA in fp32 and bf16 autocast, with and without dropout). e = compute bytes (2
    under half precision, 4 in fp32), rb = residual-stream bytes (`_resid_bytes`: fp32 under full
    fine-tuning and QLoRA, the frozen dtype under LoRA), g = n_kv_heads / n_heads:
      norms      2 x (4h + 4): HF RMSNorm saves its input in fp32 (a copy when rb = 2) and the rsqrt;
                 a trainable norm weight (full fine-tune) also keeps the normalized rb*h copy
      attention  q e*h, k and v e*h*g each (sdpa and eager repeat k and v to all heads: g -> 1),
                 sdpa/FA2 their output e*h (= o_proj's input) and fp32 logsumexp 4*a per token
      MLP        gate out, silu(gate), up out: 3 * m * f, m = e (QLoRA: 4, bitsandbytes returns its
                 output in the fp32 input's dtype)
      inputs     what the linears reading the norm outputs, the attention output and the SwiGLU
                 product keep (`_input_bytes`): full fine-tune in bf16-mixed 6h (q, k, v casts)
                 + 4h (gate, up) + 2f (down); frozen linears nothing
      LoRA       plus lora_A's output, e*r per target
    E.g. bf16-mixed sdpa: full fine-tune 34h + 8f + 4a + 8; LoRA q,k,v,o + CUDA dropout 16h + 4*3h + 6f + 8r + 4a + 8.
    A LoRA model's first layer saves less (its input, the frozen embedding, needs no gradient):
    counting it like the others errs by part of one layer, on the safe side. QLoRA: bitsandbytes'
    MatMul4Bit keeps only the packed weight (`ctx.tensors = (None, B)`), never its input.
    """
    h, f, a, r = arch.hidden_size, arch.intermediate_size, arch.n_heads, s.r
    e, rb = (2 if s.half else 4), _resid_bytes(s)
    g = arch.n_kv_heads / arch.n_heads if s.attn == "flash_attention_2" else 1.0
    m = QLORA_UNQUANTIZED_BYTES if s.method == "qlora" else e
    full = s.method == "none"
    norms = 2 * (4 * h + 4 + (rb * h if full else 0))
    fused = s.attn != "eager"  # sdpa / FA2 keep their output and logsumexp
    attn = e * h * (1 + 2 * g) + (e * h + 4 * a if fused else 0)
    mlp = 3 * m * f
    if full:
        consumers = dict(_FULL_CONSUMERS)
    else:
        consumers = {k: 0 for k in _FULL_CONSUMERS}
        for t in s.targets:
            if t not in _INPUT_OF:
                raise ValueError(f"LoRA target {t!r} has no known input; known: {sorted(_INPUT_OF)}")
            consumers[_INPUT_OF[t]] += 1
    inputs = (
        _input_bytes(s, consumers["qkv"], h, rb, False)
        + _input_bytes(s, consumers["o"], h, e, fused)
        + _input_bytes(s, consumers["up"], h, rb, False)
        + _input_bytes(s, consumers["down"], f, m, False)
    )
    lora = 0 if full else e * r * len(s.targets)
    return norms + attn + mlp + inputs + lora


def score_bytes_per_sequence(arch: ArchConfig, s: Setup) -> float:
    """T x T tensors one layer saves per sequence.

    eager materializes the scores: the fp32 softmax output and its half cast (HF computes softmax in
    fp32), a*T^2*(4 + 2) bytes under half precision, a*T^2*4 in fp32.
    sdpa keeps no scores (on an H200 counting a*T^2 overestimated by 96 GiB), but with a padding
    mask every layer converts HF's boolean (B, 1, T, T) mask to a float bias in the compute dtype
    and keeps it: e*T^2 (bench/activation_audit.py). Batches of unequal rows carry one; rows that all
    fill max_seq_len run without it (and without repeating k, v: what flash_attention_2 saves, 0).
    """
    if s.attn == "flash_attention_2":
        return 0.0
    e = 2 if s.half else 4
    if s.attn == "sdpa":
        return float(e * s.seq_len**2)
    return arch.n_heads * s.seq_len**2 * (4 + (2 if s.half else 0))


def head_bytes_per_token(arch: ArchConfig, s: Setup) -> float:
    """The final norm and lm_head input, per token: 4h + 4 (fp32 norm input and rsqrt); a trainable
    head (full fine-tune) adds the normalized rb*h copy and lm_head's input, rb*h or its e*h cast."""
    h, e, rb = arch.hidden_size, (2 if s.half else 4), _resid_bytes(s)
    if s.method != "none":
        return 4.0 * h + 4
    return 4.0 * h + 4 + rb * h + (rb * h if rb == e else e * h)


def activation_bytes(arch: ArchConfig, s: Setup) -> float:
    """Activations saved for backward per device for one micro-batch.

    Without checkpointing: L layers of `layer_activation_bytes_per_token` * tokens + L * scores.
    With full recompute (HF checkpoints every decoder layer): each layer keeps only its input
    (resid bytes * h per token; Korthikanti's 2sbh) plus one layer's full activations and scores
    while it is recomputed. Plus the head (`head_bytes_per_token`).
    The recomputed layer lives only in backward, after the loss and lm_head backward have freed
    the logits buffers (`logits_bytes`), so only its excess over them adds to the peak. Measured on
    CPU (bench/memory_bench.py): adding the whole layer over-predicted checkpointed LoRA runs by up
    to 15%; with the excess rule they land 7-11% under peak RSS (bench/RESULTS.md).
    """
    tokens = s.micro_batch * s.seq_len
    layer = layer_activation_bytes_per_token(arch, s) * tokens + score_bytes_per_sequence(arch, s) * s.micro_batch
    head = head_bytes_per_token(arch, s) * tokens
    if s.gradient_checkpointing:
        recompute = max(0.0, layer - logits_bytes(arch, s))
        return arch.n_layers * _resid_bytes(s) * arch.hidden_size * tokens + recompute + head
    return arch.n_layers * layer + head


def fused_ce_applies(s: Setup) -> bool:
    """perf.fused_ce is on and the module will not fall back (ta_train.fused_ce.fused_head): the
    model's head is a plain lm_head (model.plain_lm_head), no FSDP, no ZeRO-3, no LoRA on lm_head."""
    sharded = s.strategy == "fsdp" or (s.strategy == "deepspeed" and s.zero_stage >= 3)
    lora_head = s.method != "none" and "lm_head" in s.targets
    return s.fused_ce and s.plain_lm_head and not sharded and not lora_head


def fused_ce_bytes(arch: ArchConfig, s: Setup) -> float:
    """Buffers of the fused, chunked loss (ta_train.fused_ce), bytes.

    One chunk of min(ce_chunk_rows, tokens) rows: fp32 logits, reused in place as their gradient
    (4 B), plus under half precision the half matmul output before the upcast, then the half cast
    of the gradient (e B, one alive at a time): rows x vocab x (4 + e). Held from forward to
    backward: grad of the hidden rows (tokens x h x resid bytes) and, when lm_head trains (full
    fine-tune), the fp32 grad_W accumulator (vocab x h x 4) plus, under half precision, one chunk's
    half G^T h product (vocab x h x e). Qwen2-7B full fine-tune, 8 x 2,048 tokens, bf16, 4,096 rows:
    3.5 GiB (chunk) + 2.0 GiB (grad_W) + 1.0 GiB (G^T h) + 0.2 GiB (grad of h) = 6.7 GiB, against
    27.8 GiB of full logits buffers (`logits_bytes`).
    """
    tokens = s.micro_batch * s.seq_len
    rows = min(s.ce_chunk_rows, tokens)
    e = 2 if s.half else 0  # in fp32 there is no half copy
    held = tokens * arch.hidden_size * _resid_bytes(s)
    if s.method == "none":
        held += arch.vocab_size * arch.hidden_size * (4 + e)
    return float(rows * arch.vocab_size * (4 + e) + held)


def logits_bytes(arch: ArchConfig, s: Setup) -> float:
    """Logits and loss buffers at their peak: tokens x vocab x 12 bytes, fp32 or half
    (`fused_ce_bytes` instead under perf.fused_ce).

    Measured allocator event by allocator event (bench/activation_audit.py, CPU profiler): the
    loss peaks at three fp32 (N x V) copies in both precisions. Forward, with prompt rows masked:
    the logits (e bytes), `ta_train.losses.trained_rows`' gathered copy (e), its fp32 cast (4, a
    no-op in fp32) and log-softmax's saved fp32 output (4): 12 in fp32 and in half. Backward, before
    lm_head's: the saved log-softmax output, the gradient flowing into it and the gradient it
    returns, 3 x 4. The old rule (three fp32 copies plus the half logits, 14 under half precision)
    double-counted: the half logits are freed before backward.
    Qwen2's 152,064 vocab x 2,048 tokens x 4 B = 1.16 GiB per fp32 copy.
    """
    if fused_ce_applies(s):
        return fused_ce_bytes(arch, s)
    return float(s.micro_batch * s.seq_len * arch.vocab_size * 12)
