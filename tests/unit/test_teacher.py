"""ta_data.teacher: cache, retries, rate limit, reply parsing and grounding, against a real local server."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from ta_data.records import Reject
from ta_data.teacher import (
    TeacherClient,
    TeacherConfig,
    TeacherError,
    build_messages,
    cite_timestamp,
    grounding_score,
    parse_reply,
    teacher_synthesize,
)
from ta_data.teacher_client import TokenBucket, request_key, retry_after_seconds
from tests.conftest import REPO
from ta_data.chunk import Chunk
from tests.teacher_server import chat_body, start_server


NOTES = Chunk(
    "notes_en.md#3",
    "The learning rate controls how far each gradient descent step moves the weights. "
    "If it is too small, the loss falls very slowly; if it is too large, the updates overshoot the minimum.",
    "notes_en.md", "Gradient descent > Learning rate", None, None, "en", 40,
)
LECTURE = Chunk(
    "lecture_02.srt#1",
    "梯度告诉我们往哪个方向走，学习率决定每一步走多远。如果学习率太小，损失会下降，但是非常慢。",
    "lecture_02.srt", None, 615.3, 652.7, "zh", 30,
)


@pytest.fixture
def server():
    state, httpd = start_server()
    yield state
    httpd.shutdown()
    httpd.server_close()


def make_client(server, tmp_path, **kw) -> tuple[TeacherClient, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("backoff_s", 0.5)
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    config = TeacherConfig(base_url=server.url, model="teacher", **kw)
    return TeacherClient(config, sleep=sleeps.append), sleeps


MESSAGES = [{"role": "user", "content": "hello"}]


def test_cache_hit_makes_no_http_call_and_survives_a_new_client(server, tmp_path):
    client, _ = make_client(server, tmp_path)
    server.ok("first")
    assert client.chat(MESSAGES) == "first"
    assert client.chat(MESSAGES) == "first"
    assert len(server.received) == 1 and client.stats.cache_hits == 1 and client.stats.http_calls == 1

    body = client.request_body(MESSAGES)
    path = client.cache_path(request_key(body))
    assert path.name == request_key(body) + ".json"
    assert json.loads(path.read_text("utf-8"))["request"] == body
    assert not list(path.parent.glob("*.tmp")), "the atomic write left a temporary file"

    again, _ = make_client(server, tmp_path)
    assert again.chat(MESSAGES) == "first" and len(server.received) == 1

    other = [{"role": "user", "content": "hello again"}]  # a different body is a different key
    server.ok("second")
    assert again.chat(other) == "second" and len(server.received) == 2


def test_corrupt_cache_entry_is_asked_again_and_replaced(server, tmp_path):
    client, _ = make_client(server, tmp_path)
    server.ok("first")
    client.chat(MESSAGES)
    path = client.cache_path(request_key(client.request_body(MESSAGES)))
    path.write_text("{half an entry", encoding="utf-8")
    server.ok("fresh")
    assert client.chat(MESSAGES) == "fresh" and len(server.received) == 2
    assert json.loads(path.read_text("utf-8"))["response"]["choices"][0]["message"]["content"] == "fresh"


def test_request_body_and_headers(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TA_TEST_TEACHER_KEY", "sk-local")
    client, _ = make_client(server, tmp_path, api_key_env="TA_TEST_TEACHER_KEY", max_tokens=64, seed=7)
    server.ok("x")
    client.chat(MESSAGES)
    got = server.received[0]
    assert got.path == "/v1/chat/completions"
    assert got.headers["Authorization"] == "Bearer sk-local"
    assert got.body == {
        "model": "teacher", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 64, "seed": 7,
        "response_format": {"type": "json_object"},
    }
    monkeypatch.delenv("TA_TEST_TEACHER_KEY")
    client2, _ = make_client(server, tmp_path, api_key_env="TA_TEST_TEACHER_KEY", cache_dir=None, json_mode=False)
    server.ok("y")
    client2.chat(MESSAGES)
    assert "Authorization" not in server.received[1].headers
    assert "response_format" not in server.received[1].body


def test_retries_429_and_500_honouring_retry_after(server, tmp_path):
    client, sleeps = make_client(server, tmp_path, backoff_s=0.5)
    server.script(
        (429, {"Retry-After": "3"}, {"error": "slow down"}),
        (500, {}, {"error": "boom"}),
        (200, {}, chat_body("finally")),
    )
    assert client.chat(MESSAGES) == "finally"
    assert len(server.received) == 3
    assert sleeps == [3.0, 1.0]  # Retry-After, then backoff 0.5 * 2**1
    assert client.stats.retries == 2 and client.stats.statuses == {429: 1, 500: 1, 200: 1}


def test_gives_up_after_max_retries_naming_url_and_status(server, tmp_path):
    client, sleeps = make_client(server, tmp_path, max_retries=2, backoff_s=1.0, max_backoff_s=1.5)
    server.script(*[(503, {}, {"error": "overloaded"})] * 3)
    with pytest.raises(TeacherError) as info:
        client.chat(MESSAGES)
    message = str(info.value)
    assert server.url + "/chat/completions" in message and "503" in message and "3 attempts" in message
    assert "overloaded" in message and info.value.status == 503
    assert sleeps == [1.0, 1.5]  # 1 * 2**0, then 1 * 2**1 capped at max_backoff_s
    assert client.cache_path(request_key(client.request_body(MESSAGES))).exists() is False


def test_client_error_is_not_retried(server, tmp_path):
    client, sleeps = make_client(server, tmp_path)
    server.script((401, {}, {"error": {"message": "invalid api key"}}))
    with pytest.raises(TeacherError, match=r"HTTP 401.*invalid api key") as info:
        client.chat(MESSAGES)
    assert info.value.status == 401 and len(server.received) == 1 and sleeps == []


def test_malformed_200_reply_is_a_clear_error(server, tmp_path):
    client, _ = make_client(server, tmp_path)
    server.script((200, {}, b"<html>proxy page</html>"))
    with pytest.raises(TeacherError, match="not JSON"):
        client.chat(MESSAGES)
    server.script((200, {}, {"choices": []}))
    with pytest.raises(TeacherError, match=r"no choices\[0\]\.message\.content"):
        client.chat(MESSAGES)


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    config = TeacherConfig(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_s=0.25, cache_dir=None)
    with pytest.raises(TeacherError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions unreachable") as info:
        TeacherClient(config, sleep=sleeps.append).chat(MESSAGES)
    assert info.value.status is None and sleeps == [0.25, 0.5]


def test_retry_after_header_forms():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    # An HTTP date 30 s after "now".
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", now=784111747.0) == pytest.approx(30.0)


class FakeClock:
    """A clock that moves only when slept on, so waits are exact."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_waits_exactly_for_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.5])
    assert clock.now == pytest.approx(102.0)  # 5 requests at 2/s from a full bucket of 1

    clock = FakeClock()
    bucket = TokenBucket(rate=4.0, burst=3, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(5)] == pytest.approx([0, 0, 0, 0.25, 0.25])
    clock.now += 10.0  # idle: refills to the burst, not beyond
    assert [bucket.acquire() for _ in range(4)] == pytest.approx([0, 0, 0, 0.25])


