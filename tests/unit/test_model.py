"""Model builders: attention choice, the tiny model's shape, strategies and loggers."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ta_train.config import StrategyConfig
from ta_train.model import build_model, count_parameters, resolve_attn_implementation
from ta_train.strategy import build_loggers, build_strategy


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(cuda=False, flash_installed=True, hw_allows_flash=True, half_precision=True), "sdpa"),
        (dict(cuda=True, flash_installed=True, hw_allows_flash=False, half_precision=True), "sdpa"),
        (dict(cuda=True, flash_installed=False, hw_allows_flash=True, half_precision=True), "sdpa"),
        (dict(cuda=True, flash_installed=True, hw_allows_flash=True, half_precision=False), "sdpa"),
        (dict(cuda=True, flash_installed=True, hw_allows_flash=True, half_precision=True), "flash_attention_2"),
    ],
)
def test_auto_attention_prefers_flash_only_when_it_can_run(kwargs, expected):
    impl, why = resolve_attn_implementation("auto", **kwargs)
    assert impl == expected and why.startswith("auto")


def test_an_explicit_attention_choice_wins():
    assert resolve_attn_implementation("eager", cuda=False, flash_installed=False, hw_allows_flash=False, half_precision=False)[0] == "eager"


def test_tiny_model_matches_its_declared_architecture(make_cfg):
    cfg = make_cfg("peft=none")
    model = build_model(cfg)
    trainable, total = count_parameters(model)
    assert total == trainable == cfg.model.arch.n_params
    assert model.config.num_key_value_heads == cfg.model.arch.n_kv_heads


def test_lora_wraps_the_configured_modules_with_seed_rank(make_cfg):
    cfg = make_cfg()
    model = build_model(cfg)
    lora_modules = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora_modules == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert model.peft_config["default"].r == 64 and model.peft_config["default"].lora_alpha == 128
    trainable, total = count_parameters(model)
    # r * (in + out) per target, 2 layers: q,o 64->64; k,v 64->32
    assert trainable == 2 * 64 * ((64 + 64) * 2 + (64 + 32) * 2)


def test_gradient_checkpointing_with_lora_keeps_gradients(make_cfg):
    import torch

    cfg = make_cfg("gradient_checkpointing=true")
    model = build_model(cfg)
    assert model.get_base_model().is_gradient_checkpointing
    model.train()
    ids = torch.randint(0, 1000, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_fsdp_wraps_each_decoder_layer_of_any_family(make_cfg):
    from ta_train.strategy import is_decoder_layer

    model = build_model(make_cfg("peft=none"))
    layers = [m for m in model.modules() if is_decoder_layer(m)]
    assert len(layers) == 2 and type(layers[0]).__name__ == "LlamaDecoderLayer"
    assert not is_decoder_layer(model) and not is_decoder_layer(model.model.embed_tokens)


def test_strategies():
    assert build_strategy(StrategyConfig(name="auto")) == "auto"
    assert build_strategy(StrategyConfig(name="ddp")) == "ddp"
    from lightning.pytorch.strategies import FSDPStrategy

    assert isinstance(build_strategy(StrategyConfig(name="fsdp")), FSDPStrategy)
    with pytest.raises(ValueError, match="strategy.name"):
        build_strategy(StrategyConfig(name="horovod"))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (pip install '.[gpu]')")
def test_deepspeed_strategy_carries_the_zero_stage():
    s = build_strategy(StrategyConfig(name="deepspeed", zero_stage=3, offload_optimizer=True, offload_parameters=True))
    zero = s.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


def test_csv_logger_is_always_on(tmp_path, make_cfg):
    from lightning.pytorch.loggers import CSVLogger

    from ta_train.csv_metrics import RunCSVLogger

    cfg = make_cfg()
    loggers = build_loggers(cfg.logger, tmp_path)
    assert [type(l) for l in loggers] == [RunCSVLogger] and Path(loggers[0].log_dir) == tmp_path
    assert isinstance(loggers[0], CSVLogger)  # Lightning's, with the run folder's rules for metrics.csv


def test_an_added_pad_token_grows_the_embeddings_with_the_mean_row(make_cfg):
    import torch

    cfg = make_cfg("peft=none")
    model = build_model(cfg, vocab_size=cfg.model.arch.vocab_size + 1)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == cfg.model.arch.vocab_size + 1
    assert torch.allclose(emb[-1], emb[:-1].mean(dim=0), atol=1e-6)
    assert model.get_output_embeddings().weight.shape[0] == emb.shape[0]


def test_resize_reads_the_row_count_from_the_module_not_a_zero3_placeholder():
    """Under ZeRO-3 (zero.Init) a weight is an empty shard placeholder carrying `ds_id`; the resize
    must see the module's real row count and leave a model whose vocabulary already fits alone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ta_train.model import resize_embeddings

    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    emb = model.get_input_embeddings()
    placeholder = torch.nn.Parameter(torch.empty(0))
    placeholder.ds_id = 0  # what deepspeed.zero.Init leaves in the module
    emb.weight = placeholder
    resize_embeddings(model, 100)  # a no-op: 100 rows already
    assert emb.weight is placeholder and emb.num_embeddings == 100


def test_qlora_stores_4bit_weights_in_the_compute_dtype_where_fsdp_or_zero3_flatten_them(make_cfg):
    import torch
    from transformers import BitsAndBytesConfig

    from ta_train.model import quantization_kwargs, torch_dtype

    plain = quantization_kwargs(make_cfg("peft=qlora", "precision=bf16-mixed"))
    assert plain == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                     "bnb_4bit_compute_dtype": "bfloat16"}
    for strategy in (["strategy=fsdp"], ["strategy=deepspeed_zero3"]):
        kwargs = quantization_kwargs(make_cfg("peft=qlora", "precision=bf16-mixed", *strategy))
        assert kwargs["bnb_4bit_quant_storage"] == "bfloat16", strategy
    assert "bnb_4bit_quant_storage" not in quantization_kwargs(make_cfg("peft=qlora", "strategy=deepspeed_zero2"))
    # transformers takes these arguments as quantization_config builds them (dtype names -> torch dtypes)
    kwargs = {k: torch_dtype(v) if k in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage") else v for k, v in kwargs.items()}
    bnb = BitsAndBytesConfig(**kwargs)
    assert bnb.bnb_4bit_quant_storage == torch.bfloat16 and bnb.bnb_4bit_compute_dtype == torch.bfloat16
