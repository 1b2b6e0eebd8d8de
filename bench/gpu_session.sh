#!/usr/bin/env bash
# One short GPU session (reference card: H200; fits about 10 minutes of device time):
#   bash bench/gpu_session.sh [OUT_DIR]
# 1. the CUDA tests that have not run on a GPU yet, those phase 2 relies on first (tests/gpu: cuDNN
#    attention first, the step profile's kernel-to-operator links, host syncs of the training step,
#    fused cross-entropy in bf16, ZeRO-3 LoRA and fused AdamW under ZeRO through Lightning), then the rest;
# 2. the throughput cases that decide issue 6's MFU goal (bench/gpu_check.py): the bf16 full
#    fine-tune baseline, cuDNN attention first, fused AdamW, all the fast paths together (and
#    compiled); LoRA for the memory plan.
# Each phase has its own time limit (PHASE1_S, PHASE2_S seconds), so one hung case cannot eat the
# session. Results: OUT_DIR/pytest.txt, OUT_DIR/gpu_check.json and the table on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/ta-gpu-session}}
PY=${PYTHON:-python3}
PHASE1_S=${PHASE1_S:-200}
PHASE2_S=${PHASE2_S:-420}
CASES=${CASES:-kernels,full_bf16,full_bf16_cudnn,full_bf16_fast,full_bf16_fused_adamw,full_bf16_fast_compile,lora_bf16}
mkdir -p "$OUT"
start=$(date +%s)

echo "== phase 1: pytest tests/gpu (limit ${PHASE1_S}s)"
# pytest keeps the order of file arguments only without their folder among the arguments (with it,
# it collects the folder alphabetically): the named files first, then the folder without them.
FIRST="tests/gpu/test_sdpa_backends_cuda.py tests/gpu/test_step_profile_cuda.py tests/gpu/test_host_sync_cuda.py
  tests/gpu/test_fused_ce_cuda.py tests/gpu/test_deepspeed_gpu.py"
IGNORE=$(for f in $FIRST; do printf -- '--ignore=%s ' "$f"; done)
# shellcheck disable=SC2086
timeout "$PHASE1_S" bash -c "$PY -m pytest -m gpu -q -p no:cacheprovider $(echo $FIRST); a=\$?;
    $PY -m pytest -m gpu -q -p no:cacheprovider $IGNORE tests/gpu; b=\$?; exit \$(( a > b ? a : b ))" \
    2>&1 | tee "$OUT/pytest.txt" | tail -25
echo "phase 1 rc=${PIPESTATUS[0]} after $(( $(date +%s) - start ))s"

echo "== phase 2: bench/gpu_check.py --cases $CASES (limit ${PHASE2_S}s)"
timeout "$PHASE2_S" bash bench/gpu_check.sh --cases "$CASES" --json "$OUT/gpu_check.json"
echo "phase 2 rc=$? after $(( $(date +%s) - start ))s"