def test_client_rate_limit_spends_tokens_only_on_http_calls(server, tmp_path):
    # 0.5/s: the injected sleep returns at once, so each later call owes up to 2 s minus its round trip.
    client, sleeps = make_client(server, tmp_path, rate_limit_per_s=0.5)
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    for i in range(3):
        server.ok(f"a{i}")
    assert [client.chat(p) for p in prompts] == ["a0", "a1", "a2"]
    assert len(sleeps) == 2 and all(1.0 < s <= 2.0 for s in sleeps)
    assert [client.chat(p) for p in prompts] == ["a0", "a1", "a2"]  # cache hits: no wait
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"question": "What is w?", "answer": "The weight."}', ("What is w?", "The weight.")),
        ('```json\n{"Question": "Q1", "Answer": "A1"}\n```', ("Q1", "A1")),
        ('Sure! Here it is: {"question": "Q2", "answer": ["p1", "p2"]} Hope it helps.', ("Q2", "- p1\n- p2")),
        ('{"note": 1} {"问题": "学习率是什么？", "答案": "步长。"}', ("学习率是什么？", "步长。")),
        ("Q: Why scale features?\nA: So that one learning rate suits all.\nIt converges faster.",
         ("Why scale features?", "So that one learning rate suits all.\nIt converges faster.")),
        ("**Question:** Q3\n**Answer:** A3", ("Q3", "A3")),
        ("问：什么是损失？\n答：预测与真实值的差距。", ("什么是损失？", "预测与真实值的差距。")),
    ],
)
def test_parse_reply_forms(reply, expected):
    assert parse_reply(reply) == expected


