"""Typed builders for the tokenizer and the (PEFT-wrapped) causal LM of a `TrainConfig`."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from ta_train.assets import model_dir, tokenizer_dir
from ta_train.config import ModelConfig, PeftMethod, TrainConfig

log = logging.getLogger(__name__)


def tokenizer_source(cfg: ModelConfig, cache_dir: str) -> str:
    return str(tokenizer_dir(cfg.provider, cache_dir)) if cfg.provider else cfg.name_or_path


def weights_source(cfg: ModelConfig, cache_dir: str) -> str:
    return str(model_dir(cfg.provider, cache_dir)) if cfg.provider else cfg.name_or_path


def load_tokenizer(cfg: ModelConfig, cache_dir: str) -> Any:
    """The model's real tokenizer with a chat template, end-of-turn token and pad (chat_families)."""
    from transformers import AutoTokenizer

    from ta_train.chat_families import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_source(cfg, cache_dir), trust_remote_code=cfg.trust_remote_code)
    return prepare_tokenizer(tok, cfg.chat_family, cfg.pad_token)


def resize_embeddings(model: Any, vocab_size: int) -> None:
    """Grow the embeddings to `vocab_size` rows (a token was added), new rows = mean of the old ones."""
    import torch

    emb = model.get_input_embeddings()
    # num_embeddings, not weight.shape: under DeepSpeed ZeRO-3 (zero.Init) the weight is an empty
    # placeholder of its shard and shape[0] is 0 (seen on an H200: a no-op resize then failed)
    old = emb.num_embeddings
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    layers = {id(x): x for x in (model.get_input_embeddings(), model.get_output_embeddings()) if x is not None}
    weights = [layer.weight for layer in layers.values()]
    with _gathered(weights), torch.no_grad():
        for w in weights:
            w[old:] = w[:old].mean(dim=0)


def _gathered(params: list[Any]) -> Any:
    """ZeRO-3 partitioned parameters gathered (rank 0 modifies, then re-partitioned); else a no-op."""
    import contextlib

    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def resolve_attn_implementation(
    requested: str, *, cuda: bool, flash_installed: bool, hw_allows_flash: bool, half_precision: bool
) -> tuple[str, str]:
    """(implementation, why) for `model.attn_implementation`; `auto` prefers FlashAttention-2."""
    if requested != "auto":
        return requested, "set by model.attn_implementation"
    if not cuda:
        return "sdpa", "auto: no CUDA device, FlashAttention-2 needs one"
    if not hw_allows_flash:
        return "sdpa", "auto: the hw profile has no FlashAttention-2 support (pre-Ampere)"
    if not flash_installed:
        return "sdpa", "auto: flash-attn is not installed (pip install '.[gpu]')"
    if not half_precision:
        return "sdpa", "auto: FlashAttention-2 needs bf16/fp16 weights or autocast"
    return "flash_attention_2", "auto: CUDA, flash-attn installed, half precision"


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def random_llama(cfg: ModelConfig, dtype: Any, attn: str) -> Any:
    """A Llama with `cfg.arch`'s shape and seeded random weights (independent of the global seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    a = cfg.arch
    config = LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads,
        num_key_value_heads=a.n_kv_heads,
        max_position_embeddings=a.max_positions,
        tie_word_embeddings=a.tie_embeddings,
        initializer_range=cfg.init_std,
        attn_implementation=attn,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def qlora_compute_dtype(setting: str, precision: str) -> str:
    """`auto` follows the precision group: bf16-mixed -> bfloat16, 16-mixed -> float16, else float32."""
    if setting != "auto":
        return setting
    return {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(precision, "float32")


def quantization_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """BitsAndBytesConfig arguments for QLoRA: nf4, double quant, compute dtype from the peft group.

    Under FSDP and ZeRO-3 the packed 4-bit weights are stored in the compute dtype
    (bnb_4bit_quant_storage) instead of uint8: both flatten a unit's parameters into one tensor of
    one dtype, and the frozen base would otherwise mix uint8 with the adapters' float. Same bytes.
    """
    p, st = cfg.peft, cfg.strategy
    compute = qlora_compute_dtype(p.compute_dtype, cfg.precision.name)
    kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": p.quant_type, "bnb_4bit_use_double_quant": p.double_quant,
              "bnb_4bit_compute_dtype": compute}
    if st.name == "fsdp" or (st.name == "deepspeed" and st.zero_stage == 3):
        kwargs["bnb_4bit_quant_storage"] = compute
    return kwargs


def quantization_config(cfg: TrainConfig) -> Any:
    """bitsandbytes 4-bit config for QLoRA (quantization_kwargs); needs CUDA."""
    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise RuntimeError("peft=qlora needs a CUDA device and bitsandbytes (pip install '.[gpu]')")
    kwargs = quantization_kwargs(cfg)
    for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if key in kwargs:
            kwargs[key] = torch_dtype(kwargs[key])
    return BitsAndBytesConfig(**kwargs)


def build_base_model(cfg: TrainConfig) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    full = cfg.peft.method == PeftMethod.none
    # Trainable weights stay fp32 (mixed precision keeps fp32 masters); a frozen base can be half.
    dtype = torch.float32 if full else torch_dtype(cfg.precision.frozen_dtype)
    attn, why = resolve_attn_implementation(
        cfg.model.attn_implementation.value,
        cuda=torch.cuda.is_available(),
        flash_installed=importlib.util.find_spec("flash_attn") is not None,
        hw_allows_flash=cfg.hw.flash_attention if cfg.hw else True,
        half_precision=cfg.precision.name != "32-true",
    )
    log.info("attention: %s (%s)", attn, why)
    if cfg.model.random_init:
        if cfg.peft.method == PeftMethod.qlora:
            raise ValueError("peft=qlora quantizes pretrained weights at load; save the random model and set model.name_or_path")
        return random_llama(cfg.model, dtype, attn)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn, "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.peft.method == PeftMethod.qlora:
        kwargs["quantization_config"] = quantization_config(cfg)
    return AutoModelForCausalLM.from_pretrained(weights_source(cfg.model, cfg.cache_dir), **kwargs)


def build_model(cfg: TrainConfig, vocab_size: int | None = None) -> Any:
    """Base model + gradient checkpointing + LoRA/QLoRA adapters (+ compiled layers), ready to train.

    vocab_size: the tokenizer's length; the embeddings grow to it when a token was added.
    """
    model = build_base_model(cfg)
    if vocab_size is not None:
        resize_embeddings(model, vocab_size)
    model.config.use_cache = False
    if cfg.perf.sdpa_backends:
        from ta_train import attention

        if model.config._attn_implementation == "sdpa":  # settled on the device at fit start (CausalLMModule)
            attention.install(model, cfg.perf.sdpa_backends)
        else:
            log.warning("perf.sdpa_backends ignored: attention runs %s, not sdpa", model.config._attn_implementation)
    if cfg.peft.method == PeftMethod.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        # transformers 5 renamed it (and its kwargs); keep working on 4.x
        ckpt_kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        if cfg.peft.method != PeftMethod.none:
            model.enable_input_require_grads()  # frozen embeddings would cut the graph otherwise
    if cfg.peft.method != PeftMethod.none:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.peft.r,
            lora_alpha=cfg.peft.alpha,
            lora_dropout=cfg.peft.dropout,
            target_modules=list(cfg.peft.target_modules or cfg.model.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if cfg.perf.compile:  # last: the compiled layers include the checkpointing and the adapters
        from ta_train.regional_compile import compile_decoder_layers

        compile_decoder_layers(model, cfg.perf, cfg.strategy)
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 placeholders count their full size (`ds_numel`)."""

    def size(p: Any) -> int:
        return getattr(p, "ds_numel", p.numel())

    total = sum(size(p) for p in model.parameters())
    return sum(size(p) for p in model.parameters() if p.requires_grad), total


