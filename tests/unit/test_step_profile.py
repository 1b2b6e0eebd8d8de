"""bench/step_profile.py: kernel kinds from real CUDA kernel names, and the busy/idle arithmetic of
a profiled step against a naive per-microsecond count."""
from __future__ import annotations

import random

import pytest

from bench.step_profile import kernel_kind, summarize, union_length


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
    ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopB_TNN", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>", "gemm"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>", "loss"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::NormTwoOps>>", "reduction"),
    ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0", "compiled"),
    ("triton_poi_fused_mul_silu_1", "compiled"),
    ("Memcpy HtoD (Pinned -> Device)", "copy"),
    ("some_new_kernel_name", "other"),
])
def test_kernel_names_fall_in_their_kind(name, kind):
    assert kernel_kind(name) == kind


def test_union_length_counts_overlaps_once_against_a_naive_count():
    rng = random.Random(0)
    for _ in range(50):
        intervals = [(s, s + rng.randint(1, 30)) for s in (rng.randint(0, 200) for _ in range(rng.randint(0, 12)))]
        covered = {t for s, e in intervals for t in range(s, e)}  # unit cells [t, t + 1)
        assert union_length(intervals) == len(covered)


def test_a_profiled_step_splits_into_kinds_busy_and_idle():
    kernels = [  # two steps of 1 ms each, in microseconds; the device idles 200 us in each
        ("sm90_xmma_gemm_a", 0, 500), ("flash_fwd", 500, 700), ("multi_tensor_apply_kernel", 900, 1000),
        ("sm90_xmma_gemm_a", 1000, 1500), ("flash_fwd", 1500, 1700), ("multi_tensor_apply_kernel", 1900, 2000),
    ]
    out = summarize(kernels, steps=2)
    assert (out["span_ms"], out["busy_ms"], out["idle_ms"]) == (1.0, 0.8, 0.2)
    assert out["kinds_ms"] == {"gemm": 0.5, "attention": 0.2, "optimizer": 0.1}
    assert out["top"][0] == {"name": "sm90_xmma_gemm_a", "kind": "gemm", "ms": 0.5}
    assert summarize([], steps=2) == {"steps": 2, "kernels": 0}


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


def test_the_profiler_divides_by_the_steps_that_ran(monkeypatch):
    """A run that ends (max_steps, epoch end) inside the profiled steps: per-step figures over the
    steps profiled, not PROFILE_STEPS. CUDA is not here: its availability, synchronize and the CUDA
    profiler are stubbed (the stub records no kernel)."""
    from types import SimpleNamespace

    import torch

    from bench.step_profile import PROFILE_STEPS, make_profiler

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    class NoKernels:
        def __init__(self, **_) -> None: ...
        def __enter__(self): return self
        def __exit__(self, *_) -> None: ...
        def events(self) -> list: return []

    monkeypatch.setattr(torch.profiler, "profile", NoKernels)
    seen: list[int] = []
    monkeypatch.setattr("bench.step_profile.summarize", lambda kernels, steps: seen.append(steps) or {"steps": steps})
    for ran in (PROFILE_STEPS, 1):
        profiler, trainer = make_profiler(start_step=5), SimpleNamespace(global_step=4)
        for _ in range(8):
            profiler.on_train_batch_start(trainer, None, None, 0)
            trainer.global_step += 1
            profiler.on_train_batch_end(trainer, None, None, None, 0)
            if trainer.global_step == 5 + ran:
                break
        profiler.on_train_end(trainer, None)
        assert profiler.summary == {"steps": ran} and profiler.prof is None
    assert seen == [PROFILE_STEPS, 1]
