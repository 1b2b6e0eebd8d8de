"""bench/step_profile.py: kernel kinds from the operator that launched each kernel (checked on a real
CPU profile of a real tiny-model training step), the kernel-name fallback on real CUDA kernel names,
and the busy/idle arithmetic of a profiled step against a naive per-microsecond count."""
from __future__ import annotations

import random
from collections import defaultdict

import pytest

from bench.step_profile import (
    BACKWARD, Kernel, Op, classify, context_kind, contexts, enclosing, kernel_kind, launch_kinds, summarize,
    union_length,
)


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
    ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopB_TNN", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>", "gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<1>, at::native::LpNormFunctor<float>>", "grad_norm"),
    ("void at::native::_amp_foreach_non_finite_check_and_unscale_cuda_kernel<float>", "grad_norm"),
    # a foreach product: the clip's or the optimizer's, the name cannot tell (the launching op can)
    ("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<1>, at::native::BinaryOpScalarTensorFunctor<float>>", "other"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>", "loss"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, SoftMaxForwardEpilogue>", "attention"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float>>>", "elementwise"),
    ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0", "compiled"),
    ("triton_poi_fused_mul_silu_1", "compiled"),
    ("Memcpy HtoD (Pinned -> Device)", "copy"),
    ("Memset (Device)", "copy"),
    ("void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>", "copy"),
    ("some_new_kernel_name", "other"),
])
def test_kernel_names_fall_in_their_kind(name, kind):
    assert kernel_kind(name) == kind


STEP = ("ta.training_step", "Optimizer.step#AdamW.step")  # Lightning runs training_step in the step's closure


@pytest.mark.parametrize("context, kind", [
    (("aten::_foreach_norm", "ta.grad_norm", "Optimizer.step#AdamW.step"), "grad_norm"),
    (("aten::_foreach_mul_", "ta.clip", "Optimizer.step#AdamW.step"), "grad_norm"),
    (("aten::_foreach_mul_", "Optimizer.step#AdamW.step"), "optimizer"),  # the same op in the update
    (("aten::_fused_adamw_", "Optimizer.step#AdamW.step"), "optimizer"),
    (("aten::_amp_foreach_non_finite_check_and_unscale_",), "grad_norm"),  # GradScaler.unscale_, no range
    (("aten::mm", "aten::matmul", "aten::linear", *STEP), "gemm"),
    (("aten::copy_", "aten::_to_copy", "aten::to", "aten::linear", *STEP), "copy"),  # autocast's weight cast
    (("aten::_softmax", "aten::softmax", *STEP), "attention"),  # eager attention's softmax
    (("aten::_log_softmax", "aten::log_softmax", "aten::cross_entropy_loss", "ta.loss", *STEP), "loss"),
    (("aten::copy_", "aten::_to_copy", "aten::to", "ta.loss", *STEP), "loss"),  # the fp32 logits rows
    (("aten::mm", "FusedLinearCrossEntropy", "ta.loss", *STEP), "gemm"),  # the fused loss's chunk products
    (("aten::mul", "FusedLinearCrossEntropyBackward", BACKWARD, "FusedLinearCrossEntropy", "ta.loss", *STEP), "loss"),
    (("aten::fill_", "aten::zero_", "aten::_scaled_dot_product_efficient_attention", "aten::scaled_dot_product_attention", *STEP), "attention"),
    (("aten::bmm", "BmmBackward0", BACKWARD, "aten::bmm", "aten::_scaled_dot_product_attention_math", *STEP), "attention"),
    (("aten::mm", "MmBackward0", BACKWARD, "aten::mm", "aten::linear", *STEP), "gemm"),
    (("aten::mul", "MulBackward0", BACKWARD, "aten::mul", *STEP), "elementwise"),  # RMSNorm's backward
    # backward of work Lightning does in the closure outside training_step: not the optimizer's
    (("aten::div", "DivBackward0", BACKWARD, "aten::div", "Optimizer.step#AdamW.step"), "elementwise"),
    (("aten::add_", "torch::autograd::AccumulateGrad", BACKWARD), "elementwise"),
    (("triton_poi_fused_mul_silu_1", "CompiledFunction", *STEP), "compiled"),
    (("aten::mm", "CompiledFunction", *STEP), "gemm"),  # inductor's extern matmul
    (("bitsandbytes::dequantize_4bit", "MatMul4Bit", *STEP), "copy"),  # QLoRA's nf4 -> bf16 weight
    (("nccl:all_reduce", "c10d::allreduce_"), None),  # nothing decides: the kernel's name will
    ((), None),
])
def test_a_context_gives_its_kind(context, kind):
    assert context_kind(context) == kind