@pytest.mark.parametrize("reply", ["", "I cannot help with that.", '{"question": "only a question"}', "Q: no answer"])
def test_parse_reply_failures_say_what_was_missing(reply):
    with pytest.raises(ValueError, match="no question and answer"):
        parse_reply(reply)


def naive_grounding(answer: str, context: str, n: int) -> float:
    """Reference: positions of the answer whose n-gram appears in the context, counted once each."""
    seen, hits = set(), 0
    for i in range(len(answer) - n + 1):
        gram = answer[i : i + n]
        if gram in seen:
            continue
        seen.add(gram)
        hits += gram in context
    return hits / len(seen) if seen else 0.0


@pytest.mark.parametrize(
    "answer, context, n",
    [
        ("abcdef", "xxabcdyy", 3),
        ("the rate sets the step", "the learning rate sets the step size", 4),
        ("aaaa", "aaa", 2),
        ("完全无关的话", "学习率决定步长", 2),
    ],
)
def test_grounding_score_matches_naive_reference(answer, context, n):
    lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in answer) else "en"
    assert grounding_score(answer, context, n, lang) == pytest.approx(naive_grounding(answer, context, n))


def test_grounding_score_normalizes_case_width_punctuation_and_stamps():
    context = NOTES.text
    assert grounding_score("THE LEARNING RATE controls how far each gradient descent step moves!", context, 4) == 1.0
    assert grounding_score("学习率决定每一步走多远。[00:10:15]", LECTURE.text, 2, "zh") == 1.0
    assert grounding_score("ＡＢＣ", "abc", 2) == 1.0  # full-width folded by NFKC
    assert grounding_score("Paris is the capital of France.", context, 4) < 0.3
    assert grounding_score("w", "w = w - lr * g", 4) == 1.0  # shorter than n: contained
    assert grounding_score("", context, 4) == 0.0


def test_cite_timestamp_appends_keeps_and_drops():
    assert cite_timestamp("Step size.", 615.3, 652.7, "en") == "Step size. [00:10:15]"
    assert cite_timestamp("步长。", 615.3, 652.7, "zh") == "步长。[00:10:15]"
    assert cite_timestamp("As said at [00:10:30], yes. [00:10:15]", 615.3, 652.7, "en") == (
        "As said at [00:10:30], yes. [00:10:15]"
    )
    assert cite_timestamp("Wrong [01:00:00] stamp.", 615.3, 652.7, "en") == "Wrong stamp. [00:10:15]"


def test_prompts_follow_the_chunk_language_and_cite_the_start():
    en = build_messages(NOTES, "answer")
    assert "Reply in English" in en[1]["content"] and "notes_en.md > Gradient descent > Learning rate" in en[1]["content"]
    assert "[" not in en[1]["content"].split(">>>")[1]  # no transcript instruction for notes
    zh = build_messages(LECTURE, "quiz")
    assert "只用中文回复" in zh[1]["content"] and "[00:10:15]" in zh[1]["content"] and "测验题" in zh[1]["content"]
    with pytest.raises(ValueError, match="kind"):
        build_messages(NOTES, "poem")


