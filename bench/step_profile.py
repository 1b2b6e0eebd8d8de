"""Where a training step's device time goes: CUDA kernels by kind, and how long the device sat idle.

bench/gpu_check.py runs PROFILE_STEPS more optimizer steps after a case's timed ones under
torch.profiler and stores `summarize(...)` of their kernels in the case's JSON ("profile"): the
first step with CUDA activity only, for its span and its busy and idle time; the second with CPU
activity too, for the kinds (`make_profiler`). Idle time is the span of a step minus the union of
kernel intervals: the device waiting for the host (launches, syncs, data). Under CPU tracing it
also holds the profiler's own recording of every CPU-side operator, a few microseconds each, which
is why it comes from the first step (the traced step's is `idle_ms_traced`).

Kinds come from the operator that launched each kernel. The profiler links every kernel to the
innermost CPU-side event open when it was launched (the kernel's linked correlation id). That
event's context is the chain of events enclosing it on its thread, innermost first: operators and
`torch.profiler.record_function` ranges. Work autograd runs in backward continues, after its
autograd node, with the context of the forward operator that created the node (the same sequence
number on the forward thread): a backward kernel is counted where its forward op was, unless its own
operator says otherwise. `context_kind` reads a context:

1. the innermost named range (RANGES): `ta.grad_norm`, `ta.clip` (ta_train.module: the total gradient
   norm and clipping) give grad_norm; torch's own `Optimizer.step#...`, `Optimizer.zero_grad#...`
   give optimizer, except for backward work (Lightning runs the step's closure, forward and
   backward, inside Optimizer.step); `ta.training_step` (ta_train.module) stops the search: the
   model's forward, the loss and their backward. `ta.loss` (ta_train.losses, ta_train.fused_ce)
   marks the loss and decides at step 4. What the closure runs outside training_step (Lightning's
   division of the loss by the accumulation, the seed gradient, finite checks: scalar work) counts
   as optimizer.
2. attention: an SDPA / FlashAttention operator anywhere in the context (its kernels, the copies and
   fills inside it, its backward, a checkpointed recompute of it).
3. gemm: the innermost operator is a matrix product (GEMM_OPS): linear layers with their LoRA
   adapters, the lm_head, eager attention's two batched products, the fused loss's chunk products.
4. loss: anything else under `ta.loss`: the fp32 cast and log-softmax / NLL of the trained logits rows,
   their selection, token accuracy's argmax, and the backward of all that.
5. the innermost aten operator's name (OP_RULES): grad_norm (AMP unscale and inf checks, a
   `_foreach_norm` outside the ranges), loss (cross-entropy, log-softmax, NLL), attention (softmax:
   eager attention), compiled (inductor's triton kernels, CompiledFunction), copy (COPY_OPS: copies,
   dtype casts, fills; also any operator named *quantize*: QLoRA's nf4 dequantization), elementwise (every other aten operator: RMSNorm, rotary, SiLU and the gating
   product, residual adds, dropout, embedding lookups, reductions, gradient accumulation).
6. a kernel with no known launcher (a profile without CPU activity, NCCL, a kernel-less context)
   falls back to its name (`kernel_kind`, fragments in KERNEL_NAMES); "other" when none matches, so
   a new name shows up among the top kernels rather than hiding in a wrong bucket.

Kinds: gemm, attention, loss, grad_norm, optimizer, elementwise, copy, compiled, other.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, NamedTuple, Sequence

PROFILE_STEPS = 2
BACKWARD_SCOPE = 1  # RecordScope.BACKWARD_FUNCTION: the event of an autograd node in backward
USER_SCOPE = 7  # RecordScope.USER_SCOPE: a record_function range
AUTOGRAD_ENGINE = "autograd::engine::"  # the engine's event around each node: backward side, the node's seq
BACKWARD = "(backward)"  # put in a context where it leaves autograd's backward for the forward op's context
MODEL = "model"  # the range kind of ta.training_step: no kind of its own, the operators decide

# (name prefix, kind): the innermost range of a context that matches decides
RANGES: tuple[tuple[str, str], ...] = (
    ("ta.grad_norm", "grad_norm"),
    ("ta.clip", "grad_norm"),
    ("ta.loss", "loss"),
    ("Optimizer.step#", "optimizer"),
    ("Optimizer.zero_grad#", "optimizer"),
    ("ta.training_step", MODEL),
)
# lower-cased fragments of an operator or autograd node name anywhere in the context
ATTENTION_OPS = ("scaled_dot_product", "attention", "flash_attn", "flashattn")
GEMM_OPS = frozenset(f"aten::{n}" for n in (
    "mm", "addmm", "addmm_", "_addmm_activation", "bmm", "baddbmm", "baddbmm_", "addbmm", "matmul",
    "linear", "_scaled_mm", "_int_mm", "mv", "addmv", "dot", "vdot", "einsum",
))
COPY_OPS = frozenset(f"aten::{n}" for n in (
    "to", "_to_copy", "copy_", "_copy_from", "_copy_from_and_resize", "clone", "contiguous", "fill_", "zero_",
    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full",
))
# (kind, lower-cased fragments) for the innermost aten operator that is neither a GEMM_OPS nor a
# COPY_OPS one, first match wins
OP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grad_norm", ("_amp_foreach_non_finite", "_amp_update_scale", "_foreach_norm")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
    ("attention", ("softmax",)),  # the loss's log-softmax matched above
    ("elementwise", ("aten::",)),
)
COMPILED_OPS = ("triton_", "compiledfunction", "torch-compiled region", "inductor")
# (kind, fragments of a lower-cased kernel name), first match wins: the fallback without an operator
KERNEL_NAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimizer", ("adam", "sgd", "lamb", "lion", "optimizer")),  # bitsandbytes: kOptimizer8bit2State...
    ("grad_norm", ("lpnorm", "non_finite_check_and_unscale", "amp_update_scale")),
    ("loss", ("cross_entropy", "logsoftmax", "log_softmax", "nll_loss")),
    ("attention", ("flash", "fmha", "sdpa", "attention", "cudnn", "softmax")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul")),
    ("compiled", ("triton_",)),  # inductor's fused kernels (perf.compile): names list the ops they fuse
    ("copy", ("memcpy", "memset", "copy", "cast", "fill", "quantize")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "index", "scatter", "gather", "reduce", "norm")),
)


class Op(NamedTuple):
    """A CPU-side event: an operator, a record_function range or an autograd node."""
    corr: int  # correlation id: a kernel's linked id names its launcher by it
    name: str
    start: int  # ns
    end: int
    thread: int
    scope: int  # BACKWARD_SCOPE for an autograd node run in backward
    seq: int  # autograd sequence number: a node's equals that of the forward op that made it
    fwd_thread: int  # for a node: the thread its forward op ran on


class Kernel(NamedTuple):
    """A device event (kernel, memcpy, memset): times in us; kind and launching op when known."""
    name: str
    start: float
    end: float
    kind: str | None = None
    op: str | None = None


def kernel_kind(name: str) -> str:
    """The kind of a CUDA kernel by its (lower-cased) name; "other" when no fragment matches."""
    low = name.lower()
    for kind, fragments in KERNEL_NAMES:
        if any(f in low for f in fragments):
            return kind
    return "other"


def _op_rule(name: str) -> str | None:
    low = name.lower()
    if name in GEMM_OPS:
        return "gemm"
    if name in COPY_OPS:
        return "copy"
    if any(f in low for f in COMPILED_OPS):
        return "compiled"
    if "quantize" in low:  # bitsandbytes' nf4 / int8 (de)quantization (QLoRA): a dtype cast
        return "copy"
    if not low.startswith("aten::"):
        return None  # ranges, autograd nodes, other libraries' operators: no rule
    return next(kind for kind, fragments in OP_RULES if any(f in low for f in fragments))


@lru_cache(maxsize=65536)
def context_kind(context: tuple[str, ...]) -> str | None:
    """The kind of the work an event's kernels do, from its context: the event's own name and those
    enclosing it, innermost first (see the module docstring); None when nothing in it decides."""
    scope, backward = None, False
    for name in context:
        backward = backward or name == BACKWARD
        scope = next((kind for prefix, kind in RANGES if name.startswith(prefix)), None)
        if scope == "optimizer" and backward:  # backward work in the optimizer step's closure
            scope = None
        if scope is not None:
            break
    if scope in ("grad_norm", "optimizer"):
        return scope
    if any(f in name.lower() for name in context for f in ATTENTION_OPS):
        return "attention"
    op = next((kind for kind in map(_op_rule, context) if kind is not None), None)
    if op == "gemm":
        return op
    return "loss" if scope == "loss" else op


def enclosing(ops: Sequence[Op]) -> list[int]:
    """Index of the innermost event enclosing each one on its thread (-1: none). An event that
    overlaps another only partly is not inside it."""
    parent = [-1] * len(ops)
    stack: list[int] = []
    thread = None
    for i in sorted(range(len(ops)), key=lambda i: (ops[i].thread, ops[i].start, -ops[i].end)):
        op = ops[i]
        if op.thread != thread:
            stack, thread = [], op.thread
        while stack and (op.start >= ops[stack[-1]].end or op.end > ops[stack[-1]].end):
            stack.pop()
        parent[i] = stack[-1] if stack else -1
        stack.append(i)
    return parent


def contexts(ops: Sequence[Op]) -> list[tuple[str, ...]]:
    """Each event's context: its name, then those of the events enclosing it, innermost first;
    after an autograd node, the context of the forward operator that made it (the latest-starting
    forward-side event with the node's sequence number on its forward thread)."""
    parent = enclosing(ops)
    backward = [False] * len(ops)  # inside an autograd node or the engine's event around one
    forward: dict[tuple[int, int], int] = {}
    for i in sorted(range(len(ops)), key=lambda i: (ops[i].start, -ops[i].end)):  # parents first
        node = ops[i].scope == BACKWARD_SCOPE or ops[i].name.startswith(AUTOGRAD_ENGINE)
        backward[i] = node or (parent[i] >= 0 and backward[parent[i]])
        if not backward[i] and ops[i].seq >= 0:
            forward[(ops[i].seq, ops[i].thread)] = i
    out: list[tuple[str, ...]] = []
    for i in range(len(ops)):
        names, j = [], i
        while j >= 0:
            names.append(ops[j].name)
            if ops[j].scope == BACKWARD_SCOPE or ops[j].name.startswith(AUTOGRAD_ENGINE):
                names.append(BACKWARD)
                j = forward.get((ops[j].seq, ops[j].fwd_thread), -1)
            else:
                j = parent[j]
        out.append(tuple(names))
    return out


def launch_kinds(ops: Sequence[Op]) -> dict[int, tuple[str | None, str]]:
    """correlation id -> (context_kind of the event's context, its name) for every event."""
    return {op.corr: (context_kind(ctx), op.name) for op, ctx in zip(ops, contexts(ops))}


def classify(kernels: Iterable[tuple[str, float, float, int]], ops: Sequence[Op]) -> list[Kernel]:
    """Kernels as (name, start_us, end_us, linked correlation id) -> Kernel with the kind its
    launching event gives (None when that is unknown or decides nothing: summarize falls back to
    the kernel's name) and that event's name."""
    launchers = launch_kinds(ops)
    out = []
    for name, start, end, linked in kernels:
        kind, op = launchers.get(linked, (None, None))
        out.append(Kernel(name, start, end, kind, op))
    return out


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals, overlaps counted once."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def summarize(kernels: Sequence[tuple], steps: int, top: int = 12) -> dict[str, Any]:
    """kernels: (name, start_us, end_us) of every CUDA kernel in `steps` optimizer steps, or Kernel
    tuples that add the kind and launching op (a None kind: the kernel's name decides).

    Per step, in ms: the span from the first kernel's start to the last one's end, the time the
    device ran kernels (busy) and did not (idle), the kernel time of each kind (kinds can overlap in
    time on several streams, so they may add up to more than busy) and how much of it got its kind
    from the launching operator (`by_op_ms`; the rest from kernel names); the `top` (kernel, kind)
    pairs by total time, with the operator that launched most of it when known ("op").
    """
    if not kernels:
        return {"steps": steps, "kernels": 0}
    steps = max(steps, 1)
    rows = [Kernel(*k) for k in kernels]
    span = max(k.end for k in rows) - min(k.start for k in rows)
    busy = union_length((k.start, k.end) for k in rows)
    by_kind: dict[str, float] = {}
    by_name: dict[tuple[str, str], float] = {}
    ops: dict[tuple[str, str], dict[str, float]] = {}
    by_op = 0.0
    for k in rows:
        kind, took = k.kind or kernel_kind(k.name), k.end - k.start
        by_op += took if k.kind else 0.0
        by_kind[kind] = by_kind.get(kind, 0.0) + took
        by_name[(k.name, kind)] = by_name.get((k.name, kind), 0.0) + took
        if k.op:
            launchers = ops.setdefault((k.name, kind), {})
            launchers[k.op] = launchers.get(k.op, 0.0) + took
    per_step = 1e-3 / steps  # us over all steps -> ms per step
    out = {
        "steps": steps,
        "kernels": len(rows),
        "span_ms": round(span * per_step, 2),
        "busy_ms": round(busy * per_step, 2),
        "idle_ms": round((span - busy) * per_step, 2),
        "kinds_ms": {k: round(v * per_step, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [],
    }
    if by_op:
        out["by_op_ms"] = round(by_op * per_step, 2)
    for (name, kind), took in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]:
        entry = {"name": name[:120], "kind": kind, "ms": round(took * per_step, 3)}
        if (name, kind) in ops:
            entry["op"] = max(ops[(name, kind)].items(), key=lambda kv: kv[1])[0]
        out["top"].append(entry)
    return out


def profile_events(prof: Any) -> tuple[list[Op], list[tuple[str, float, float, int]]]:
    """The CPU-side events (Op) and the device events (name, start_us, end_us, linked correlation
    id) of a finished torch.profiler.profile, read from its raw Kineto events: torch has had these
    accessors for many releases (the GPU box runs 2.11, this venv 2.13), while FunctionEvent exposes
    the linked id only in recent versions. Device-side copies of record_function ranges
    (gpu_user_annotation) are not kernels and are left out."""
    from torch.autograd import DeviceType

    results = prof.profiler.kineto_results
    events = results.events()
    base = results.trace_start_ns() if hasattr(results, "trace_start_ns") else 0  # us stay exact in a float
    ops: list[Op] = []
    device: list[tuple[Any, str]] = []
    annotations: set[str] = set()
    for e in events:
        if e.device_type() == DeviceType.CPU:
            if e.linked_correlation_id() or e.is_async() or e.start_thread_id() != e.end_thread_id():
                continue  # runtime calls (cudaLaunchKernel: linked to their operator) and async events
            if e.scope() == USER_SCOPE:
                annotations.add(e.name())
            ops.append(Op(e.correlation_id(), e.name(), e.start_ns(), e.end_ns(), e.start_thread_id(),
                          e.scope(), e.sequence_nr(), e.fwd_thread_id()))
        elif e.device_type() == DeviceType.CUDA and e.end_ns() > e.start_ns():
            activity = e.activity_type() if hasattr(e, "activity_type") else None
            device.append((e, activity))
    kernels = [(e.name(), (e.start_ns() - base) / 1e3, (e.end_ns() - base) / 1e3, e.linked_correlation_id()) for e, activity in device
               if activity != "gpu_user_annotation" and (activity is not None or e.name() not in annotations)]
    return ops, kernels


def cuda_kernels(prof: Any) -> list[Kernel]:
    """Every CUDA kernel (and memcpy / memset) a finished torch.profiler.profile recorded, with the
    kind and name of the operator that launched it when the profile has CPU activity."""
    ops, kernels = profile_events(prof)
    return classify(kernels, ops)


def make_profiler(start_step: int, steps: int = PROFILE_STEPS):
    """A Lightning callback profiling optimizer steps [start_step, start_step + steps) on CUDA;
    its `summary` holds `summarize(...)` afterwards (None when nothing was profiled).

    With two steps or more the first is recorded with CUDA activity only and gives the step's span,
    busy and idle time: recording every CPU-side operator costs the host a few microseconds each,
    which would show up as device idle time. The others record CPU activity too and give the kinds
    (by launching operator) and the top kernels; their idle time is kept as `idle_ms_traced`. With
    one step, that step does both.
    """
    import lightning as L
    import torch

    cuda = [torch.profiler.ProfilerActivity.CUDA]
    traced = [torch.profiler.ProfilerActivity.CPU, *cuda]  # CPU: the launching operators

    class StepProfiler(L.Callback):
        def __init__(self) -> None:
            self.prof = None
            self.phase: str | None = None  # "timing" (CUDA only) or "traced" (CPU + CUDA)
            self.timing: dict[str, Any] | None = None
            self.summary: dict[str, Any] | None = None
            self._from = start_step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.prof is not None or self.summary is not None or not torch.cuda.is_available():
                return
            if trainer.global_step == start_step and self.timing is None:
                self.phase = "timing" if steps >= 2 else "traced"
            elif trainer.global_step == start_step + 1 and self.timing is not None:
                self.phase = "traced"
            else:
                return
            torch.cuda.synchronize()
            self._from = trainer.global_step
            self.prof = torch.profiler.profile(activities=cuda if self.phase == "timing" else traced)
            self.prof.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.prof is None:
                return
            if self.phase == "timing" and trainer.global_step >= start_step + 1:
                self._finish(trainer.global_step - self._from)
            elif self.phase == "traced" and trainer.global_step >= start_step + steps:
                self._finish(trainer.global_step - self._from)

        def on_train_end(self, trainer, pl_module) -> None:
            if self.prof is not None:  # ended early (max_steps, max_epochs): the steps that did run
                self._finish(trainer.global_step - self._from)
            if self.summary is None and self.timing is not None:  # the traced steps never ran
                self.summary = self.timing

        def _finish(self, done: int) -> None:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            summary = summarize(cuda_kernels(self.prof), done)
            self.prof = None
            if self.phase == "timing":
                self.timing = summary
                return
            if self.timing is not None and self.timing.get("kernels"):
                summary["idle_ms_traced"] = summary.get("idle_ms")
                for key in ("span_ms", "busy_ms", "idle_ms"):
                    summary[key] = self.timing[key]
                summary["timing_steps"] = self.timing["steps"]
            self.summary = summary

    return StepProfiler()
