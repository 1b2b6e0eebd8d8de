#!/usr/bin/env bash
# The CUDA check of ta_train on one GPU (reference card: H200; about 5-8 minutes):
#   bash bench/gpu_check.sh [--cases kernels,full_bf16,...] [--json results.json]
# bf16 full fine-tune and LoRA, LoRA + gradient checkpointing, QLoRA (bitsandbytes nf4),
# FlashAttention-2 (if flash-attn is installed), DeepSpeed ZeRO-2 on one GPU: tokens/s, TFLOP/s,
# MFU against hw.peak_tflops, and peak memory against the plan, for a random-init 1.07B-parameter
# Llama-shaped model. Prints one JSON line per case and a markdown table. PYTHON picks the
# interpreter; GPU_CHECK_DIR the scratch folder (default /tmp/ta-gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
exec "$PY" bench/gpu_check.py all "$@"
