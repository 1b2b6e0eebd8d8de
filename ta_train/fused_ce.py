"""Fused, chunked lm_head + cross-entropy: the loss, its gradients and the accuracy count without
ever holding the (N, V) logits of a whole micro-batch (`perf.fused_ce=true`).

For the N trained rows h (N, H) of the final hidden states (the rows whose shifted next-token label
is not -100, `ta_train.losses.trained_rows`), the lm_head weight W (V, H) (optionally a bias b),
targets y (N,) and label smoothing eps, each row i scores z_i = h_i W^T + b in fp32 and costs

    loss_i = (1 - eps) * (lse_i - z_iy) + eps * (lse_i - mean_v z_iv),   lse_i = log sum_v exp z_iv

which is (1 - eps) * -log p(y) + eps * mean_v(-log p(v)), F.cross_entropy(label_smoothing=eps)
(Szegedy et al. 2016). Its gradient w.r.t. the logits is softmax(z_i) - (1 - eps) * onehot(y_i) - eps / V.

Rows go through in chunks of `chunk_rows`. Per chunk the forward pass computes the logits (matmul in
the compute dtype, e.g. bf16 under autocast, then upcast to fp32), the loss sum and the argmax-correct
count, and, when a gradient is needed, the logits gradient right there, turned at once into
grad_h = G W (this chunk's rows) and grad_W += G^T h (fp32 accumulator) and grad_b += sum G. Backward
only scales the stored gradients by the incoming grad_output. Same matmul FLOPs as the unfused
path (3 x 2 N H V), nothing recomputed; extra memory is one chunk of fp32 logits (reused in place as
its gradient) plus its half cast, instead of N x V logits, log-probabilities and their gradients.
Held from forward to backward: grad_h (N x H) and, when W trains, grad_W (V x H fp32).

When the fused path does not apply, `fused_head` names why and the module falls back to the full
logits (ta_train.module): lm_head is not a plain Linear (LoRA on lm_head, modules_to_save, a
quantized or normalized head such as Baichuan2's NormHead); DeepSpeed ZeRO-3 or FSDP (the lm_head
weight is sharded and only its module's own forward gathers it); a model type whose causal-LM
forward is not exactly lm_head(decoder(x).last_hidden_state) (logit scaling or soft-capping:
Gemma2, Cohere, Granite, ...), a model whose config sets `plain_lm_head: false` (the planner reads
the same flag, `ta_train.plan_activations.fused_ce_applies`), or a model without a decoder body.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Causal LMs whose forward is exactly lm_head(self.model(...).last_hidden_state) (checked in their
# transformers modeling files / remote code): the fused path may replace that head.
FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "internlm2")


def _autocast_off(device_type: str) -> Any:
    """Autocast disabled inside the fused kernels: they cast explicitly to the compute dtype."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """dtype of the logits matmul: autocast's (bf16/fp16) when on, as F.linear would run; else the
    promotion of hidden and weight (fp32 under 32-true, bf16 for a bf16 model)."""
    device_type = hidden.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunked_pass(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    eps: float, chunk_rows: int, cdt: torch.dtype, need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(loss_sum fp32, correct long, grad_hidden, grad_weight fp32, grad_bias fp32) for the rows.

    need: which of (hidden, weight, bias) want a gradient; with none wanted nothing but the loss
    and the count is computed (validation). Gradients are of loss_sum (grad_output 1).
    """
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    need_h, need_w, need_b = need
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros(v, h, dtype=torch.float32, device=dev) if need_w else None
    grad_b = torch.zeros(v, dtype=torch.float32, device=dev) if need_b else None
    any_grad = need_h or need_w or need_b
    with _autocast_off(dev.type):
        w = weight.to(cdt)  # under autocast this cast replaces the one F.linear would cache
        b = bias.to(cdt) if bias is not None else None
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            hc = hidden[start:stop].to(cdt)
            y = targets[start:stop]
            z = F.linear(hc, w, b).float()  # (rows, V) fp32; the half matmul output is freed at once
            zmax, pred = z.max(dim=1)  # first maximum on ties, as argmax
            correct += (pred == y).sum()
            row_loss = (eps - 1.0) * z.gather(1, y[:, None]).squeeze(1)
            if eps:
                row_loss -= eps * z.mean(dim=1)
            z.sub_(zmax[:, None]).exp_()  # in place: the chunk's logits become exp(z - max)
            sumexp = z.sum(dim=1)
            loss_sum += (row_loss + zmax + sumexp.log()).sum()
            if not any_grad:
                continue
            z.div_(sumexp[:, None])  # softmax
            if eps:
                z.sub_(eps / v)
            z.scatter_add_(1, y[:, None], z.new_full((stop - start, 1), eps - 1.0))  # G = dloss/dz
            if grad_b is not None:
                grad_b += z.sum(dim=0)
            g = z.to(cdt)
            if grad_h is not None:
                if grad_h.dtype == cdt:
                    torch.mm(g, w, out=grad_h[start:stop])
                else:
                    grad_h[start:stop] = g @ w
            if grad_w is not None:
                if cdt == torch.float32:
                    grad_w.addmm_(g.t(), hc)
                else:  # half product, accumulated in fp32 (mixed-dtype add_, no fp32 temporary)
                    grad_w.add_(g.t() @ hc)
    return loss_sum, correct, grad_h, grad_w, grad_b


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Autograd node of `fused_linear_cross_entropy`: forward does all the work, backward scales.

    Outputs (loss_sum fp32 scalar, n_tokens long, correct long); only loss_sum is differentiable.
    Gradients come back in their inputs' dtypes. One backward per forward (no retain_graph reuse:
    backward scales the stored gradients in place).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
        eps: float, chunk_rows: int, cdt: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        need = tuple(bool(x) for x in ctx.needs_input_grad[:3])
        loss_sum, correct, gh, gw, gb = _chunked_pass(hidden, weight, bias, targets, eps, chunk_rows, cdt, need)
        ctx.save_for_backward(gh, gw, gb)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.used = False
        n_tokens = torch.full((), targets.numel(), dtype=torch.long, device=targets.device)  # a fill, no copy
        ctx.mark_non_differentiable(n_tokens, correct)
        return loss_sum, n_tokens, correct

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Optional[torch.Tensor], ...]:
        if ctx.used:
            raise RuntimeError("fused_linear_cross_entropy supports one backward per forward (retain_graph reuse)")
        ctx.used = True
        grads = []
        for g, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            grads.append(None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype))
        return (*grads, None, None, None, None)