def save_hf(model: Any, tokenizer: Any, out_dir: Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Adapter (PEFT) or full model in HF format plus the tokenizer and its chat template.

    state_dict: the weights to write instead of the module's own (ZeRO-3's gathered copies,
    ta_train.zero.gathered_state_dict); PEFT keeps only the adapter entries of it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(out_dir)
    return out_dir


WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")  # FSDP, checkpointing, compile


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped model's state dict spells it (FSDP's full state dict does too)."""
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def adapter_file_key(key: str, adapter: str) -> str:
    """A PEFT model's state-dict key as its adapter files spell it: without the adapter's name, which is
    the module-dict entry before the tensor's own name (`q_proj.lora_A.default.weight`) or, for a
    parameter-dict entry, the last part. (PEFT's own mapping, BaseTuner._remove_adapter_name_from_key,
    is private and missing in peft 0.17, which pyproject allows.)"""
    parts = key.split(".")
    if len(parts) > 1 and parts[-1] == adapter:
        return ".".join(parts[:-1])
    if len(parts) > 2 and parts[-2] == adapter:
        return ".".join(parts[:-2] + parts[-1:])
    return key


def save_fsdp_adapter(model: Any, tokenizer: Any, out_dir: Path, state_dict: dict[str, Any]) -> Path:
    """The files PeftModel.save_pretrained writes (adapter_model.safetensors, adapter_config.json) from a
    gathered full state dict (ta_train.strategy.fsdp_full_state_dict) of a PEFT model whose layers FSDP
    wrapped. PEFT's own save picks the adapter's entries by module name and removes only a leading
    FSDP prefix, not the one inside each wrapped decoder layer: it wrote an empty adapter.
    """
    import copy

    from safetensors.torch import save_file

    adapter = model.active_adapter
    trainable = {unwrapped_name(n) for n, p in model.named_parameters() if p.requires_grad}
    weights = {adapter_file_key(k, adapter): v.contiguous() for k, v in state_dict.items() if k in trainable}
    if len(weights) != len(trainable):
        missing = sorted(trainable - set(state_dict))
        raise RuntimeError(f"the gathered state dict lacks {len(missing)} adapter weights, e.g. {missing[:3]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.copy(model.peft_config[adapter])
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    return out_dir
