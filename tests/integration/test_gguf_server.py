"""Round trip through llama.cpp's OpenAI-compatible server: the exported tiny model answers as HF does."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.gguf_models import trained_tiny  # noqa: F401 (fixture)
from tests.integration.test_gguf_llamacpp import hf_greedy
from tests.llamacpp_server import llama_cpp_server
from ta_export.gguf import export_gguf

_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "openai")
            if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"llama.cpp server round trip needs {', '.join(_MISSING)} (pip install '.[export]')"),
]


@pytest.fixture
def served(trained_tiny, tmp_path):
    merged, tok, _ = trained_tiny
    (gguf,) = export_gguf(merged, tmp_path / "gguf", ["f32"], progress=False)
    with llama_cpp_server(gguf, "ta-tiny", tmp_path / "server.log") as base:
        yield base, merged, tok


def test_openai_client_answer_equals_hf_greedy(served):
    from openai import OpenAI

    url, merged, tok = served
    messages = [{"role": "user", "content": "What does a loss function measure?"}]
    client = OpenAI(base_url=url, api_key="unused")
    reply = client.chat.completions.create(model="ta-tiny", messages=messages, temperature=0.0, max_tokens=24,
                                           extra_body={"top_k": 1, "repeat_penalty": 1.0})
    expected = hf_greedy(Path(merged), tok, messages, 24)
    assert expected.strip()
    assert reply.choices[0].message.content.strip() == expected.strip()
