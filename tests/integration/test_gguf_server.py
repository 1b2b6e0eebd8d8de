"""Round trip through llama.cpp's OpenAI-compatible server: the exported tiny model answers as HF does."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gguf_models import trained_tiny  # noqa: F401 (fixture)
from tests.integration.test_gguf_llamacpp import hf_greedy
from ta_export.gguf import export_gguf

_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "openai")
            if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"llama.cpp server round trip needs {', '.join(_MISSING)} (pip install '.[export]')"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with code {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"llama_cpp.server did not answer on {url} within {timeout_s:.0f} s")


@pytest.fixture
def served(trained_tiny, tmp_path):
    merged, tok, _ = trained_tiny
    (gguf,) = export_gguf(merged, tmp_path / "gguf", ["f32"], progress=False)
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "512", "--n_threads", "2", "--model_alias", "ta-tiny"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        yield url, merged, tok
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openai_client_answer_equals_hf_greedy(served):
    from openai import OpenAI

    url, merged, tok = served
    messages = [{"role": "user", "content": "What does a loss function measure?"}]
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    reply = client.chat.completions.create(model="ta-tiny", messages=messages, temperature=0.0, max_tokens=24,
                                           extra_body={"top_k": 1, "repeat_penalty": 1.0})
    expected = hf_greedy(Path(merged), tok, messages, 24)
    assert expected.strip()
    assert reply.choices[0].message.content.strip() == expected.strip()
