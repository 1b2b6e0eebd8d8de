"""The fused, chunked lm_head + cross-entropy against the full-logits reference; its planner figure."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ta_train.fused_ce import fused_head, fused_linear_cross_entropy
from ta_train.losses import IGNORE_INDEX
from ta_train.plan_activations import fused_ce_bytes, logits_bytes
from ta_train.plan_memory import GIB, Setup
from tests.conftest import compose


def reference(hidden, weight, targets, eps, bias=None):
    """Full logits, F.cross_entropy(reduction="sum"), argmax count: what the unfused path computes."""
    logits = F.linear(hidden, weight, bias)
    loss = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=eps)
    return loss, (logits.argmax(dim=-1) == targets).sum()


def leaves(n, h, v, dtype=torch.float32, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    return hidden, weight, b, torch.randint(0, v, (n,), generator=g)


def grads_of(loss, *xs, scale=0.37):
    """Gradients of scale * loss (a grad_output other than 1, as the window scale gives)."""
    return torch.autograd.grad(loss * scale, [x for x in xs if x is not None])


@pytest.mark.parametrize("eps", [0.0, 0.05])
@pytest.mark.parametrize("chunk", [1, 8, 64, 7])  # N=40: 1 and 8 divide it, 64 > N (one chunk), 7 leaves 5 rows
def test_loss_count_and_grads_match_full_logits_fp32(eps, chunk):
    hidden, weight, _, y = leaves(40, 16, 97)
    loss, n, correct = fused_linear_cross_entropy(hidden, weight, y, label_smoothing=eps, chunk_rows=chunk)
    ref_loss, ref_correct = reference(hidden, weight, y, eps)
    assert int(n) == 40 and int(correct) == int(ref_correct)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for got, want in zip(grads_of(loss, hidden, weight), grads_of(ref_loss, hidden, weight)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [7, 3])  # 7 does not divide 23
def test_bias_and_ragged_chunks(chunk):
    hidden, weight, bias, y = leaves(23, 8, 31, bias=True)
    loss, _, correct = fused_linear_cross_entropy(hidden, weight, y, bias, label_smoothing=0.05, chunk_rows=chunk)
    ref_loss, ref_correct = reference(hidden, weight, y, 0.05, bias)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6) and int(correct) == int(ref_correct)
    for got, want in zip(grads_of(loss, hidden, weight, bias), grads_of(ref_loss, hidden, weight, bias)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_zero_rows_give_zero_loss_and_zero_grads():
    hidden, weight, _, y = leaves(0, 8, 13)
    loss, n, correct = fused_linear_cross_entropy(hidden, weight, y, label_smoothing=0.05, chunk_rows=4)
    assert loss.item() == 0.0 and int(n) == 0 and int(correct) == 0
    gh, gw = grads_of(loss, hidden, weight)
    assert gh.shape == (0, 8) and torch.equal(gw, torch.zeros(13, 8))


def test_frozen_weight_gets_no_grad_and_hidden_grad_matches():
    hidden, weight, _, y = leaves(12, 8, 29)
    weight.requires_grad_(False)  # LoRA: frozen lm_head
    loss, _, _ = fused_linear_cross_entropy(hidden, weight, y, label_smoothing=0.05, chunk_rows=5)
    (loss * 2).backward()
    assert weight.grad is None
    ref_h = hidden.detach().clone().requires_grad_()
    (reference(ref_h, weight, y, 0.05)[0] * 2).backward()
    torch.testing.assert_close(hidden.grad, ref_h.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_computes_only_loss_and_count():
    hidden, weight, _, y = leaves(20, 8, 29)
    with torch.no_grad():
        loss, n, correct = fused_linear_cross_entropy(hidden, weight, y, chunk_rows=6)
    assert loss.grad_fn is None and not loss.requires_grad
    ref_loss, ref_correct = reference(hidden.detach(), weight.detach(), y, 0.0)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6) and int(correct) == int(ref_correct) and int(n) == 20


def test_bf16_inputs_give_bf16_grads_close_to_the_bf16_reference():
    hidden, weight, _, y = leaves(48, 32, 211, dtype=torch.bfloat16)
    loss, _, correct = fused_linear_cross_entropy(hidden, weight, y, label_smoothing=0.05, chunk_rows=16)
    ref_loss, ref_correct = reference(hidden, weight, y, 0.05)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
    assert abs(int(correct) - int(ref_correct)) <= 1  # a near-tie may round differently
    got, want = grads_of(loss, hidden, weight), grads_of(ref_loss, hidden, weight)
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-3)


def test_autocast_bf16_with_fp32_leaves_matches_autocast_reference_and_returns_fp32_grads():
    hidden, weight, _, y = leaves(40, 32, 157)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = fused_linear_cross_entropy(hidden, weight, y, label_smoothing=0.05, chunk_rows=9)
        ref_loss, _ = reference(hidden, weight, y, 0.05)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
    got, want = grads_of(loss, hidden, weight), grads_of(ref_loss, hidden, weight)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-3)


def test_tied_embedding_weight_accumulates_both_gradients():
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.Embedding(41, 8)
    proj = torch.nn.Linear(8, 8)
    ids = torch.randint(0, 41, (30,), generator=g)
    y = torch.randint(0, 41, (30,), generator=g)

    def grads(fused: bool):
        emb.zero_grad(set_to_none=True)
        proj.zero_grad(set_to_none=True)
        hidden = torch.tanh(proj(emb(ids)))  # the embedding feeds the body and is the head
        if fused:
            loss = fused_linear_cross_entropy(hidden, emb.weight, y, label_smoothing=0.05, chunk_rows=7)[0]
        else:
            loss = reference(hidden, emb.weight, y, 0.05)[0]
        loss.backward()
        return emb.weight.grad.clone(), proj.weight.grad.clone()

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ties_count_the_first_maximum_like_argmax():
    hidden, weight, _, y = leaves(10, 4, 9)
    y[:5] = 0
    loss, _, correct = fused_linear_cross_entropy(hidden, torch.zeros(9, 4), y)  # every logit 0: argmax 0
    assert int(correct) == int((y == 0).sum()) and loss.item() == pytest.approx(10 * torch.log(torch.tensor(9.0)).item())


def test_second_backward_through_the_same_graph_is_refused():
    hidden, weight, _, y = leaves(6, 4, 9)
    loss = fused_linear_cross_entropy(hidden, weight, y)[0]
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()


def test_shape_errors_are_named():
    hidden, weight, _, y = leaves(6, 4, 9)
    with pytest.raises(ValueError, match="weight"):
        fused_linear_cross_entropy(hidden, weight[:, :3], y)
    with pytest.raises(ValueError, match="ce_chunk_rows"):
        fused_linear_cross_entropy(hidden, weight, y, chunk_rows=0)


# --- through the real tiny model (CausalLMModule._score) --------------------------------------


def tiny_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49152, (3, 24), generator=g)
    labels = ids.clone()
    labels[:, :9] = IGNORE_INDEX  # prompts
    labels[2, 17:] = IGNORE_INDEX  # padding
    mask = torch.ones_like(ids)
    mask[2, 17:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_tiny_model_fused_score_matches_full_logits(make_cfg, peft):
    from ta_train.module import CausalLMModule

    scores = {}
    for fused in (False, True):
        cfg = make_cfg(f"peft={peft}", f"perf.fused_ce={str(fused).lower()}", "perf.ce_chunk_rows=10")
        module = CausalLMModule(cfg, accumulation=1)
        torch.manual_seed(0)  # the same LoRA A init and dropout masks in both runs
        module.configure_model()
        assert (module._resolve_fused() is not None) == fused
        loss, n, correct, total = module._score(tiny_batch(), 0.05)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.requires_grad}
        scores[fused] = (loss.item(), int(n), int(correct), int(total), grads)
    (l0, n0, c0, t0, g0), (l1, n1, c1, t1, g1) = scores[False], scores[True]
    assert (n1, c1, t1) == (n0, c0, t0) and n0 == 15 + 15 + 8
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert g0.keys() == g1.keys() and ("model.model.embed_tokens.weight" in g0) == (peft == "none")
    for k in g0:  # fp32 rounding of a different summation order, relative to the tensor's scale
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=float(g0[k].abs().max()) * 2e-6, msg=k)


def test_fallbacks_name_the_reason(make_cfg, caplog):
    from ta_train.model import build_model
    from ta_train.module import CausalLMModule

    cfg = make_cfg("peft=lora", "perf.fused_ce=true", "peft.target_modules=[q_proj,lm_head]")
    module = CausalLMModule(cfg, accumulation=1)
    module.configure_model()
    with caplog.at_level(logging.WARNING, logger="ta_train.module"):
        assert module._resolve_fused() is None
    assert "falling back" in caplog.text and "not a plain Linear" in caplog.text
    model = build_model(make_cfg("peft=none"))
    assert fused_head(model, "auto", 0)[0] is not None
    assert "FSDP" in fused_head(model, "fsdp", 0)[1] and fused_head(model, "fsdp", 0)[0] is None
    assert "ZeRO-3" in fused_head(model, "deepspeed", 3)[1]
    assert fused_head(model, "deepspeed", 2)[0] is not None
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    parts, why = fused_head(gpt2, "auto", 0)
    assert parts is None and "gpt2" in why


# --- planner ------------------------------------------------------------------------------------


def test_planner_counts_one_chunk_instead_of_the_full_logits():
    cfg, OmegaConf = compose(["model=tiny", "run_dir=/tmp/ta-fused-plan"])
    arch = OmegaConf.to_object(cfg).model.arch  # vocab 49,152, hidden 64
    full = Setup(
        method="none", r=0, targets=(), lora_dropout=0.0, double_quant=False, precision="bf16-mixed",
        frozen_dtype="bfloat16", strategy="auto", zero_stage=0, offload_optimizer=False, offload_parameters=False,
        fsdp_sharding="FULL_SHARD", devices=1, micro_batch=8, seq_len=2048, gradient_checkpointing=False, attn="sdpa",
    )
    fused = replace(full, fused_ce=True, ce_chunk_rows=4096)
    tokens, v, h = 8 * 2048, 49152, 64
    assert logits_bytes(arch, full) == tokens * v * 12  # 9.0 GiB: three fp32 copies at the loss peak
    # chunk: 4096 x V fp32 logits/grad + their bf16 copy; held: grad of h (fp32 residual), grad_W fp32 + bf16 G^T h
    want = 4096 * v * (4 + 2) + tokens * h * 4 + v * h * (4 + 2)
    assert logits_bytes(arch, fused) == fused_ce_bytes(arch, fused) == want
    assert logits_bytes(arch, fused) / GIB == pytest.approx(1.15, abs=0.005)
    lora = replace(fused, method="lora", r=8, targets=("q_proj",), frozen_dtype="bfloat16")
    assert logits_bytes(arch, lora) == 4096 * v * 6 + tokens * h * 2  # frozen head: no grad_W
    small = replace(fused, micro_batch=1, seq_len=1000, precision="32-true")
    assert logits_bytes(arch, small) == 1000 * v * 4 + 1000 * h * 4 + v * h * 4  # rows capped at the tokens
    for fallback in (replace(fused, strategy="fsdp"), replace(fused, strategy="deepspeed", zero_stage=3),
                     replace(lora, targets=("q_proj", "lm_head"))):
        assert logits_bytes(arch, fallback) == tokens * v * 12


def test_plan_of_a_run_with_fused_ce_has_smaller_buffers():
    from ta_train.plan import plan_for

    def plan(*extra):
        cfg, OmegaConf = compose(["model=tiny", "peft=none", "precision=bf16-mixed", "batch.micro_size=8",
                                  "batch.global_size=8", "data.max_seq_len=2048", "run_dir=/tmp/ta-fused-plan", *extra])
        return plan_for(OmegaConf.to_object(cfg))

    off, on = plan(), plan("perf.fused_ce=true")
    assert off.breakdown["buffers"] - on.breakdown["buffers"] == pytest.approx(9.0 - 1.15, abs=0.01)


@pytest.mark.parametrize("model, fused", [("baichuan2_7b", False), ("qwen7b", True)])
def test_plan_counts_full_logits_for_a_head_that_falls_back(model, fused):
    from ta_train.plan import _setup, plan_for

    def plan(*extra):
        cfg, OmegaConf = compose([f"model={model}", "peft=lora", "precision=bf16-mixed", "batch.micro_size=8",
                                  "batch.global_size=8", "data.max_seq_len=2048", "run_dir=/tmp/ta-fused-plan", *extra])
        c = OmegaConf.to_object(cfg)
        return c, plan_for(c)

    (cfg, off), (cfg_on, on) = plan(), plan("perf.fused_ce=true")
    arch, s = cfg_on.model.arch, _setup(cfg_on, None, None)
    assert s.plain_lm_head is fused
    full = 8 * 2048 * arch.vocab_size * 12
    want = fused_ce_bytes(arch, s) if fused else full
    assert logits_bytes(arch, s) == want
    if fused:  # the chunk replaces the full logits in the buffers
        assert off.breakdown["buffers"] - on.breakdown["buffers"] == pytest.approx((full - want) / GIB, abs=0.01)
    else:  # Baichuan2's NormHead: the full ~23 GiB of logits buffers stay in the plan
        assert full / GIB == pytest.approx(23.0, abs=0.1)
        assert on.breakdown == off.breakdown and on.peak_gib == off.peak_gib


def test_plain_lm_head_false_declines_at_runtime_too(make_cfg, caplog):
    from ta_train.model import build_model
    from ta_train.module import CausalLMModule

    model = build_model(make_cfg("peft=none"))
    parts, why = fused_head(model, "auto", 0, plain_lm_head=False)
    assert parts is None and "plain_lm_head" in why
    module = CausalLMModule(make_cfg("peft=none", "perf.fused_ce=true", "model.plain_lm_head=false"), accumulation=1)
    module.configure_model()
    with caplog.at_level(logging.WARNING, logger="ta_train.module"):
        assert module._resolve_fused() is None
    assert "falling back" in caplog.text and "plain_lm_head" in caplog.text


def test_shipped_model_configs_mark_heads_outside_the_fused_types():
    """Each conf/model whose family's model_type is not in FUSED_MODEL_TYPES sets plain_lm_head false."""
    from ta_train.fused_ce import FUSED_MODEL_TYPES
    from tests.conftest import CONF_DIR

    family = {"baichuan-inc/": "baichuan", "internlm/internlm2": "internlm2", "meta-llama/": "llama",
              "Qwen/Qwen2": "qwen2", "HuggingFaceTB/SmolLM2": "llama", "tiny-llama": "llama"}
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        cfg, OmegaConf = compose([f"model={path.stem}", "run_dir=/tmp/ta-fused-plan"])
        m = OmegaConf.to_object(cfg).model
        types = [t for prefix, t in family.items() if m.name_or_path.startswith(prefix)]
        assert len(types) == 1, f"{path.name}: add its family ({m.name_or_path}) to this test"
        assert m.plain_lm_head == (types[0] in FUSED_MODEL_TYPES), path.name