def nested(rng: random.Random, start: int, end: int, depth: int, thread: int, out: list) -> None:
    """Random properly nested intervals inside [start, end)."""
    t = start
    while depth and t < end - 2 and rng.random() < 0.8:
        a = rng.randint(t, end - 2)
        b = rng.randint(a + 1, end)
        out.append(Op(len(out), f"op{len(out)}", a, b, thread, 0, -1, 0))
        nested(rng, a, b, depth - 1, thread, out)
        t = b


def test_enclosing_finds_the_innermost_event_against_a_naive_search():
    rng = random.Random(0)
    for _ in range(30):
        ops: list[Op] = []
        for thread in (1, 2):
            nested(rng, 0, 200, 4, thread, ops)
        naive = []
        for op in ops:
            around = [i for i, o in enumerate(ops) if o is not op and o.thread == op.thread
                      and o.start <= op.start and op.end <= o.end and (o.start, -o.end, i) < (op.start, -op.end, op.corr)]
            naive.append(min(around, key=lambda i: (ops[i].end - ops[i].start, -i), default=-1))  # equal: the later is inside
        assert enclosing(ops) == naive


def test_a_backward_node_continues_with_its_forward_ops_context():
    """The engine's event and the node carry the forward op's sequence number; the forward op is
    found on the node's forward thread, here another thread than backward's (as on CUDA)."""
    ops = [
        Op(1, "ta.training_step", 0, 100, 1, 7, -1, 0),
        Op(2, "ta.loss", 10, 40, 1, 7, -1, 0),
        Op(3, "aten::mul", 20, 30, 1, 0, 41, 0),
        Op(4, "aten::mul", 50, 60, 1, 0, 41, 0),  # runs later with the same number: no node of its own
        Op(5, "autograd::engine::evaluate_function: MulBackward0", 200, 300, 9, 0, 41, 1),
        Op(6, "MulBackward0", 210, 290, 9, 1, 41, 1),
        Op(7, "aten::mul", 220, 230, 9, 0, -1, 0),
    ]
    ctx = contexts(ops)
    assert ctx[6] == ("aten::mul", "MulBackward0", BACKWARD, "aten::mul", "ta.training_step")
    assert ctx[4] == ("autograd::engine::evaluate_function: MulBackward0", BACKWARD, "aten::mul", "ta.training_step")
    ops[3] = ops[3]._replace(seq=42)  # now the op in ta.loss made node 41
    assert launch_kinds(ops)[7] == ("loss", "aten::mul")
    kernels = classify([("vectorized_elementwise_kernel<mul>", 0.2, 0.3, 7), ("nvjet_x", 0.3, 0.4, 99)], ops)
    assert kernels == [Kernel("vectorized_elementwise_kernel<mul>", 0.2, 0.3, "loss", "aten::mul"), Kernel("nvjet_x", 0.3, 0.4)]


def test_union_length_counts_overlaps_once_against_a_naive_count():
    rng = random.Random(0)
    for _ in range(50):
        intervals = [(s, s + rng.randint(1, 30)) for s in (rng.randint(0, 200) for _ in range(rng.randint(0, 12)))]
        covered = {t for s, e in intervals for t in range(s, e)}  # unit cells [t, t + 1)
        assert union_length(intervals) == len(covered)


