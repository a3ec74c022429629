"""A small OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.

It speaks enough of the Chat Completions API for the real openai SDK: canned replies
with ``usage``, streaming (SSE, with the usage chunk when asked), error statuses (429,
500...), delays, ``x-ratelimit-*`` headers, and optionally a tokens-per-minute limiter
that answers 429 like OpenAI when a request does not fit. Replies are queued with
:meth:`FakeOpenAI.enqueue`; when the queue is empty the ``default`` callable answers.
Every request body (and its headers) is kept.

It also runs the Batch API's happy and unhappy paths: ``POST /v1/files`` (multipart
upload), ``POST /v1/batches`` (each line answered like a chat call, from the same
queue; errors go to the error file), ``GET /v1/batches/{id}`` and
``GET /v1/files/{id}/content``. With ``hold_batches`` set, a batch stays
``in_progress`` until :meth:`FakeOpenAI.finish_batches`.

``POST /v1/embeddings`` answers a small vector per input (its requests and headers are
kept in ``embeddings``). ``POST /v1/responses`` answers in the
Responses API's shape (``output`` message, ``usage`` with ``input_tokens`` /
``output_tokens`` / ``input_tokens_details.cached_tokens``), as JSON or, with
``"stream": true``, as the SSE event sequence the SDK's stream helpers expect.

Like OpenAI, a chat stream asked for ``stream_options.include_usage`` carries
``"usage": null`` in every chunk and ends with a usage chunk (no choices).
:func:`cut_to_max_tokens` makes a reply honour the request's ``max_tokens`` as a
model does: its text cut at that many tokens (o200k), with ``finish_reason: "length"``.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    raw: bytes | None = None  # sent as the body as is (e.g. text that is not JSON)
    break_after: int | None = None  # a stream cut off (connection dropped) after N events
    event_delay: float = 0.0  # a stream written one event at a time, this far apart
    raw_cut: int | None = None  # with raw: only its first N bytes sent, then the connection dropped
    calls: list[tuple[str, str]] | None = None  # Responses: function calls (name, arguments)
    finish_reason: str = "stop"


def cut_to_max_tokens(reply: Reply, body: dict[str, Any]) -> Reply:
    """``reply`` as a model that honours the request's ``max_tokens`` answers: its text
    cut at that many tokens (o200k), ``finish_reason`` ``"length"``, the completion
    tokens counted."""
    from context_trimmer._text.encodings import get_encoding

    encoding = get_encoding("o200k_base")
    tokens = encoding.encode(reply.content or "")
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if cap is None or len(tokens) <= int(cap):
        return replace(reply, completion_tokens=len(tokens))
    cut = encoding.decode(tokens[: int(cap)])
    return replace(reply, content=cut, completion_tokens=int(cap), finish_reason="length")


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


@dataclass
class RequestLimiter:
    """OpenAI-style RPM limit: ``limit`` requests per ``window`` seconds (a fixed window
    from the first request); a request over it is a 429 with ``retry-after-ms`` and the
    ``x-ratelimit-*-requests`` headers, as every answer carries them."""

    limit: int
    window: float = 60.0
    used: int = 0
    started: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, _body: dict[str, Any]) -> tuple[bool, dict[str, str]]:
        with self.lock:
            now = time.monotonic()
            if self.started is None or now - self.started >= self.window:
                self.started, self.used = now, 0
            fits = self.used < self.limit
            self.used += fits
            reset = max(0.0, self.window - (now - self.started))
            headers = {
                "x-ratelimit-limit-requests": str(self.limit),
                "x-ratelimit-remaining-requests": str(self.limit - self.used),
                "x-ratelimit-reset-requests": f"{reset:.3f}s",
            }
        if not fits:
            headers["retry-after-ms"] = str(int(reset * 1000) + 1)
        return fits, headers


def default_cost(body: dict[str, Any]) -> int:
    max_tokens = (
        body.get("max_tokens")
        or body.get("max_completion_tokens")
        or body.get("max_output_tokens")
        or 4096
    )
    prompt = body.get("messages", [body.get("instructions"), body.get("input")])
    return len(json.dumps(prompt)) // 4 + int(max_tokens)


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
                "finish_reason": reply.finish_reason,
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
    base: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": reply.model or model,
    }
    if include_usage:
        base["usage"] = None
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
    finish = reply.finish_reason
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": usage(reply)})
    return events


def parse_upload(content_type: str, raw: bytes) -> tuple[bytes, str, str]:
    """The file, its name and its purpose from a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    form = email.parser.BytesParser(policy=email.policy.default).parsebytes(head + raw)
    data, filename, purpose = b"", "upload", ""
    for part in form.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if name == "file":
            data, filename = payload, part.get_filename() or filename
        elif name == "purpose":
            purpose = payload.decode()
    return data, filename, purpose


