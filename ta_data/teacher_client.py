"""An OpenAI-compatible chat-completions client for the ``teacher`` synthesis back-end.

Standard library only (urllib, json, hashlib), so it runs on a data box without the ``openai``
package. It talks to anything that serves ``POST {base_url}/chat/completions``: vLLM
(``http://127.0.0.1:8000/v1``), Ollama (``http://127.0.0.1:11434/v1``), ``llama_cpp.server``
(``http://127.0.0.1:8000/v1``) or a hosted API.

- **Cache**: every answered request is stored under ``cache_dir`` as ``<sha256 of the request
  body>.json``; a hit makes no HTTP call, so a re-run of the pipeline on unchanged chunks costs
  nothing and gives the same output. Writes go to a temporary file in the same folder and are moved
  into place with one ``os.replace``, so a crash never leaves half an entry.
- **Retries**: 429, 5xx, refused/reset connections and time-outs are retried up to ``max_retries``
  times, waiting ``Retry-After`` when the server sends it, else ``backoff_s * 2**attempt`` (capped
  at ``max_backoff_s``). Other statuses fail at once with the URL, status and the server's words.
- **Rate limit**: a token bucket of ``rate_limit_per_s`` requests per second (bursts of
  ``burst``), shared by all threads using one client; cache hits do not spend tokens.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try: time-outs, rate limits and server-side failures."""


@dataclass
class TeacherConfig:
    """Where the teacher model is served and how politely to ask it.

    ``base_url`` ends before ``/chat/completions`` (``http://127.0.0.1:8000/v1``). The API key is
    read from the environment variable ``api_key_env`` (never stored in a config file); local
    servers need none. Grounding: an answer is kept when at least ``min_grounding`` of its
    character n-grams (``ngram_en`` for English, ``ngram_zh`` for Chinese) occur in the chunk.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.2
    max_tokens: int = 512
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    rate_limit_per_s: float | None = None
    burst: int = 1
    cache_dir: str | None = "~/.cache/ta/teacher"
    json_mode: bool = True
    seed: int | None = 0
    min_grounding: float = 0.5
    ngram_en: int = 4
    ngram_zh: int = 2

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"teacher.base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("teacher.model must name the served model (e.g. 'qwen2.5:7b' for Ollama)")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("teacher.max_retries >= 0, timeout_s > 0 and backoff_s >= 0 are required")
        if self.rate_limit_per_s is not None and self.rate_limit_per_s <= 0:
            raise ValueError(f"teacher.rate_limit_per_s must be > 0 or None, got {self.rate_limit_per_s}")
        if self.burst < 1:
            raise ValueError(f"teacher.burst must be >= 1, got {self.burst}")
        if not 0.0 <= self.min_grounding <= 1.0:
            raise ValueError(f"teacher.min_grounding must be in [0, 1], got {self.min_grounding}")
        if self.ngram_en < 1 or self.ngram_zh < 1:
            raise ValueError("teacher.ngram_en and teacher.ngram_zh must be >= 1")

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"


class TeacherError(RuntimeError):
    """A request the teacher could not answer; ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`acquire` waits for one.

    ``clock`` and ``sleep`` are injectable so the waiting arithmetic can be checked exactly.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"TokenBucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst = float(rate), float(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until it exists; return the seconds slept."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            wait = 0.0
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / self.rate
                self._sleep(wait)
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                self._tokens = max(self._tokens, 1.0)  # a sleep that returned early still paid
            self._tokens -= 1.0
            return wait


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body (sorted keys, UTF-8): the cache key."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class TeacherStats:
    """What a client did: requests answered from the cache, HTTP calls made, retries, seconds waited."""

    cache_hits: int = 0
    http_calls: int = 0
    retries: int = 0
    waited_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)


class TeacherClient:
    """Chat completions with an on-disk cache, retries and a rate limit (see the module docstring)."""

    def __init__(self, config: TeacherConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.stats = TeacherStats()
        self._sleep = sleep
        self._bucket = (
            TokenBucket(config.rate_limit_per_s, config.burst, sleep=sleep)
            if config.rate_limit_per_s
            else None
        )
        self._cache = Path(os.path.expanduser(config.cache_dir)) if config.cache_dir else None

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The JSON body sent for ``messages`` (and hashed for the cache)."""
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text to ``messages``, from the cache or the server."""
        return message_content(self.complete(self.request_body(messages)), self.config.url)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's whole JSON response to ``body``; cached by :func:`request_key`."""
        key = request_key(body)
        cached = self._cache_get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        response = self._post_with_retries(body)
        message_content(response, self.config.url)  # never cache a reply without text
        self._cache_put(key, body, response)
        return response

    # -- cache ---------------------------------------------------------------------------
    def cache_path(self, key: str) -> Path | None:
        return None if self._cache is None else self._cache / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        path = self.cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["response"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable entry: ask again and overwrite it

    def _cache_put(self, key: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        path = self.cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = json.dumps({"request": body, "response": response}, ensure_ascii=False, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(entry)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- HTTP ----------------------------------------------------------------------------
    def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        cfg, url = self.config, self.config.url
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(cfg.max_retries + 1):
            if self._bucket is not None:
                self.stats.waited_s += self._bucket.acquire()
            self.stats.http_calls += 1
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=cfg.timeout_s) as reply:
                    raw = reply.read()
                    self._count(reply.status)
                return parse_json_response(raw, url)
            except urllib.error.HTTPError as exc:
                self._count(exc.code)
                detail = exc.read()[:500].decode("utf-8", "replace").strip()
                message = f"teacher {url} answered HTTP {exc.code} {exc.reason}: {detail}"
                if exc.code not in RETRY_STATUSES:
                    raise TeacherError(message, url, exc.code) from None
                wait = retry_after_seconds(exc.headers.get("Retry-After"))
                failure = TeacherError(message, url, exc.code)
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                failure = TeacherError(f"teacher {url} unreachable: {reason}", url, None)
                wait = None
            if attempt == cfg.max_retries:
                raise TeacherError(
                    f"{failure} (gave up after {cfg.max_retries + 1} attempts)", url, failure.status
                )
            if wait is None:
                wait = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt)
            self.stats.retries += 1
            self.stats.waited_s += wait
            self._sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _count(self, status: int) -> None:
        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1


def parse_json_response(raw: bytes, url: str) -> dict[str, Any]:
    """Decode a 200 response body, or fail naming the URL and what came back."""
    try:
        response = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TeacherError(f"teacher {url} sent a reply that is not JSON: {raw[:200]!r}", url, 200) from None
    if not isinstance(response, dict):
        raise TeacherError(f"teacher {url} sent JSON that is not an object: {raw[:200]!r}", url, 200)
    return response


def message_content(response: dict[str, Any], url: str) -> str:
    """``choices[0].message.content`` of a chat-completions response, or a clear error."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TeacherError(
            f"teacher {url} reply has no choices[0].message.content: {json.dumps(response)[:300]}", url, 200
        ) from None
    if not isinstance(content, str):
        raise TeacherError(f"teacher {url} reply content is {type(content).__name__}, not text", url, 200)
    return content