def test_a_profiled_step_splits_into_kinds_busy_and_idle():
    kernels = [  # two steps of 1 ms each, in microseconds; the device idles 200 us in each
        ("sm90_xmma_gemm_a", 0, 500), ("flash_fwd", 500, 700), ("multi_tensor_apply_kernel<FusedAdam>", 900, 1000),
        ("sm90_xmma_gemm_a", 1000, 1500), ("flash_fwd", 1500, 1700), ("multi_tensor_apply_kernel<FusedAdam>", 1900, 2000),
    ]
    out = summarize(kernels, steps=2)
    assert (out["span_ms"], out["busy_ms"], out["idle_ms"]) == (1.0, 0.8, 0.2)
    assert out["kinds_ms"] == {"gemm": 0.5, "attention": 0.2, "optimizer": 0.1}
    assert out["top"][0] == {"name": "sm90_xmma_gemm_a", "kind": "gemm", "ms": 0.5}
    assert summarize([], steps=2) == {"steps": 2, "kernels": 0}


def test_kinds_from_launching_ops_win_over_kernel_names():
    """The same foreach kernel from the clip and from the optimizer lands in two kinds, each with
    its launching op; a kernel without one falls back to its name; by_op_ms counts the former."""
    foreach = "multi_tensor_apply_kernel<BinaryOpScalarTensorFunctor>"
    kernels = [
        Kernel("nvjet_a", 0, 600, "gemm", "aten::mm"),
        Kernel(foreach, 600, 700, "grad_norm", "aten::_foreach_mul_"),
        Kernel(foreach, 700, 1000, "optimizer", "aten::_foreach_mul_"),
        Kernel("Memcpy DtoH (Device -> Pinned)", 1000, 1100),
    ]
    out = summarize(kernels, steps=1)
    assert out["kinds_ms"] == {"gemm": 0.6, "optimizer": 0.3, "grad_norm": 0.1, "copy": 0.1}
    assert out["by_op_ms"] == 1.0 and out["busy_ms"] == out["span_ms"] == 1.1
    assert out["top"][:3] == [
        {"name": "nvjet_a", "kind": "gemm", "ms": 0.6, "op": "aten::mm"},
        {"name": foreach, "kind": "optimizer", "ms": 0.3, "op": "aten::_foreach_mul_"},
        {"name": foreach, "kind": "grad_norm", "ms": 0.1, "op": "aten::_foreach_mul_"},
    ]
    assert out["top"][3] == {"name": "Memcpy DtoH (Device -> Pinned)", "kind": "copy", "ms": 0.1}


def test_logged_perf_takes_the_timed_steps_only(tmp_path):
    """bench/gpu_check.py: the median of perf/* excludes warm-up, the profiled steps after the timed
    ones (the profiler slows them) and a data/* row logged at step 0."""
    import csv

    from bench.gpu_check import TIMED, logged_perf

    warmup = 3
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "data/rows", "perf/tokens_per_s"])
        writer.writeheader()
        writer.writerow({"step": 0, "data/rows": 10})
        for step in range(warmup + TIMED + 2):
            timed = warmup <= step < warmup + TIMED
            writer.writerow({"step": step, "perf/tokens_per_s": 100 + step if timed else 1})
    assert logged_perf(path, warmup) == {"logged_tokens_per_s": 100 + warmup + (TIMED - 1) / 2}