def response_body(
    reply: Reply, model: str, status: str = "completed", response_id: str = "resp_test"
) -> dict[str, Any]:
    """A Responses API ``response`` object answering with ``reply.content``."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": reply.model or model,
        "output": [] if status != "completed" else _output(reply),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None if status != "completed" else responses_usage(reply),
    }


def _output(reply: Reply) -> list[dict[str, Any]]:
    """The output items: the reply's function calls, else its message."""
    if reply.calls:
        return [
            {
                "type": "function_call",
                "id": f"fc_{i}",
                "call_id": f"call_{i}_{int(time.time() * 1e6)}",
                "name": name,
                "arguments": arguments,
                "status": "completed",
            }
            for i, (name, arguments) in enumerate(reply.calls)
        ]
    return [_output_message(reply.content or "")]


def _output_message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_test",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def responses_usage(reply: Reply) -> dict[str, Any]:
    return {
        "input_tokens": reply.prompt_tokens,
        "input_tokens_details": {"cached_tokens": reply.cached_tokens},
        "output_tokens": reply.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def response_events(
    reply: Reply, model: str, response_id: str = "resp_test"
) -> list[dict[str, Any]]:
    """The SSE events of a streamed Responses answer, created to completed."""
    text = reply.content or ""
    item = {**_output_message(""), "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_test", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": response_body(reply, model, "in_progress", response_id),
        },
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
    ]
    for position, word in enumerate(text.split(" ")):
        piece = word if position == 0 else " " + word
        events.append(
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        )
    events += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": _output_message(text)},
        {
            "type": "response.completed",
            "response": response_body(reply, model, "completed", response_id),
        },
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def sse_body(
    events: list[dict[str, Any]], cut: int | None = None, typed: bool = False
) -> tuple[bytes, bytes]:
    """The whole SSE body, and what is sent: all of it, or (``cut``) only the first
    events, the connection then dropped although the whole body was promised. ``typed``:
    the Responses form (named events, no ``[DONE]``)."""
    if typed:
        parts = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    else:
        parts = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
    return b"".join(parts), b"".join(parts if cut is None else parts[:cut])


def _public(found: dict[str, Any]) -> dict[str, Any]:
    """A stored object as the API shows it (a file's bytes and a response's input apart)."""
    return {k: v for k, v in found.items() if k not in ("data", "input_items")}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once in the load benchmarks

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # a client that gave up is no error


