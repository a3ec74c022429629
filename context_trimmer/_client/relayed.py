"""Answers relayed as bytes: the gateway's way of calling a wrapped client.

The gateway posts a request's JSON as it came (``client.post`` with the
``X-Stainless-Raw-Response: relay`` header: no SDK request transform) and relays the
upstream's answer as bytes, without building SDK objects:

- a stream (:class:`RelayedStream`) passes through as the upstream wrote it, chunk by
  chunk; its complete events are read only for what accounting needs (the answering
  model, the text, the usage, an in-band error), and it is recorded however it ends,
  as :mod:`._streams` records the SDK's streams (``ok``, ``stream_closed``,
  ``stream_error``, ``stream_abandoned``);
- a JSON answer (:class:`RelayedAnswer`) is read whole, parsed once for its usage,
  recorded, and handed back as the bytes that came.

A chat stream whose client did not ask for ``stream_options.include_usage`` was sent
asking for it (``_client.calls.Call.hides_usage``): it is then relayed event by event, without
its usage chunk and without the ``"usage": null`` every other chunk carries, so the
client gets the events it would have had and the record gets the exact usage.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._exceptions import TrimmerError
from .calls import RELAY, Call
from .streams import Offload, StreamSummary, _abandoned

__all__ = [
    "RELAY",
    "RelayedAnswer",
    "RelayedStream",
    "UpstreamAnswerCut",
    "UpstreamAnswerError",
    "relayed",
    "unrecorded",
]

Finish = Callable[[Any, str], None]
"""Records the answer (response-shaped) and how it ended (runs blocking I/O)."""


class UpstreamAnswerError(TrimmerError):
    """The upstream answered 200 with a body that is not a JSON object."""


class UpstreamAnswerCut(UpstreamAnswerError):
    """The upstream's answer was cut short: the connection closed before the body's
    ``Content-Length`` bytes came. The attempt is recorded (outcome ``answer_cut``); the
    gateway answers 502, as for any upstream failure."""


@dataclass(frozen=True)
class RelayedAnswer:
    """A JSON answer as the upstream sent it."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]


_NULL_USAGE = re.compile(rb'\s*,\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,\s*')
"""A chunk's ``"usage": null`` member (a quote in a string is escaped: never matched)."""


class RelayedStream:
    """The upstream's SSE bytes, passed through untouched (``async for`` gives bytes);
    recorded once, however it ends. ``finish`` None: relayed without recording.
    ``hide_usage``: relayed by whole events, less the usage the client did not ask for."""

    def __init__(
        self,
        response: Any,
        finish: Finish | None,
        summary: StreamSummary | None = None,
        offload: Offload = asyncio.to_thread,
        hide_usage: bool = False,
    ) -> None:
        self.response = response  # the upstream's HTTP response (status, headers)
        self._offload = offload
        self._chunks: AsyncIterator[bytes] = response.aiter_bytes()
        self._finish = finish
        self._summary = summary or StreamSummary()
        self._pending = b""  # the start of an event not yet complete
        self._hide_usage = hide_usage
        self.failed = False  # the upstream sent an error event

    @property
    def at_event_boundary(self) -> bool:
        """Whether the bytes relayed so far end between two events."""
        return self._hide_usage or not self._pending

    def __aiter__(self) -> RelayedStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            try:
                data = await self._chunks.__anext__()
            except StopAsyncIteration:
                if self._hide_usage and self._pending.strip():
                    rest, self._pending = self._pending, b""
                    return rest  # an unterminated last event, as it came
                await self._end("stream_error" if self.failed else "ok")
                raise
            except BaseException:
                await self._end("stream_error")
                raise
            if not self._hide_usage:
                self._scan(data)
                return data
            events = self._whole_events(data)
            if events:
                return events

    async def close(self) -> None:
        try:
            await self.response.aclose()
        finally:
            await self._end("stream_closed")

    def __del__(self) -> None:
        _abandoned(self.__dict__.get("_summary"), self.__dict__.get("_finish"))

    async def _end(self, outcome: str) -> None:
        if self._summary.end() and self._finish is not None:
            await self._offload(self._finish, self._summary.response(), outcome)

    def _scan(self, data: bytes) -> None:
        """Read the events ``data`` completes (the bytes themselves are not changed)."""
        text = (self._pending + data).replace(b"\r\n", b"\n")
        *events, self._pending = text.split(b"\n\n")
        if self._finish is not None:
            for event in events:
                self._take(event)

    def _whole_events(self, data: bytes) -> bytes:
        """The events ``data`` completes, read, less the usage the client did not ask
        for (``b""`` while none is complete)."""
        text = (self._pending + data).replace(b"\r\n", b"\n")
        *events, self._pending = text.split(b"\n\n")
        kept = []
        for event in events:
            chunk = self._take(event)
            if chunk is not None and "usage" in chunk:
                if chunk["usage"] is not None and not chunk.get("choices"):
                    continue  # the usage chunk: recorded, not relayed
                if chunk["usage"] is None:
                    event = _without_null_usage(event, chunk)
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _take(self, event: bytes) -> dict[str, Any] | None:
        """Read one complete event for the record; its JSON chunk, if it has one."""
        lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines or lines == [b"[DONE]"]:
            return None
        try:
            chunk = json.loads(b"\n".join(lines))
        except ValueError:
            return None  # not JSON: relayed, nothing to count
        if not isinstance(chunk, dict):
            return None
        if chunk.get("error") is not None or chunk.get("type") == "error":
            self.failed = True
        if self._finish is not None:
            self._summary.take(chunk)
        return chunk