@torch.profiler.record_function("ta.loss")  # the loss's profiler range (bench/step_profile.py)
def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0, chunk_rows: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy of (hidden @ weight.T + bias) against targets, chunked.

    hidden: (N, H) trained rows (already selected: no -100 targets); weight: (V, H) lm_head weight;
    targets: (N,) long in [0, V); bias: (V,) or None; chunk_rows: rows scored at once (peak extra
    memory ~ chunk_rows x V x (4 + half bytes)). Returns (loss_sum: fp32 scalar, same value as
    F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=eps); n_tokens: N as a
    long scalar; correct: argmax == target count, long scalar). Under no_grad, or when no input
    requires grad, only the loss and count are computed. A frozen weight (LoRA) gets no gradient work.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden (N, H) and weight (V, H) expected, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be (N,) = ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"perf.ce_chunk_rows must be >= 1, got {chunk_rows}")
    cdt = compute_dtype(hidden, weight)
    inputs = (hidden, weight, bias)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        return FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, float(label_smoothing), chunk_rows, cdt)
    with torch.no_grad():
        loss_sum, correct, *_ = _chunked_pass(hidden, weight, bias, targets, label_smoothing, chunk_rows, cdt, (False,) * 3)
    return loss_sum, torch.full((), targets.numel(), dtype=torch.long, device=targets.device), correct


def fused_head(
    model: Any, strategy: str, zero_stage: int, plain_lm_head: bool = True
) -> tuple[Optional[tuple[Any, Any]], str]:
    """((decoder body, lm_head Linear), why) when the fused loss can replace `model`'s head, else (None, why).

    model: an HF causal LM, or a PEFT model around one (LoRA/QLoRA); strategy / zero_stage: the
    run's strategy group; plain_lm_head: model.plain_lm_head (False: the config says the head is not
    a plain lm_head, declined as the planner's `fused_ce_applies` does). The body is the CausalLM's
    `.model` (a PEFT model's base model's `.model`), called with the same inputs as the whole model;
    its last_hidden_state feeds the head.
    """
    if not plain_lm_head:
        return None, "model.plain_lm_head is false: the config says the logits are not a plain lm_head(hidden)"
    if strategy == "fsdp":
        return None, "FSDP shards the lm_head weight; only the wrapped module's forward gathers it"
    if strategy == "deepspeed" and zero_stage >= 3:
        return None, "ZeRO-3 partitions the lm_head weight; only its module's forward gathers it"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in FUSED_MODEL_TYPES:
        return None, f"model_type {model_type!r} is not one whose head is a plain lm_head(hidden) ({', '.join(FUSED_MODEL_TYPES)})"
    body = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(body, torch.nn.Module) or head is None:
        return None, f"{type(base).__name__} has no decoder body `.model` or no output embeddings"
    if type(head) is not torch.nn.Linear:
        return None, f"lm_head is a {type(head).__name__}, not a plain Linear (LoRA on lm_head, modules_to_save or a special head)"
    if hasattr(head.weight, "ds_id"):
        return None, "the lm_head weight is a ZeRO-3 partitioned parameter"
    return (body, head), f"{type(base).__name__}: decoder body + {head.out_features}-row lm_head"
