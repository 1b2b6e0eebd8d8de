"""Per-device memory arithmetic for a training setup: weights, optimizer, gradients, activations, buffers.

Pure arithmetic on the architecture numbers of `ArchConfig` (no torch: planning runs before anything
loads). Every figure is bytes until `estimate` converts to GiB (2**30 bytes). The numbers aim at the
peak of one training step (end of the forward pass / start of backward), where activations, the
logits buffers, gradients kept across accumulation and optimizer states are all alive at once; they
are upper-bound-ish by design (see each function for which side a choice errs on).
"""
from __future__ import annotations

from dataclasses import dataclass

from ta_train.config import ArchConfig

GIB = 1024**3

# nf4 (QLoRA, Dettmers et al. 2023): 4 bits per weight plus block constants. Blocks of 64 weights:
# one fp32 absmax each = 32/64 = 0.5 bit/weight; with double quantization the absmax is stored in
# 8 bits plus one fp32 constant per 256 blocks = 8/64 + 32/(64*256) = 0.127 bit/weight (we use this).
NF4_BITS = 4.0
NF4_CONST_BITS = {True: 8 / 64 + 32 / (64 * 256), False: 32 / 64}
# peft's prepare_model_for_kbit_training casts every non-4-bit parameter (embeddings, lm_head, norms)
# from bf16/fp16 to fp32 (peft/utils/other.py, peft 0.21), so they cost 4 bytes, not 2.
QLORA_UNQUANTIZED_BYTES = 4
# CUDA context + cuBLAS/cuDNN workspaces + allocator slack, not seen by max_memory_allocated
# (~0.3-0.5 GiB context on Ampere/Hopper plus a few hundred MiB of workspaces and fragmentation).
RUNTIME_OVERHEAD_GIB = 0.75
# AdamW: fp32 first and second moments per trainable parameter.
ADAM_STATE_BYTES = 8
# bitsandbytes 8-bit AdamW: m and v in 1 byte each plus one fp32 absmax per 256-value block of each
# (block-wise quantization, Dettmers et al. 2022): 2 + 2 * 4 / 256 bytes per parameter.
ADAM_8BIT_STATE_BYTES = 2 + 2 * 4 / 256
# ZeRO reduces gradients in buckets of this many elements (ta_train.zero writes it into the
# DeepSpeed JSON as reduce_bucket_size; Lightning's default is the same 2e8).
ZERO_BUCKET_ELEMENTS = 200_000_000
# ZeRO-Offload streams gradients to CPU through those buckets: two half-precision buckets in
# flight = 0.75 GiB on the device.
OFFLOAD_GRAD_BUCKET_BYTES = 2 * ZERO_BUCKET_ELEMENTS * 2

HALF_PRECISIONS = {"bf16-mixed", "16-mixed", "bf16-true", "16-true"}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "bf16": 2, "fp16": 2, "fp32": 4}


def dtype_bytes(name: str) -> int:
    """Bytes per element of a torch dtype name ("bfloat16" -> 2)."""
    try:
        return _DTYPE_BYTES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Setup:
    """The knobs that decide memory; the OOM path in `plan.py` changes some of them."""

    method: str  # none (full fine-tune) | lora | qlora
    r: int  # LoRA rank (ignored for none)
    targets: tuple[str, ...]  # LoRA target module names
    lora_dropout: float
    double_quant: bool
    precision: str  # Lightning precision name
    frozen_dtype: str  # dtype of the frozen base under LoRA
    strategy: str  # auto | ddp | fsdp | deepspeed
    zero_stage: int
    offload_optimizer: bool
    offload_parameters: bool
    fsdp_sharding: str
    devices: int
    micro_batch: int  # sequences per forward pass per device
    seq_len: int  # tokens per sequence
    gradient_checkpointing: bool
    attn: str  # flash_attention_2 | sdpa | eager
    optimizer: str = "adamw"  # optim.name: adamw | adamw8bit | paged_adamw8bit
    cpu: bool = False  # training on CPU (hw/trainer accelerator cpu): dropout saves a noise tensor, not a bool mask
    fused_ce: bool = False  # perf.fused_ce: chunked lm_head + cross-entropy (ta_train.fused_ce)
    ce_chunk_rows: int = 4096  # perf.ce_chunk_rows

    @property
    def half(self) -> bool:
        return self.precision in HALF_PRECISIONS

    @property
    def deepspeed_half(self) -> bool:
        """DeepSpeed under bf16/fp16 casts the module to half and keeps fp32 masters in its optimizer."""
        return self.strategy == "deepspeed" and self.half

    @property
    def shard_stage(self) -> int:
        """ZeRO stage equivalent: 1 optimizer, 2 + gradients, 3 + parameters sharded over devices."""
        if self.strategy == "deepspeed":
            return self.zero_stage
        if self.strategy == "fsdp":  # FULL_SHARD ~ ZeRO-3, SHARD_GRAD_OP ~ ZeRO-2
            return {"NO_SHARD": 0, "SHARD_GRAD_OP": 2, "_HYBRID_SHARD_ZERO2": 2}.get(self.fsdp_sharding, 3)
        return 0


