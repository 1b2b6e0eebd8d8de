"""Serving commands: vLLM sized from hw profiles (KV-cache arithmetic vs a naive count), llama.cpp flags."""
from __future__ import annotations

import pytest

from ta_export.runs import ExportError
from ta_export.serve import (LlamaCppRequest, ModelShape, ServeHardware, VllmRequest, llamacpp_command, load_hw, max_num_seqs,
                             printable, tensor_parallel_size, vllm_command)

LLAMA3_8B = ModelShape(n_params=8_030_261_248, n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8)


def naive_seqs(hw: ServeHardware, shape: ModelShape, max_len: int, tp: int) -> int:
    """Add sequences one at a time until the next one's KV cache no longer fits."""
    bytes_per = 2 if hw.dtype != "float32" else 4
    free = tp * (hw.memory_gib * 0.9 - 1.0) * 2**30 - shape.n_params * bytes_per
    per_seq = max_len * 2 * shape.n_layers * shape.n_kv_heads * (shape.hidden_size // shape.n_heads) * bytes_per
    n = 0
    while (n + 1) * per_seq <= free and n < 256:
        n += 1
    return max(n, 1)


@pytest.mark.parametrize("hw_name", ["a100", "2xa6000", "24g", "t4", "h200"])
def test_max_num_seqs_matches_a_naive_count(hw_name):
    hw = load_hw(hw_name)
    tp = tensor_parallel_size(hw.gpus, LLAMA3_8B)
    if hw_name == "t4":
        with pytest.raises(ExportError, match="do not fit"):
            max_num_seqs(hw, LLAMA3_8B, 4096, tp)
        return
    for max_len in (512, 4096, 32768):
        assert max_num_seqs(hw, LLAMA3_8B, max_len, tp) == naive_seqs(hw, LLAMA3_8B, max_len, tp)


def test_hw_profiles_give_gpu_count_and_precision_dtype():
    assert load_hw("2xa6000").gpus == 2 and load_hw("2xa6000").dtype == "bfloat16"
    assert load_hw("t4").dtype == "float16"  # T4 has no bf16
    with pytest.raises(ExportError, match="hw=nope: no .*known profiles: .*a100"):
        load_hw("nope")


def test_tensor_parallel_size_divides_the_heads():
    assert tensor_parallel_size(2, LLAMA3_8B) == 2
    assert tensor_parallel_size(8, LLAMA3_8B) == 8
    assert tensor_parallel_size(4, ModelShape(1, 1, 576, 9, 3)) == 3  # SmolLM2-135M: 9 heads, 3 KV heads


def test_vllm_command_has_every_flag():
    hw = load_hw("2xa6000")
    cmd = vllm_command(VllmRequest(model="/m", served_name="ta-llama3", max_model_len=4096, shape=LLAMA3_8B, hw=hw, api_key="k"))
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert flags["--model"] == "/m" and flags["--served-model-name"] == "ta-llama3" and flags["--host"] == "127.0.0.1"
    assert flags["--tensor-parallel-size"] == "2" and flags["--max-model-len"] == "4096" and flags["--dtype"] == "bfloat16"
    assert flags["--gpu-memory-utilization"] == "0.9" and flags["--swap-space"] == "4" and flags["--api-key"] == "k"
    assert flags["--max-num-seqs"] == str(max_num_seqs(hw, LLAMA3_8B, 4096, 2))
    lora = vllm_command(VllmRequest(model="/base", served_name="ta", max_model_len=2048, shape=LLAMA3_8B, hw=hw, adapter="/run/adapter", lora_rank=64))
    assert lora[lora.index("--enable-lora") + 1 :] == ["--lora-modules", "ta=/run/adapter", "--max-lora-rank", "64"]
    assert lora[lora.index("--served-model-name") + 1] == "ta-base"
    assert "'***'" in printable(cmd, "k") and " k " not in printable(cmd, "k")


def test_llamacpp_command(tmp_path):
    gguf = tmp_path / "model-q4_k_m.gguf"
    with pytest.raises(ExportError, match="no such file"):
        llamacpp_command(LlamaCppRequest(gguf=str(gguf), served_name="ta", n_ctx=384))
    gguf.write_bytes(b"GGUF")
    cmd = llamacpp_command(LlamaCppRequest(gguf=str(gguf), served_name="ta", n_ctx=384, port=8123, api_key="k"))
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and flags["--model"] == str(gguf) and flags["--host"] == "127.0.0.1"
    assert flags["--port"] == "8123" and flags["--n_ctx"] == "384" and flags["--api_key"] == "k" and flags["--model_alias"] == "ta"
    assert "--chat_format" not in cmd  # the GGUF's embedded chat template (training's) is used
