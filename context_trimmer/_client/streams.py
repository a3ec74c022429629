"""Streams that record what they carried: every chunk passes through untouched, and
when the stream ends the answering model, the text and the usage (if the stream
reported it; else estimated from the text so far, and marked so) go to ``finish``
with how it ended: ``"ok"`` (read to the end), ``"stream_closed"`` (closed by the
caller before the end), ``"stream_error"`` (the upstream failed mid-stream) or
``"stream_abandoned"`` (dropped unfinished and garbage-collected; recorded on a
thread of its own). Either way the attempt is recorded and the quota settled, once.

A chat stream whose caller did not ask for ``stream_options.include_usage`` is sent
asking for it (``_client.calls.Call.hides_usage``), so it is recorded with the upstream's
exact usage; its usage chunk (the last, with no choices) is read and not passed on, so
the caller sees the stream it asked for."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .._responses import field_of


class StreamSummary:
    """Collects what a stream said: the answering model, the text, the usage if sent."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.parts: list[str] = []
        self.usage: Any = None
        self.done = False
        self._lock = threading.Lock()

    def end(self) -> bool:
        """True the first time only: the one caller that records the stream."""
        with self._lock:
            first, self.done = not self.done, True
        return first

    def take(self, chunk: Any) -> None:
        self.model = field_of(chunk, "model") or self.model
        if field_of(chunk, "usage") is not None:
            self.usage = field_of(chunk, "usage")
        for choice in field_of(chunk, "choices") or ():
            content = field_of(field_of(choice, "delta"), "content")
            if isinstance(content, str):
                self.parts.append(content)

    def response(self) -> dict[str, Any]:
        """A response-shaped record: real usage if the stream had it, else the text."""
        if self.usage is not None:
            return {"model": self.model, "usage": self.usage}
        return {"model": self.model, "choices": [{"message": {"content": "".join(self.parts)}}]}


def usage_chunk(chunk: Any) -> bool:
    """Whether ``chunk`` is a chat stream's usage chunk (usage, no choices)."""
    return field_of(chunk, "usage") is not None and not field_of(chunk, "choices")


Finish = Callable[[dict[str, Any], str], None]
"""Records a stream: its response-shaped summary and how it ended (runs blocking I/O)."""
Offload = Callable[..., Awaitable[Any]]
"""Runs a blocking call off the event loop (``asyncio.to_thread``, or a store's lane)."""


def _abandoned(summary: StreamSummary | None, finish: Finish | None) -> None:
    """Record a stream garbage-collected unfinished, on a thread (never inside GC)."""
    if summary is not None and finish is not None and summary.end():
        threading.Thread(
            target=finish, args=(summary.response(), "stream_abandoned"), daemon=True
        ).start()


class RecordedStream:
    """The SDK's stream, passed through chunk by chunk; recorded however it ends."""

    def __init__(
        self,
        stream: Any,
        finish: Finish,
        summary: StreamSummary | None = None,
        hide_usage: bool = False,
    ):
        self._stream = stream
        self._iterator = iter(stream)
        self._finish = finish
        self._summary = summary or StreamSummary()
        self._hide_usage = hide_usage

    def __iter__(self) -> RecordedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self._iterator)
            except StopIteration:
                self._end("ok")
                raise
            except BaseException:
                self._end("stream_error")
                raise
            self._summary.take(chunk)
            if not (self._hide_usage and usage_chunk(chunk)):
                return chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._end("stream_closed")

    def __enter__(self) -> RecordedStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        _abandoned(self.__dict__.get("_summary"), self.__dict__.get("_finish"))

    def _end(self, outcome: str) -> None:
        if self._summary.end():
            self._finish(self._summary.response(), outcome)


class AsyncRecordedStream:
    """The async SDK stream, passed through chunk by chunk; recorded however it ends
    (``finish`` runs on a worker thread, so the event loop never waits on the store)."""

    def __init__(
        self,
        stream: Any,
        finish: Finish,
        summary: StreamSummary | None = None,
        offload: Offload = asyncio.to_thread,
        hide_usage: bool = False,
    ):
        self._stream = stream
        self._iterator = stream.__aiter__()
        self._finish = finish
        self._summary = summary or StreamSummary()
        self._offload = offload
        self._hide_usage = hide_usage

    def __aiter__(self) -> AsyncRecordedStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._iterator.__anext__()
            except StopAsyncIteration:
                await self._end("ok")
                raise
            except BaseException:
                await self._end("stream_error")
                raise
            self._summary.take(chunk)
            if not (self._hide_usage and usage_chunk(chunk)):
                return chunk

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            await self._end("stream_closed")

    async def __aenter__(self) -> AsyncRecordedStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __del__(self) -> None:
        _abandoned(self.__dict__.get("_summary"), self.__dict__.get("_finish"))

    async def _end(self, outcome: str) -> None:
        if self._summary.end():
            await self._offload(self._finish, self._summary.response(), outcome)