class FakeOpenAI:
    """Run with ``with FakeOpenAI() as server:``; point clients at ``server.base_url``."""

    def __init__(
        self,
        default: Callable[[dict[str, Any]], Reply] | None = None,
        *,
        limiter: TokenLimiter | RequestLimiter | None = None,
        port: int = 0,
    ):
        self.default = default or (lambda _body: Reply())
        self.limiter = limiter
        self.paths: list[str] = []  # the path (and query) of each model call
        self.queue: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: Counter[int] = Counter()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.embeddings: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.responses: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.vector_stores: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str]] = []  # (method, raw path) of every request
        self.hold_batches = False
        self.streams_cut = 0  # paced streams whose reader went away before the end
        self._ids = itertools.count(1)
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

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "data": data,
        }
        return {k: v for k, v in self.files[file_id].items() if k != "data"}

    def store_response(self, body: dict[str, Any], answer: dict[str, Any]) -> None:
        given = body.get("input")
        items = (
            [{"type": "message", "role": "user", "content": given}]
            if isinstance(given, str)
            else given
        )
        self.responses[answer["id"]] = {**answer, "input_items": items or []}

    def new_response_id(self) -> str:
        return f"resp_{next(self._ids)}"

    def create_object(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """A conversation or a vector store."""
        prefix, table = {
            "conversations": ("conv", self.conversations),
            "vector_stores": ("vs", self.vector_stores),
        }[kind]
        made = {
            "id": f"{prefix}_{next(self._ids)}",
            "object": "conversation" if kind == "conversations" else "vector_store",
            "created_at": int(time.time()),
            "metadata": body.get("metadata") or {},
        }
        if kind == "vector_stores":
            made["name"] = body.get("name")
            made["file_ids"] = body.get("file_ids") or []
        table[made["id"]] = made
        return made

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            "files": self.files,
            "batches": self.batches,
            "responses": self.responses,
            "conversations": self.conversations,
            "vector_stores": self.vector_stores,
        }

    def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"batch_{next(self._ids)}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "in_progress",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        if not self.hold_batches:
            self._run_batch(self.batches[batch_id])
        return self.batches[batch_id]

    def embed(self, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.embeddings.append((body, headers))
        given = body.get("input", "")
        texts = given if isinstance(given, list) else [given]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(str(t))), 0.5, -0.25]}
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(str(t).split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "unknown"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def finish_batches(self) -> None:
        """Run every batch still in progress."""
        for batch in self.batches.values():
            if batch["status"] == "in_progress":
                self._run_batch(batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        lines = self.files[batch["input_file_id"]]["data"].decode().splitlines()
        done, failed = [], []
        for number, line in enumerate(lines):
            item = json.loads(line)
            reply = self._answer(item["body"], {})
            model = item["body"].get("model", "unknown")
            ok = reply.status == 200
            answer = completion_body(reply, model) if ok else {"error": {"message": reply.error}}
            (done if ok else failed).append(
                {
                    "id": f"batch_req_{number}",
                    "custom_id": item["custom_id"],
                    "response": {"status_code": reply.status, "body": answer},
                    "error": None,
                }
            )
        for key, results in (("output_file_id", done), ("error_file_id", failed)):
            if results:
                data = "".join(json.dumps(r) + "\n" for r in results).encode()
                batch[key] = self.add_file(data, f"{batch['id']}_{key}.jsonl", "batch_output")["id"]
        batch["status"] = "completed"
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(done),
            "failed": len(failed),
        }

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

            def _see(self) -> list[str]:
                """The path's segments (the request noted in ``seen``)."""
                with server._lock:
                    server.seen.append((self.command, self.path))
                return self.path.split("?", 1)[0].strip("/").split("/")

            def _missing(self, object_id: str) -> None:
                error = {"message": f"No such object: {object_id}", "type": "not_found"}
                self._send(404, {"error": error}, {})

            def _found(self, parts: list[str]) -> dict[str, Any] | None:
                """The stored object ``/v1/{kind}/{id}/...`` names (None: answered 404)."""
                found = server.tables()[parts[1]].get(parts[2])
                if found is None:
                    self._missing(parts[2])
                return found

            def do_GET(self) -> None:
                parts = self._see()
                if parts == ["_requests"]:  # the upstream's internal endpoint
                    self._send(200, {"internal": "secret", "seen": len(server.seen)}, {})
                    return
                if parts[:1] != ["v1"]:
                    self._missing(self.path)
                    return
                if len(parts) == 2 and parts[1] in server.tables():
                    listed = [_public(o) for o in server.tables()[parts[1]].values()]
                    self._send(200, {"object": "list", "data": listed, "has_more": False}, {})
                    return
                if len(parts) > 2 and parts[1] in server.tables():
                    found = self._found(parts)
                    if found is None:
                        return
                    if parts[1] == "files" and parts[3:] == ["content"]:
                        self._send_bytes(200, found["data"], {})
                    elif parts[1] == "responses" and parts[3:] == ["input_items"]:
                        page = {"object": "list", "data": found["input_items"], "has_more": False}
                        self._send(200, page, {})
                    else:
                        self._send(200, _public(found), {})
                    return
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": "gpt-4o", "object": "model", "owned_by": "test"}],
                    },
                    {},
                )

            def do_DELETE(self) -> None:
                parts = self._see()
                if len(parts) == 3 and parts[0] == "v1" and parts[1] in server.tables():
                    if self._found(parts) is not None:
                        del server.tables()[parts[1]][parts[2]]
                        self._send(200, {"id": parts[2], "deleted": True}, {})
                    return
                self._missing(self.path)

            def do_POST(self) -> None:
                parts = self._see()
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if parts[:2] == ["v1", "batches"] and parts[3:] == ["cancel"]:
                    found = self._found(parts)
                    if found is not None:
                        self._send(200, {**found, "status": "cancelling"}, {})
                    return
                if parts[:2] in (["v1", "conversations"], ["v1", "vector_stores"]):
                    if len(parts) == 2:
                        self._send(
                            200, server.create_object(parts[1], json.loads(raw or b"{}")), {}
                        )
                    elif self._found(parts) is not None:
                        self._send(200, _public(server.tables()[parts[1]][parts[2]]), {})
                    return
                if self.path.startswith("/v1/files"):
                    self._send(
                        200, server.add_file(*parse_upload(self.headers["content-type"], raw)), {}
                    )
                    return
                body = json.loads(raw or b"{}")
                if self.path.startswith("/v1/batches"):
                    self._send(200, server.create_batch(body), {})
                    return
                if self.path.startswith("/v1/embeddings"):
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    self._send(200, server.embed(body, headers), {})
                    return
                with server._lock:
                    server.paths.append(self.path)
                reply = server._answer(body, {k.lower(): v for k, v in self.headers.items()})
                if reply.delay:
                    time.sleep(reply.delay)
                with server._lock:
                    server.statuses[reply.status] += 1
                model = body.get("model", "unknown")
                if reply.raw is not None:
                    self._send_bytes(reply.status, reply.raw, reply.headers, reply.raw_cut)
                elif reply.status != 200:
                    payload = {
                        "error": {
                            "message": reply.error,
                            "type": "test_error",
                            "code": str(reply.status),
                        }
                    }
                    self._send(reply.status, payload, reply.headers)
                elif self.path.split("?", 1)[0].rstrip("/").endswith("/responses"):
                    made = server.new_response_id()
                    server.store_response(body, response_body(reply, model, response_id=made))
                    if body.get("stream"):
                        events = response_events(reply, model, made)
                        self._stream(events, reply.headers, typed=True)
                    else:
                        self._send(
                            200, response_body(reply, model, response_id=made), reply.headers
                        )
                elif body.get("stream"):
                    include = bool((body.get("stream_options") or {}).get("include_usage"))
                    events = stream_events(reply, model, include)
                    if reply.event_delay:
                        self._paced(events, reply.event_delay)
                        return
                    self._stream(events, reply.headers, reply.break_after)
                else:
                    self._send(200, completion_body(reply, model), reply.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), headers)

            def _send_bytes(
                self, status: int, data: bytes, headers: dict[str, str], cut: int | None = None
            ) -> None:
                if cut is not None:
                    self.close_connection = True
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data if cut is None else data[:cut])

            def _paced(self, events: list[dict[str, Any]], delay: float) -> None:
                """The stream written event by event (a slow model); a client that
                goes away ends it (the write fails)."""
                self.close_connection = True
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                parts = sse_body(events)[0].split(b"\n\n")[:-1]
                try:
                    for part in parts:
                        self.wfile.write(part + b"\n\n")
                        self.wfile.flush()
                        time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    with server._lock:
                        server.streams_cut += 1

            def _stream(
                self,
                events: list[dict[str, Any]],
                headers: dict[str, str],
                cut: int | None = None,
                typed: bool = False,
            ) -> None:
                data, sent = sse_body(events, cut, typed)
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
    server = FakeOpenAI(
        lambda _b: Reply("A short streamed answer from the model."), port=int(sys.argv[1])
    )
    print(server.base_url, flush=True)
    server.serve_forever()