def test_teacher_synthesize_records_and_rejects(server, tmp_path):
    config = TeacherConfig(base_url=server.url, model="teacher", cache_dir=str(tmp_path / "c"), min_grounding=0.5)
    server.ok(json.dumps({"question": "What does the learning rate control?",
                          "answer": "It controls how far each gradient descent step moves the weights."}))
    server.ok(json.dumps({"question": "Capital?", "answer": "Paris is the capital of France."}))
    server.ok("Q: 学习率决定什么？\nA: 学习率决定每一步走多远。")
    server.script((400, {}, {"error": "context length exceeded"}))
    rejects: list[Reject] = []
    records = list(teacher_synthesize([NOTES, LECTURE], config, kinds=("answer", "summary"), rejects=rejects))

    assert len(records) == 2
    first, second = records
    assert first == {
        "instruction": "What does the learning rate control?",
        "input": NOTES.text,
        "output": "It controls how far each gradient descent step moves the weights.",
        "meta": {"source": "notes_en.md", "timestamp": None, "kind": "answer", "chunk": "notes_en.md#3",
                 "grounding": first["meta"]["grounding"]},
    }
    assert second["output"] == "学习率决定每一步走多远。[00:10:15]"
    assert second["meta"]["timestamp"] == "00:10:15" and second["meta"]["kind"] == "answer"

    assert [(r.file, r.line) for r in rejects] == [("notes_en.md", None), ("lecture_02.srt", None)]
    assert rejects[0].reason.startswith("answer not grounded in the chunk: 4-gram overlap")
    assert rejects[0].record["kind"] == "summary" and rejects[0].record["answer"].startswith("Paris")
    assert "HTTP 400" in rejects[1].reason and "context length exceeded" in rejects[1].reason
    assert json.loads(rejects[0].to_json())["file"] == "notes_en.md"

    # A re-run is answered from the cache: same records, no new request.
    again = list(teacher_synthesize([NOTES], config, kinds=("answer",)))
    assert again == [first] and len(server.received) == 4


def test_teacher_synthesize_unparseable_reply_and_dict_chunks(server, tmp_path):
    config = TeacherConfig(base_url=server.url, model="teacher", cache_dir=None)
    server.ok("I am not sure what you mean.")
    rejects: list[Reject] = []
    chunk = {k: getattr(NOTES, k) for k in ("id", "text", "source", "chapter", "start", "end", "lang", "n_tokens")}
    assert list(teacher_synthesize([chunk], config, kinds=("quiz",), rejects=rejects)) == []
    assert rejects[0].reason.startswith("teacher reply unparseable") and rejects[0].record["reply"].startswith("I am")
    with pytest.raises(TypeError, match="has no field 'start'"):
        list(teacher_synthesize([{"id": "x", "text": "t", "source": "s"}], config))
    with pytest.raises(ValueError, match="poem"):
        list(teacher_synthesize([chunk], config, kinds=("poem",)))


def test_server_failure_stops_the_run(server, tmp_path):
    config = TeacherConfig(base_url=server.url, model="teacher", cache_dir=None, max_retries=0)
    server.script((404, {}, {"error": "model 'teacher' not found"}))
    with pytest.raises(TeacherError, match="404.*not found"):
        list(teacher_synthesize([NOTES], config, kinds=("answer",)))


@pytest.mark.parametrize(
    "kw, match",
    [({"base_url": "127.0.0.1:8000"}, "http"), ({"model": ""}, "model"), ({"rate_limit_per_s": 0}, "rate_limit"),
     ({"min_grounding": 1.5}, "min_grounding")],
)
def test_config_rejects_bad_values(kw, match):
    args = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", **kw}
    with pytest.raises(ValueError, match=match):
        TeacherConfig(**args)


def test_teacher_imports_only_the_standard_library():
    code = (
        "import sys, ta_data.teacher\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'lightning', 'openai',"
        " 'numpy', 'requests', 'httpx', 'ta_train', 'ta_eval', 'ta_export', 'ta_rag'})\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