def target_shape(name: str, arch: ArchConfig) -> tuple[int, int]:
    """(in_features, out_features) of a LoRA target module, from the architecture numbers.

    Fused attention inputs (Baichuan2 `W_pack`, InternLM2 `wqkv`, GPT-style `c_attn`) produce
    q, k and v at once: hidden -> hidden + 2 * kv_dim (kv_dim = n_kv_heads * head_dim).
    """
    h, f = arch.hidden_size, arch.intermediate_size
    kv = arch.n_kv_heads * (h // arch.n_heads)
    shapes = {
        "q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "wo": (h, h),
        "W_pack": (h, h + 2 * kv), "wqkv": (h, h + 2 * kv), "c_attn": (h, h + 2 * kv),
        "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h),
        "w1": (h, f), "w3": (h, f), "w2": (f, h),  # InternLM2 names for gate, up, down
    }
    if name not in shapes:
        raise ValueError(f"LoRA target {name!r} has no known shape; known: {sorted(shapes)}")
    return shapes[name]


def linear_params(arch: ArchConfig) -> int:
    """Parameters in the decoder layers' linear weights (what nf4 quantizes), biases and norms excluded.

    Per layer: q and o are h x h, k and v are h x kv_dim, gate/up/down are 3 * h * intermediate.
    Qwen2-7B: 28 * (2*3584^2 + 2*3584*512 + 3*3584*18944) = 6,525,288,448 of 7,615,616,512.
    """
    h, f = arch.hidden_size, arch.intermediate_size
    kv = arch.n_kv_heads * (h // arch.n_heads)
    return min(arch.n_layers * (2 * h * h + 2 * h * kv + 3 * h * f), arch.n_params)


def lora_params(arch: ArchConfig, targets: tuple[str, ...], r: int) -> int:
    """Adapter parameters: r * (in + out) per target module per layer (A is r x in, B is out x r)."""
    return arch.n_layers * sum(r * sum(target_shape(t, arch)) for t in targets)


def trainable_params(arch: ArchConfig, s: Setup) -> int:
    return arch.n_params if s.method == "none" else lora_params(arch, s.targets, s.r)


def weight_bytes(arch: ArchConfig, s: Setup) -> tuple[float, float]:
    """(on-device bytes, autocast working-copy bytes) of the model's parameters, before sharding.

    Full fine-tune: fp32 weights (4 B/param) under 32-true and under Lightning's mixed precision.
    Lightning's autocast does keep a half copy during the step: torch caches the bf16/fp16 cast of
    every fp32 leaf weight for the autocast region and matmuls save it for backward (checked on
    torch 2.13: two calls of one Linear save the same bf16 storage), so +2 B/param until backward
    frees it. Under DeepSpeed + half the module itself is half (2 B/param) and the fp32 master copy
    lives in the optimizer (see `optimizer_bytes`).
    LoRA: frozen base in precision.frozen_dtype plus fp32 adapters (half under DeepSpeed).
    QLoRA: decoder linears in nf4 (4.127 bits with double quant), everything else in fp32 (see
    QLORA_UNQUANTIZED_BYTES), fp32 adapters.
    """
    n = arch.n_params
    if s.method == "none":
        if s.deepspeed_half:
            return 2.0 * n, 0.0
        return 4.0 * n, (2.0 * n if s.half else 0.0)
    adapter = lora_params(arch, s.targets, s.r) * (2 if s.deepspeed_half else 4)
    if s.method == "lora":
        return n * dtype_bytes(s.frozen_dtype) + adapter, 0.0
    q = linear_params(arch)
    nf4 = q * (NF4_BITS + NF4_CONST_BITS[s.double_quant]) / 8
    return nf4 + (n - q) * QLORA_UNQUANTIZED_BYTES + adapter, 0.0


def optimizer_bytes(arch: ArchConfig, s: Setup) -> float:
    """AdamW m and v in fp32 (8 B; ~2 B for 8-bit AdamW) per trainable parameter; DeepSpeed + half adds its fp32 master (4 B).

    The 2 + 2 + 12 bytes per parameter of ZeRO (Rajbhandari et al. 2020, K = 12) under DeepSpeed;
    4 + 4 + 8 otherwise (Lightning keeps fp32 weights, so no separate master copy).
    """
    states = ADAM_STATE_BYTES if s.optimizer == "adamw" else ADAM_8BIT_STATE_BYTES
    per = states + (4 if s.deepspeed_half else 0)
    return float(per * trainable_params(arch, s))


def gradient_bytes(arch: ArchConfig, s: Setup) -> float:
    """Gradients of trainable parameters, kept across accumulation: fp32 (4 B), half under DeepSpeed."""
    return float((2 if s.deepspeed_half else 4) * trainable_params(arch, s))


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
    """perf.fused_ce is on and the module will not fall back (ta_train.fused_ce.fused_head): no
    FSDP, no ZeRO-3, no LoRA on lm_head. The model type is not known here (assumed supported)."""
    sharded = s.strategy == "fsdp" or (s.strategy == "deepspeed" and s.zero_stage >= 3)
    lora_head = s.method != "none" and "lm_head" in s.targets
    return s.fused_ce and not sharded and not lora_head


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


@dataclass(frozen=True)
class Estimate:
    """Per-device GiB by kind, plus CPU RAM used by offload (all devices of the node together)."""

    weights: float
    optimizer: float
    gradients: float
    activations: float
    buffers: float
    cpu_offload: float

    @property
    def peak(self) -> float:
        return self.weights + self.optimizer + self.gradients + self.activations + self.buffers

    def breakdown(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 3) for k in ("weights", "optimizer", "gradients", "activations", "buffers")}


def estimate(arch: ArchConfig, s: Setup) -> Estimate:
    """Peak GiB per device for one training step of `s` on `arch`.

    Sharding divides by devices: optimizer at stage >= 1, gradients at >= 2, weights at 3 (ZeRO-3
    and FSDP FULL_SHARD also gather two layers at a time: counted in buffers). Offload moves the
    optimizer (and at stage 3 the weights) to CPU RAM. DDP over several devices keeps its gradient
    buckets, one more copy of the gradients (gradient_as_bucket_view is off by default).
    CPU RAM is reported for the whole node (processes on one node share it).
    """
    d = max(s.devices, 1)
    stage = s.shard_stage
    w, autocast_copy = weight_bytes(arch, s)
    opt, grad = optimizer_bytes(arch, s), gradient_bytes(arch, s)
    cpu = 0.0
    if stage >= 3:
        w, autocast_copy = w / d, autocast_copy / d
    if s.offload_parameters and stage >= 3:
        cpu += w * d
        w = 0.0
    if stage >= 1:
        opt /= d
    if stage >= 2:
        grad /= d
    if s.offload_optimizer and s.strategy == "deepspeed":
        # ZeRO-Offload (Ren et al. 2021): optimizer states, fp32 master and fp32 gradients live in
        # CPU RAM and the step runs there; the device keeps half weights and gradient buckets.
        cpu += opt * d + 4.0 * trainable_params(arch, s)
        opt = 0.0
        grad = min(grad, OFFLOAD_GRAD_BUCKET_BYTES)
    buffers = logits_bytes(arch, s) + RUNTIME_OVERHEAD_GIB * GIB
    if stage >= 3:  # all-gather of the current and the prefetched layer, in compute dtype
        layer_params = linear_params(arch) / arch.n_layers
        buffers += 2 * layer_params * (2 if s.half else 4)
    if s.strategy == "ddp" and d > 1:
        buffers += gradient_bytes(arch, s)
    return Estimate(
        weights=(w + autocast_copy) / GIB,
        optimizer=opt / GIB,
        gradients=grad / GIB,
        activations=activation_bytes(arch, s) / GIB,
        buffers=buffers / GIB,
        cpu_offload=cpu / GIB,
    )
