"""Regional torch.compile (`perf.compile=true`): every decoder layer compiled in place.

Why: on an H200 the bf16 GEMMs of a 1B Llama run at ~80% of peak, yet a full fine-tuning step
reached 35% MFU; the rest is elementwise work between the GEMMs (RMSNorm in fp32, rotary,
SiLU*mul, residual adds, dtype casts), each a separate kernel reading and writing the activations.
Inductor fuses those into a few generated kernels per layer; matmuls and SDPA stay on cuBLAS/cuDNN.

Why regional: all decoder layers run the same code, and dynamo treats their parameters as graph
inputs (torch's default `inline_inbuilt_nn_modules`), so one compiled graph serves every layer:
compile time is one layer's, not the whole model's. Embeddings, the LM head and the loss stay eager.

Names: `nn.Module.compile()` keeps the compiled callable on the module itself instead of wrapping it
in an OptimizedModule, so parameter names, state-dict keys, PEFT's `save_pretrained`, checkpoints and
ZeRO's gathered state dict are unchanged (no `_orig_mod.` prefix).

Gradient checkpointing: transformers 5 checkpoints inside each layer's `forward`
(GradientCheckpointingLayer), so dynamo traces the non-reentrant `torch.utils.checkpoint` as a
higher-order op and the recomputation runs inside the compiled backward.

Recompiles: a graph is specialized to its input shapes, grad mode, train/eval mode and autocast
state. Micro-batches padded to their longest row change the sequence length: with
`perf.compile_dynamic=null` (torch's default) the first change recompiles once into a
dynamic-length graph that serves every later length; validation (no grad, eval) compiles its own.
`data.packing=true` fills rows towards `data.max_seq_len`, but a micro-batch is still padded to its
longest row, so lengths vary too. Masks (a batch with or without padding) and LoRA's first layer
(its input needs no grad) add variants, so the recompile limit is raised to RECOMPILE_LIMIT.
`compile_dynamic=false` compiles once per length and, past that limit, runs later shapes eagerly:
use it only with fixed lengths. Generation (the demo answer) changes shapes every token, so it runs
eagerly (`eager_stance`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ta_train.config import PerfConfig, StrategyConfig, compile_refusal

log = logging.getLogger(__name__)

# Compiled variants one shared layer function may need: {static, dynamic length} x {attention mask
# or none (a micro-batch without padding)} x {training, validation without grad} x {first layer's
# input without grad (LoRA: frozen embeddings), later layers' with}: 16, plus margin. torch's
# default (8) was hit by a tiny LoRA run with padding and validation; past it layers run eagerly.
RECOMPILE_LIMIT = 32


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers (outermost only), found through PEFT wrappers.

    A layer is a module whose class HF names in `_no_split_modules` (the unit that must stay on one
    device: the decoder block), or, for models without that list, a GradientCheckpointingLayer.
    Raises ValueError when there is none.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52
        GradientCheckpointingLayer = ()  # type: ignore[assignment,misc]

    def is_layer(m: Any) -> bool:
        return type(m).__name__ in names if names else isinstance(m, GradientCheckpointingLayer)

    layers: list[Any] = []
    prefixes: list[str] = []
    for name, module in base.named_modules():
        if is_layer(module) and not any(name.startswith(p) for p in prefixes):
            layers.append(module)
            prefixes.append(name + ".")
    if not layers:
        raise ValueError(f"perf.compile: no decoder layers found in {type(base).__name__} (looked for {sorted(names) or 'GradientCheckpointingLayer'})")
    return layers


def compile_decoder_layers(model: Any, perf: PerfConfig, strategy: StrategyConfig) -> int:
    """Compile each decoder layer of `model` in place; returns how many were compiled.

    Call after gradient checkpointing and PEFT wrapping (the compiled code then includes the LoRA
    branches and the checkpoint). Compilation itself happens lazily on the first forward.
    Raises ValueError for strategies that shard parameters inside the layers (compile_refusal).
    """
    refusal = compile_refusal(perf, strategy)
    if refusal:
        raise ValueError(refusal)
    layers = decoder_layers(model)
    kwargs: dict[str, Any] = {"backend": perf.compile_backend, "dynamic": perf.compile_dynamic}
    if perf.compile_backend == "inductor":
        kwargs["mode"] = perf.compile_mode
    import torch._dynamo

    dyn = torch._dynamo.config
    name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
    setattr(dyn, name, max(getattr(dyn, name), RECOMPILE_LIMIT))
    for layer in layers:
        layer.compile(**kwargs)
    log.info(
        "perf.compile: %d %s layers compiled in place (backend %s, mode %s, dynamic %s); "
        "the first steps include compilation, a new sequence length or validation may recompile",
        len(layers), type(layers[0]).__name__, perf.compile_backend, perf.compile_mode, perf.compile_dynamic,
    )
    return len(layers)


@contextlib.contextmanager
def eager_stance() -> Iterator[None]:
    """Run compiled code eagerly inside the block (generation: a new shape every token).

    torch.compiler.set_stance("force_eager") skips every compiled region without undoing it, so
    training can resume compiled afterwards.
    """
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield
