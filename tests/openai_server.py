"""A small OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.

It speaks enough of the Chat Completions API for the real openai SDK: canned replies
with ``usage``, streaming (SSE, with the usage chunk when asked), error statuses (429,
500...), delays, ``x-ratelimit-*`` headers, and optionally a tokens-per-minute limiter
that answers 429 like OpenAI when a request does not fit. Replies are queued with
:meth:`FakeOpenAI.enqueue`; when the queue is empty the ``default`` callable answers.
Every request body (and its headers) is kept.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
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
    model: str | None = None
    break_after: int | None = None  # a stream cut off (connection dropped) after N events


@dataclass
class TokenLimiter:
    """OpenAI-style TPM limit: ``limit`` tokens per ``window`` seconds; a request costs
    ``cost(body)`` (default: its characters / 4 plus max_tokens, as OpenAI estimates)."""

    limit: int
    window: float = 60.0
    cost: Callable[[dict[str, Any]], int] | None = None
    used: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, body: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        cost = self.cost(body) if self.cost else default_cost(body)
        with self.lock:
            now = time.monotonic()
            if now - self.started >= self.window:
                self.started, self.used = now, 0
            fits = self.used + cost <= self.limit
            if fits:
                self.used += cost
            reset = max(0.0, self.window - (now - self.started))
            headers = {
                "x-ratelimit-limit-tokens": str(self.limit),
                "x-ratelimit-remaining-tokens": str(max(0, self.limit - self.used)),
                "x-ratelimit-reset-tokens": f"{reset:.3f}s",
            }
        if not fits:
            headers["retry-after-ms"] = str(int(reset * 1000) + 1)
        return fits, headers


def default_cost(body: dict[str, Any]) -> int:
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
    return len(json.dumps(body.get("messages", []))) // 4 + int(max_tokens)


def completion_body(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage(reply),
    }


def usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
    }


def stream_events(reply: Reply, model: str, include_usage: bool) -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": reply.model or model,
    }
    words = (reply.content or "").split(" ")
    events = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    ]
    for position, word in enumerate(words):
        piece = word if position == 0 else " " + word
        events.append(
            {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        )
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": usage(reply)})
    return events


def sse_body(events: list[dict[str, Any]], cut: int | None = None) -> tuple[bytes, bytes]:
    """The whole SSE body, and what is sent: all of it, or (``cut``) only the first
    events, the connection then dropped although the whole body was promised."""
    parts = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
    return b"".join(parts), b"".join(parts if cut is None else parts[:cut])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once in the load benchmarks


class FakeOpenAI:
    """Run with ``with FakeOpenAI() as server:``; point clients at ``server.base_url``."""

    def __init__(
        self,
        default: Callable[[dict[str, Any]], Reply] | None = None,
        *,
        limiter: TokenLimiter | None = None,
        port: int = 0,
    ):
        self.default = default or (lambda _body: Reply())
        self.limiter = limiter
        self.queue: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if self.queue:
                return self.queue.popleft()
        return self.default(body)

    def _answer(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if self.limiter is not None:
            fits, limit_headers = self.limiter.admit(body)
            if not fits:
                with self._lock:
                    self.requests.append(body)
                    self.headers.append(headers)
                return Reply(
                    status=429,
                    headers=limit_headers,
                    error="Rate limit reached for tokens per min (TPM)",
                )
            reply = self._next(body, headers)
            return Reply(**{**reply.__dict__, "headers": {**limit_headers, **reply.headers}})
        return self._next(body, headers)

    def serve_forever(self) -> None:
        self._server.serve_forever()

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

            def do_GET(self) -> None:
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": "gpt-4o", "object": "model", "owned_by": "test"}],
                    },
                    {},
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                reply = server._answer(body, {k.lower(): v for k, v in self.headers.items()})
                if reply.delay:
                    time.sleep(reply.delay)
                with server._lock:
                    server.statuses[reply.status] += 1
                model = body.get("model", "unknown")
                if reply.status != 200:
                    payload = {
                        "error": {
                            "message": reply.error,
                            "type": "test_error",
                            "code": str(reply.status),
                        }
                    }
                    self._send(reply.status, payload, reply.headers)
                elif body.get("stream"):
                    include = bool((body.get("stream_options") or {}).get("include_usage"))
                    events = stream_events(reply, model, include)
                    self._stream(events, reply.headers, reply.break_after)
                else:
                    self._send(200, completion_body(reply, model), reply.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(
                self, events: list[dict[str, Any]], headers: dict[str, str], cut: int | None
            ) -> None:
                data, sent = sse_body(events, cut)
                if cut is not None:
                    self.close_connection = True
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(sent)

        return Handler


if __name__ == "__main__":  # a standalone upstream for benchmarks: python openai_server.py PORT
    import sys

    server = FakeOpenAI(
        lambda _b: Reply("A short streamed answer from the model."), port=int(sys.argv[1])
    )
    print(server.base_url, flush=True)
    server.serve_forever()
