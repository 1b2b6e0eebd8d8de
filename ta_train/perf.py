"""Training FLOPs and model FLOPs utilization (MFU) from a model's architecture numbers.

Pure arithmetic on `ArchConfig` (no torch), shared by the live `perf/*` metrics and the benchmarks.

FLOPs per trained token, counting a multiply-add as 2 FLOPs (Kaplan et al. 2020; PaLM, Chowdhery et al.
2022, appendix B):

- ``N`` = parameters that take part in a matrix product: every parameter except the input embedding
  table, which is a lookup (with tied embeddings the one table is the LM head's matrix, so it counts).
- Forward: ``2N`` for the weights plus ``4·L·d·T`` for attention scores and the weighted sum
  (``QKᵀ`` and ``AV``, each ``2·T·d`` per token and layer, ``d = n_heads·head_dim = hidden_size``,
  ``T`` the sequence length; causal masking is not subtracted, as in PaLM).
- Backward: the input gradients cost the forward again (``2N + 4·L·d·T``) and the weight gradients
  ``2N`` more. Full fine-tuning therefore costs ``6N + 12·L·d·T`` per token, PaLM's formula.
- LoRA/QLoRA: frozen weights need no weight gradient, so their ``2N`` drops; the adapters (``N_a``
  parameters) cost ``6·N_a``: ``4N + 6·N_a + 12·L·d·T``. (Autograd skips the first layer's input
  gradients when the embedding output needs none; with gradient checkpointing it does need them.)
- Gradient-checkpointing recomputation is NOT counted: that would be hardware FLOPs utilization (HFU).
  MFU counts only the model's necessary FLOPs, so it is comparable across settings.

MFU = achieved model FLOP/s ÷ the devices' peak (dense, in the precision used: bf16/fp16 tensor cores
on GPUs). Peaks come from the hw profile (`hw.peak_tflops`); without one, MFU is not reported.
"""
from __future__ import annotations

from ta_train.config import ArchConfig


def matmul_params(arch: ArchConfig) -> int:
    """Parameters used in matrix products: all but an untied input embedding table."""
    embedding = arch.vocab_size * arch.hidden_size
    return arch.n_params if arch.tie_embeddings else arch.n_params - embedding


def attention_flops_per_token(arch: ArchConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token of the score and weighted-sum products: ``12·L·d·T``."""
    return 12.0 * arch.n_layers * arch.hidden_size * seq_len


def train_flops_per_token(arch: ArchConfig, seq_len: int, adapter_params: int | None = None) -> float:
    """Model FLOPs per trained token. ``adapter_params=None`` means full fine-tuning (every weight
    gets a gradient); an int means LoRA/QLoRA with that many trainable adapter parameters."""
    n = float(matmul_params(arch))
    attention = attention_flops_per_token(arch, seq_len)
    if adapter_params is None:
        return 6.0 * n + attention
    return 4.0 * n + 6.0 * adapter_params + attention


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilization in [0, 1+): achieved FLOP/s over ``devices × peak``; None without a peak.

    ``tokens_per_s`` is the throughput of all devices together (tokens the model processed, padding
    excluded, per second of wall time).
    """
    if not peak_tflops or peak_tflops <= 0 or devices < 1:
        return None
    return tokens_per_s * flops_per_token / (devices * peak_tflops * 1e12)