def _without_null_usage(event: bytes, chunk: dict[str, Any]) -> bytes:
    """``event`` (one ``data:`` line of ``chunk``) without its ``"usage": null``: the
    upstream's bytes less that member, or ``chunk`` re-serialized if that is not clean."""
    wanted = {key: value for key, value in chunk.items() if key != "usage"}
    lines = event.split(b"\n")
    data = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
    if len(data) == 1:
        edited = _NULL_USAGE.sub(b"", lines[data[0]], count=1)
        try:
            clean = json.loads(edited[5:]) == wanted
        except ValueError:
            clean = False
        if clean:
            lines[data[0]] = edited
            return b"\n".join(lines)
    rest = [line for line in lines if not line.startswith(b"data:")]
    return b"\n".join([*rest, b"data: " + json.dumps(wanted, separators=(",", ":")).encode()])


async def relayed(
    raw: Any, call: Call, finish: Finish, offload: Offload = asyncio.to_thread
) -> RelayedStream | RelayedAnswer:
    """The answer of ``raw`` (the SDK's raw response to ``call``, its body not read
    yet) as bytes: a :class:`RelayedStream`, or a :class:`RelayedAnswer` read, parsed
    once and recorded by ``finish`` (run by ``offload``)."""
    if call.stream:
        return RelayedStream(
            raw.http_response, finish, call.stream_summary(), offload, call.hides_usage
        )
    try:
        answer = await unrecorded(raw, stream=False)
    except Exception as error:  # the transport's: the body ended before its length
        await offload(finish, {}, "answer_cut")
        raise UpstreamAnswerCut(
            f"the upstream's answer was cut short ({error}); the request may be retried"
        ) from error
    assert isinstance(answer, RelayedAnswer)
    try:
        parsed = json.loads(answer.content)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        await offload(finish, {}, "error")
        raise UpstreamAnswerError(
            f"the upstream answered {answer.status_code} with a body that is not a JSON "
            f"object ({answer.headers.get('content-type', 'no content type')})"
        )
    await offload(finish, call.usage_view(parsed), "ok")
    return answer


async def unrecorded(raw: Any, *, stream: bool) -> RelayedStream | RelayedAnswer:
    """The answer of ``raw`` as bytes, recorded by no one (a request passed through
    while the store is down)."""
    response = raw.http_response
    if stream:
        return RelayedStream(response, None)
    try:
        content = await response.aread()
    finally:
        await response.aclose()
    return RelayedAnswer(response.status_code, content, response.headers)
