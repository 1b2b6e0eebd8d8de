#!/usr/bin/env bash
# Serve an export with vLLM (where vLLM is installed: a CUDA box, `pip install vllm`) through
# `python -m ta_export serve engine=vllm`, wait until it answers, ask one chat question with the
# OpenAI-compatible API, report start-up seconds and generation tokens/s, then stop the server.
#
#   bench/vllm_serve.sh RUN_DIR HW [PORT] [OUTPUT] [MODE]
#     RUN_DIR  a ta_train run dir (exported with formats=[merged] first when OUTPUT has no export)
#     HW       a conf/hw profile (a100, h200, 2xa6000, 24g, t4)
#     MODE     merged (default: the export's merged/ folder) or lora (base + the run's adapter, --enable-lora)
set -euo pipefail
RUN_DIR=${1:?usage: bench/vllm_serve.sh RUN_DIR HW [PORT] [OUTPUT] [MODE]}
HW=${2:?usage: bench/vllm_serve.sh RUN_DIR HW [PORT] [OUTPUT] [MODE]}
PORT=${3:-8011}
OUTPUT=${4:-exports}
MODE=${5:-merged}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
"$PY" -c "import vllm" 2>/dev/null || { echo "vLLM is not installed here (pip install vllm on a CUDA box)"; exit 2; }

if [ "$MODE" = lora ]; then
  SOURCE=(run="$RUN_DIR" adapter=true)
else
  [ -L "$OUTPUT/current" ] || "$PY" -m ta_export run="$RUN_DIR" formats=[merged] output="$OUTPUT"
  SOURCE=()
fi
"$PY" -m ta_export serve engine=vllm hw="$HW" port="$PORT" output="$OUTPUT" name=ta-bench "${SOURCE[@]}" dry_run=true
start=$(date +%s.%N)
"$PY" -m ta_export serve engine=vllm hw="$HW" port="$PORT" output="$OUTPUT" name=ta-bench "${SOURCE[@]}" > /tmp/ta_vllm_serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null; do
  kill -0 $server 2>/dev/null || { echo "server exited:"; tail -40 /tmp/ta_vllm_serve.log; exit 1; }
  sleep 2
done
ready=$(date +%s.%N)
"$PY" - "$PORT" <<'PYEOF'
import json, sys, time, urllib.request
port = sys.argv[1]
body = {"model": "ta-bench", "temperature": 0, "max_tokens": 128,
        "messages": [{"role": "user", "content": "What does the learning rate control in gradient descent?"}]}
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
t0 = time.perf_counter()
out = json.load(urllib.request.urlopen(req, timeout=300))
dt = time.perf_counter() - t0
n = out["usage"]["completion_tokens"]
print("answer:", out["choices"][0]["message"]["content"][:300].replace("\n", " "))
print(f"completion_tokens={n} seconds={dt:.2f} tokens_per_s={n / dt:.1f}")
PYEOF
echo "startup_seconds=$(echo "$ready - $start" | bc)"
