"""perf.compile: config checks, which layers compile, and that every name tools rely on is unchanged."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ta_train.config import PerfConfig, StrategyConfig, compile_refusal
from ta_train.model import build_model
from ta_train.regional_compile import decoder_layers


@pytest.mark.parametrize("override", ["perf.compile_mode=fast", "perf.compile_backend=cudagraphs"])
def test_an_unknown_mode_or_backend_fails_at_composition(make_cfg, override):
    with pytest.raises(Exception, match=override.split("=")[0].replace(".", r"\.")):
        make_cfg("perf.compile=true", override)


def test_a_mode_needs_the_inductor_backend():
    with pytest.raises(ValueError, match="needs perf.compile_backend=inductor"):
        PerfConfig(compile=True, compile_mode="max-autotune", compile_backend="aot_eager")


@pytest.mark.parametrize("strategy", ["strategy=deepspeed_zero3", "strategy=deepspeed_zero3_offload", "strategy=fsdp"])
def test_sharding_strategies_refuse_compile_before_anything_loads(make_cfg, strategy):
    with pytest.raises(Exception, match="perf.compile=true is not supported"):
        make_cfg("perf.compile=true", strategy)


def test_zero1_zero2_ddp_and_single_device_allow_compile():
    perf = PerfConfig(compile=True)
    for st in (StrategyConfig(name="auto"), StrategyConfig(name="ddp"), StrategyConfig(name="deepspeed", zero_stage=2),
               StrategyConfig(name="deepspeed", zero_stage=1)):
        assert compile_refusal(perf, st) is None
    assert compile_refusal(PerfConfig(compile=False), StrategyConfig(name="fsdp")) is None


@pytest.mark.parametrize("peft", ["peft=lora", "peft=none"])
def test_every_decoder_layer_compiles_in_place_and_no_name_changes(make_cfg, peft):
    from ta_train.module import CausalLMModule
    from ta_train.zero import gathered_state_dict

    eager = build_model(make_cfg(peft, "gradient_checkpointing=true"))
    model = build_model(make_cfg(peft, "gradient_checkpointing=true", "perf.compile=true"))
    layers = decoder_layers(model)
    assert len(layers) == 2 and all(type(x).__name__ == "LlamaDecoderLayer" for x in layers)
    assert all(x._compiled_call_impl is not None for x in layers)  # compiled, lazily on first call
    assert all(x._compiled_call_impl is None for x in decoder_layers(eager))
    assert list(model.state_dict()) == list(eager.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in eager.named_parameters()]
    assert not any("_orig_mod" in k for k in model.state_dict())
    trainable_only = peft == "peft=lora"
    assert list(gathered_state_dict(model, trainable_only)) == list(gathered_state_dict(eager, trainable_only))
    keys = [CausalLMModule._trainable_keys(SimpleNamespace(model=m)) for m in (model, eager)]
    assert keys[0] == keys[1] and keys[0]


def test_a_model_without_decoder_layers_is_refused():
    import torch

    with pytest.raises(ValueError, match="no decoder layers found in Sequential"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
