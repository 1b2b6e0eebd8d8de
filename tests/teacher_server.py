"""A scripted OpenAI-compatible server on 127.0.0.1 for the teacher client's tests.

It is a real HTTP server (``http.server`` in a thread): each POST to ``/v1/chat/completions`` takes
the next scripted reply (status, headers, body) and records what it received.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def chat_body(content: str) -> dict[str, Any]:
    """A chat-completions response whose single choice says ``content``."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ScriptedServer:
    """Replies in order; when the script runs out it answers 500 so a test never hangs."""

    replies: deque = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def script(self, *replies: tuple[int, dict[str, str], Any]) -> None:
        self.replies.extend(replies)

    def ok(self, content: str) -> None:
        self.script((200, {}, chat_body(content)))


def start_server() -> tuple[ScriptedServer, ThreadingHTTPServer]:
    state = ScriptedServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            state.received.append(Received(self.path, dict(self.headers), body))
            if self.path != "/v1/chat/completions":
                status, headers, payload = 404, {}, {"error": f"no route {self.path}"}
            elif state.replies:
                status, headers, payload = state.replies.popleft()
            else:
                status, headers, payload = 500, {}, {"error": "script exhausted"}
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return state, server