@pytest.mark.parametrize(("steps", "ran", "calls"), [
    (2, 2, [1, 1]),  # one timing step (CUDA only), one traced step (CPU + CUDA)
    (2, 1, [1]),  # the run ended after the timing step: its summary, kinds by kernel name
    (3, 2, [1, 1]),  # ended inside the traced steps: per-step figures over the one that ran
    (3, 3, [1, 2]),
    (1, 1, [1]),  # one step does both
])
def test_the_profiler_times_one_step_untraced_and_divides_by_the_steps_that_ran(monkeypatch, steps, ran, calls):
    """A run that ends (max_steps, epoch end) inside the profiled steps: per-step figures over the
    steps profiled, not the steps asked for. The span, busy and idle time come from the first step,
    recorded without CPU activity. CUDA is not here: its availability, synchronize and the CUDA
    profiler are stubbed (the stub records no kernel; summarize is replaced to tell the sessions apart)."""
    from types import SimpleNamespace

    import torch

    from bench.step_profile import make_profiler

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    sessions: list[list] = []

    class NoKernels:
        def __init__(self, activities) -> None:
            sessions.append(sorted(a.name for a in activities))
            self.profiler = SimpleNamespace(kineto_results=SimpleNamespace(events=lambda: []))
        def __enter__(self): return self
        def __exit__(self, *_) -> None: ...

    monkeypatch.setattr(torch.profiler, "profile", NoKernels)
    seen: list[int] = []

    def fake_summarize(kernels, steps):
        seen.append(steps)
        idle = 1.0 if len(seen) == 1 else 5.0
        return {"steps": steps, "kernels": 3, "span_ms": 10.0 * steps, "busy_ms": 10.0 * steps - idle, "idle_ms": idle}

    monkeypatch.setattr("bench.step_profile.summarize", fake_summarize)
    profiler, trainer = make_profiler(start_step=5, steps=steps), SimpleNamespace(global_step=4)
    for _ in range(8):
        profiler.on_train_batch_start(trainer, None, None, 0)
        trainer.global_step += 1
        profiler.on_train_batch_end(trainer, None, None, None, 0)
        if trainer.global_step == 5 + ran:
            break
    profiler.on_train_end(trainer, None)
    assert seen == calls and profiler.prof is None
    timing, traced = ["CUDA"], ["CPU", "CUDA"]
    assert sessions == ([timing, traced][: len(calls)] if steps >= 2 else [traced])
    assert profiler.summary["steps"] == calls[-1]
    if len(calls) == 2:  # the timing step's idle time, the traced one's kept beside it
        assert profiler.summary["idle_ms"] == 1.0 and profiler.summary["idle_ms_traced"] == 5.0
        assert profiler.summary["span_ms"] == 10.0 and profiler.summary["timing_steps"] == 1
    else:
        assert "idle_ms_traced" not in profiler.summary


class ProfileStep:
    """A Lightning callback recording optimizer step `step` (all its micro-batches) with torch's CPU
    profiler: CPU-side events only, no kernels, so the test reads the kinds the launching events give."""

    def __init__(self, step: int) -> None:
        import lightning as L
        import torch

        outer = self

        class Callback(L.Callback):
            def on_train_batch_start(self, trainer, *_):
                if trainer.global_step == step and outer.prof is None:
                    outer.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    outer.prof.__enter__()

            def on_train_batch_end(self, trainer, *_):
                if outer.prof is not None and not outer.done and trainer.global_step > step:
                    outer.prof.__exit__(None, None, None)
                    outer.done = True

        self.prof, self.done, self.callback = None, False, Callback()


@pytest.fixture(scope="module")
def tiny_step_kinds(tmp_path_factory):
    """(op name, kind, context) of every CPU-side event of the tiny model's first optimizer step
    (LoRA on q/k/v/o, sdpa, 2 micro-batches, gradient clipping at 1.0), trained by ta_train.train.fit."""
    from omegaconf import OmegaConf

    from bench.step_profile import profile_events
    from tests.conftest import FAST, compose
    from ta_train.train import fit

    run = tmp_path_factory.mktemp("profile") / "run"
    cfg, _ = compose([*FAST, f"run_dir={run}", "trainer.max_steps=1", "trainer.limit_val_batches=0",
                      "trainer.gradient_clip_val=1.0", "data.max_seq_len=64"])
    recorder = ProfileStep(0)
    fit(OmegaConf.to_object(cfg), [recorder.callback])
    assert recorder.done
    ops, kernels = profile_events(recorder.prof)
    assert kernels == []  # CPU: no device events
    kinds = launch_kinds(ops)
    return [(op.name, kinds[op.corr][0], ctx) for op, ctx in zip(ops, contexts(ops))]


