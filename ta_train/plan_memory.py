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
# Extra bytes inside optimizer.step() per trainable parameter (bench/optim_step_memory.py, bench/RESULTS.md
# Machine A): torch's AdamW on CUDA tensors defaults to its foreach path, which allocates the fp32
# sqrt(v) of a whole parameter group at once (measured 4.000 B per parameter of the largest group;
# counted here over all trainable parameters: the decayed group holds nearly all of them). Fused
# AdamW (optim.fused) measured 0; bitsandbytes' CUDA kernels update each tensor in place (its CPU
# backend, not planned, measured 20 B per parameter of the largest tensor); DeepSpeedCPUAdam steps
# in CPU RAM. On CPU tensors torch's default steps tensor by tensor: two fp32 temporaries of the
# largest tensor (CPU_STEP_BYTES per its parameter).
FOREACH_STEP_BYTES = 4
CPU_STEP_BYTES = 8
# DeepSpeed's default zero_optimization.sub_group_size (ta_train.zero leaves it): ZeRO-3 steps the
# optimizer on sub-groups of at most this many elements of the rank's fp32 partition.
ZERO3_SUB_GROUP_ELEMENTS = 1_000_000_000
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
    devices: int  # every device of the job: trainer.devices x trainer.num_nodes
    micro_batch: int  # sequences per forward pass per device
    seq_len: int  # tokens per sequence
    gradient_checkpointing: bool
    attn: str  # flash_attention_2 | sdpa | eager
    optimizer: str = "adamw"  # optim.name: adamw | adamw8bit | paged_adamw8bit
    cpu: bool = False  # training on CPU (hw/trainer accelerator cpu): dropout saves a noise tensor, not a bool mask
    fused_ce: bool = False  # perf.fused_ce: chunked lm_head + cross-entropy (ta_train.fused_ce)
    ce_chunk_rows: int = 4096  # perf.ce_chunk_rows
    plain_lm_head: bool = True  # model.plain_lm_head: the fused loss can replace the head
    fused_optimizer: bool = False  # optim.fused: torch's fused AdamW (no step temporaries)
    nodes: int = 1  # trainer.num_nodes: CPU offload is reported per node (devices / nodes of the shards)

    @property
    def half(self) -> bool:
        return self.precision in HALF_PRECISIONS

    @property
    def deepspeed_half(self) -> bool:
        """DeepSpeed under bf16/fp16 casts the module to half and keeps fp32 masters in its optimizer."""
        return self.strategy == "deepspeed" and self.half

    @property
    def shard_devices(self) -> int:
        """The devices one copy of the sharded states is split over: every device of the job, except
        under FSDP's hybrid shardings, which shard within a node and replicate across nodes."""
        if self.strategy == "fsdp" and "HYBRID" in self.fsdp_sharding:
            return max(self.devices // max(self.nodes, 1), 1)
        return max(self.devices, 1)

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


def step_temporary_bytes(arch: ArchConfig, s: Setup) -> float:
    """Transient bytes of optimizer.step() per device (see FOREACH_STEP_BYTES).

    From ZeRO-1 on (and FSDP) each rank steps its shard; ZeRO-3 steps it in sub-groups of at most
    DeepSpeed's sub_group_size elements.
    """
    offloaded = s.strategy == "deepspeed" and s.offload_optimizer
    if s.optimizer != "adamw" or s.fused_optimizer or offloaded:
        return 0.0
    if s.cpu:  # the largest tensor of a full fine-tune: the embedding or an MLP weight (LoRA's are tiny)
        largest = max(arch.vocab_size, arch.intermediate_size) * arch.hidden_size if s.method == "none" else 0
        return float(CPU_STEP_BYTES * largest)
    elements = trainable_params(arch, s) / (s.shard_devices if s.shard_stage >= 1 else 1)
    if s.strategy == "deepspeed" and s.zero_stage == 3:
        elements = min(elements, ZERO3_SUB_GROUP_ELEMENTS)
    return float(FOREACH_STEP_BYTES * elements)


@dataclass(frozen=True)
class Estimate:
    """Per-device GiB by kind, plus CPU RAM used by offload (all devices of the node together).

    `buffers` also holds the optimizer step's temporaries where the step's peak exceeds the
    backward peak (see `estimate`), so `peak` is the larger of the two.
    """

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
    from ta_train.plan_activations import activation_bytes, logits_bytes

    d = s.shard_devices
    per_node = max(s.devices, 1) / max(s.nodes, 1)  # the ranks whose offloaded shards share one node's RAM
    stage = s.shard_stage
    w, autocast_copy = weight_bytes(arch, s)
    opt, grad = optimizer_bytes(arch, s), gradient_bytes(arch, s)
    cpu = 0.0
    if stage >= 3:
        w, autocast_copy = w / d, autocast_copy / d
    if s.offload_parameters and stage >= 3:
        cpu += w * per_node
        w = 0.0
    if stage >= 1:
        opt /= d
    if stage >= 2:
        grad /= d
    if s.offload_optimizer and s.strategy == "deepspeed":
        # ZeRO-Offload (Ren et al. 2021): optimizer states, fp32 master and fp32 gradients live in
        # CPU RAM and the step runs there; the device keeps half weights and gradient buckets.
        cpu += opt * per_node + 4.0 * trainable_params(arch, s) * per_node / d
        opt = 0.0
        grad = min(grad, OFFLOAD_GRAD_BUCKET_BYTES)
    buffers = logits_bytes(arch, s) + RUNTIME_OVERHEAD_GIB * GIB
    gathered = 0.0
    if stage >= 3:  # all-gather of the current and the prefetched layer, in compute dtype
        layer_params = linear_params(arch) / arch.n_layers
        gathered = 2 * layer_params * (2 if s.half else 4)
    buffers += gathered
    if s.strategy == "ddp" and d > 1:
        buffers += gradient_bytes(arch, s)
    activations = activation_bytes(arch, s)
    # optimizer.step() runs once backward has freed the activations, the logits buffers, the layer
    # gathers and autocast's half weights
    freed = autocast_copy + activations + logits_bytes(arch, s) + gathered
    buffers += max(0.0, step_temporary_bytes(arch, s) - freed)
    return Estimate(
        weights=(w + autocast_copy) / GIB,
        optimizer=opt / GIB,
        gradients=grad / GIB,
        activations=activations / GIB,
        buffers=buffers / GIB,
        cpu_offload=cpu / GIB,
    )
