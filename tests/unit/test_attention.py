"""perf.sdpa_backends: config checks, the dispatcher probe, and that the routed attention computes
exactly transformers' sdpa attention (masked and unmasked, GQA native or repeated) on the tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from ta_train import attention
from ta_train.config import PerfConfig
from ta_train.model import build_model

TINY = dict(n_heads=4, n_kv_heads=2, head_dim=16, seq_len=32, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize(
    "value, message",
    [(["cudnn", "fast"], "perf.sdpa_backends"), ([], "at least one kernel"), (["math", "math"], "at most once")],
)
def test_bad_backend_lists_are_refused_naming_the_key(value, message):
    with pytest.raises(ValueError, match=message):
        PerfConfig(sdpa_backends=value)


def test_an_attention_that_does_not_use_sdpa_is_refused_at_composition(make_cfg):
    with pytest.raises(Exception, match="model.attn_implementation=eager does not use them"):
        make_cfg("model.attn_implementation=eager", "perf.sdpa_backends=[math]")
    make_cfg("model.attn_implementation=sdpa", "perf.sdpa_backends=[cudnn,flash,efficient,math]")


def test_implementation_keys_are_plain_identifiers_that_do_not_say_flash():
    from transformers.utils.generic import is_flash_attention_requested

    key = attention.implementation_name(["cudnn", "flash", "efficient", "math"], False)
    assert key == "ta_sdpa_cudnn_fa2_mem_math"
    assert attention.implementation_name(["math"], True) == "ta_sdpa_math_rkv"
    # transformers treats any name with "flash" as FlashAttention and skips building masks for it
    assert not is_flash_attention_requested(requested_attention_implementation=key)


def test_cudnn_is_refused_with_a_runtime_that_mishandles_unaligned_lengths():
    assert attention.cudnn_refusal(["cudnn", "math"], 91500).startswith("perf.sdpa_backends lists cudnn, but this cuDNN runtime is 91500")
    assert attention.cudnn_refusal(["flash", "cudnn", "math"], 90100)  # listed anywhere: masked rows would reach it
    assert attention.cudnn_refusal(["cudnn", "math"], 91501) is None
    assert attention.cudnn_refusal(["flash", "math"], 90100) is None
    assert attention.cudnn_refusal(["cudnn"], None) is None  # no cuDNN: the probe then finds nothing to run


def test_the_probe_reports_what_the_cpu_dispatcher_runs():
    # On CPU PyTorch has a FlashAttention kernel and math; the enabled set decides between them.
    only_math = attention.probe(["math"], **TINY)
    assert (only_math.native, only_math.repeated, only_math.masked, only_math.repeat_kv) == ("math", "math", "math", False)
    assert only_math.decode == "math"  # one query token against the cache, as generation calls it
    flash = attention.probe(["cudnn", "flash", "efficient", "math"], **TINY)
    assert (flash.native, flash.masked, flash.repeat_kv) == ("flash", "flash", False)
    assert flash.gqa and "unmasked rows run flash; masked rows run flash" in flash.describe(["cudnn", "flash"])
    default = attention.probe(None, **TINY)  # PyTorch's own order: what a run without the option gets
    assert (default.native, default.masked) == ("flash", "flash")
    assert "in PyTorch's order" in default.describe(None)


def test_a_list_with_no_kernel_for_the_device_fails_before_training():
    with pytest.raises(ValueError, match=r"no listed kernel runs unmasked rows on cpu .*add a fallback such as math"):
        attention.probe(["cudnn", "efficient"], **TINY)


def test_kv_are_repeated_only_when_that_reaches_an_earlier_kernel():
    names = ["cudnn", "flash", "math"]
    assert attention.prefers_repeat(names, native="flash", repeated="cudnn", gqa=True)
    assert not attention.prefers_repeat(names, native="cudnn", repeated="cudnn", gqa=True)
    assert not attention.prefers_repeat(names, native="flash", repeated="cudnn", gqa=False)
    assert not attention.prefers_repeat(names, native="flash", repeated="math", gqa=True)


def _batch(padded: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (2, 24), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 15:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch).logits
    (out.float() ** 2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("names, repeat_kv", [(["math"], False), (["flash", "math"], False), (["math"], True)])
def test_routed_attention_matches_transformers_sdpa(make_cfg, padded, names, repeat_kv):
    cfg = make_cfg("peft=none")
    reference = build_model(cfg)
    routed = build_model(cfg)
    assert attention.install(routed, names, repeat_kv) == attention.implementation_name(names, repeat_kv)
    assert routed.config._attn_implementation.startswith("ta_sdpa")
    batch = _batch(padded)
    want_logits, want_grads = _logits_and_grads(reference, batch)
    got_logits, got_grads = _logits_and_grads(routed, batch)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-5)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _attention_ops(model, batch) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**batch).logits.sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_the_listed_kernel_is_the_one_that_runs_forward_and_backward(make_cfg):
    model = build_model(make_cfg("peft=none"))
    attention.install(model, ["math"])
    ops = _attention_ops(model, _batch(False))
    assert "aten::_scaled_dot_product_attention_math" in ops and not any("flash" in op for op in ops), ops
    attention.install(model, ["flash", "math"])
    ops = _attention_ops(model, _batch(False))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops, ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops, ops


def test_checkpointed_recompute_runs_the_same_kernel(make_cfg):
    # non-reentrant checkpointing checks the recomputed tensors' metadata: another kernel would fail it
    cfg = make_cfg("peft=none", "gradient_checkpointing=true", "perf.sdpa_backends=[math]")
    model = build_model(cfg)
    model.train()
    assert model.config._attn_implementation == "ta_sdpa_math"
    ops = _attention_ops(model, _batch(True))
    assert ops and not any("flash" in op for op in ops), ops


def test_compiled_layers_trace_the_kernel_choice_without_a_graph_break(make_cfg):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = make_cfg("peft=none", "perf.compile=true", "perf.compile_backend=eager", "perf.sdpa_backends=[math]")
    model = build_model(cfg)
    reference = build_model(make_cfg("peft=none"))
    batch = _batch(False)
    torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-4, atol=1e-5)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1


def test_a_saved_model_does_not_name_the_routed_implementation(make_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_model(make_cfg("peft=none", "perf.sdpa_backends=[flash,math]"))
    model.save_pretrained(tmp_path / "m")
    assert "ta_sdpa" not in (tmp_path / "m" / "config.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="sdpa")
    batch = _batch(True)
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"


def test_repeated_kv_with_a_head_dim_transformers_repeats_itself_is_not_repeated_twice():
    # transformers passes enable_gqa only for head dims up to 256; above that it repeats k, v itself
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    want = model(input_ids=ids).logits
    attention.install(model, ["math"], repeat_kv=True)
    torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