def kinds_of(rows, name: str, where: str | None = None) -> dict[str, int]:
    """Kind -> count of the events named `name` (with `where` somewhere in their context)."""
    out: dict[str, int] = defaultdict(int)
    for op, kind, ctx in rows:
        if op == name and (where is None or where in ctx):
            out[kind] += 1
    return dict(out)


def test_a_real_training_step_puts_each_operator_in_its_kind(tiny_step_kinds):
    rows = tiny_step_kinds
    # the total gradient norm (torch's foreach norm) and the clip's foreach product
    assert kinds_of(rows, "aten::_foreach_norm") == {"grad_norm": 1}
    assert kinds_of(rows, "aten::_foreach_mul_") == {"grad_norm": 1}
    # AdamW's update (CPU: one tensor at a time) inside Optimizer.step, after the closure
    for name in ("aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::sqrt"):
        assert kinds_of(rows, name) == {"optimizer": 16}, name  # 2 layers x 4 projections x A, B
    # attention: the SDPA operator, its CPU kernel op and its backward
    assert set(kinds_of(rows, "aten::scaled_dot_product_attention")) == {"attention"}
    assert kinds_of(rows, "aten::_scaled_dot_product_flash_attention_for_cpu_backward") == {"attention": 4}
    # every matrix product, forward and backward, the lm_head's included
    mm = kinds_of(rows, "aten::mm")
    assert set(mm) == {"gemm"} and kinds_of(rows, "aten::mm", BACKWARD) and kinds_of(rows, "aten::mm", "aten::linear")
    # the loss under ta.loss: log-softmax / NLL, their backward, token accuracy's argmax
    for name in ("aten::_log_softmax", "aten::nll_loss_forward", "aten::_log_softmax_backward_data",
                 "aten::nll_loss_backward", "aten::argmax"):
        assert set(kinds_of(rows, name)) == {"loss"}, name
    assert kinds_of(rows, "aten::index_select", "ta.loss") == {"loss": 4}  # trained rows and their targets
    assert set(kinds_of(rows, "aten::index_select", "aten::embedding")) == {"elementwise"}
    # RMSNorm, rotary and SiLU in the forward and backward of the layers
    for name in ("aten::rsqrt", "aten::silu", "aten::silu_backward", "aten::cos", "aten::sin"):
        assert set(kinds_of(rows, name)) == {"elementwise"}, name
    assert set(kinds_of(rows, "aten::_to_copy", "ta.training_step")) <= {"copy", "loss"}
    # backward work run inside Optimizer.step (Lightning's closure) is never the optimizer's
    assert not [r for r in rows if r[1] == "optimizer" and BACKWARD in r[2]]


def test_the_fused_loss_chunk_products_are_gemm_and_the_rest_loss():
    """A real CPU profile of ta_train.fused_ce's forward and backward: the chunk matmuls count as
    gemm, its other work and its backward as loss."""
    import torch

    from bench.step_profile import profile_events
    from ta_train.fused_ce import fused_linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(24, 16, generator=gen, requires_grad=True)
    weight = torch.randn(40, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (24,), generator=gen)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, _, _ = fused_linear_cross_entropy(hidden, weight, targets, chunk_rows=8)
        loss.backward()
    ops, _ = profile_events(prof)
    kinds = launch_kinds(ops)
    rows = [(op.name, kinds[op.corr][0], ctx) for op, ctx in zip(ops, contexts(ops))]
    assert set(kinds_of(rows, "aten::mm")) == set(kinds_of(rows, "aten::mm", "ta.loss")) == {"gemm"}
    backward = [kind for _, kind, ctx in rows if BACKWARD in ctx and "ta.loss" in ctx and ctx[0].startswith("aten::")]
    assert backward and set(backward) <= {"loss", "gemm", "copy"} and "loss" in backward
    assert "loss" in {kind for name, kind, _ in rows if name.startswith("aten::") and name != "aten::mm"}
