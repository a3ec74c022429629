"""A small OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.

It speaks just enough of the Chat Completions API for the real openai SDK: canned
replies with ``usage``, rate-limit headers, error statuses (429, 500...), delays.
Replies are queued with :meth:`FakeOpenAI.enqueue`; when the queue is empty the
``default`` callable answers. Every request body is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One canned answer: a completion text, or an error status with a body."""

    content: str | None = "OK"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int = 0
    error: str = "simulated error"


def completion_body(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
        },
    }


class FakeOpenAI:
    """Run with ``with FakeOpenAI() as server:``; point clients at ``server.base_url``."""

    def __init__(self, default: Callable[[dict[str, Any]], Reply] | None = None):
        self.default = default or (lambda _body: Reply())
        self.queue: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self.queue:
                return self.queue.popleft()
        return self.default(body)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = server._next(body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status == 200:
                    payload = completion_body(reply, body.get("model", "unknown"))
                else:
                    payload = {
                        "error": {
                            "message": reply.error,
                            "type": "test_error",
                            "code": str(reply.status),
                        }
                    }
                self._send(reply.status, payload, reply.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
