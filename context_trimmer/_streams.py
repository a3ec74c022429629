"""Streams that record what they carried: every chunk passes through untouched, and
when the stream ends (or is closed) the answering model, the text and the usage (if the
stream reported it) go to ``finish``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ._responses import field_of


class StreamSummary:
    """Collects what a stream said: the answering model, the text, the usage if sent."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.parts: list[str] = []
        self.usage: Any = None
        self.done = False

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


class RecordedStream:
    """The SDK's stream, passed through chunk by chunk; usage recorded at the end."""

    def __init__(
        self,
        stream: Any,
        finish: Callable[[dict[str, Any]], None],
        summary: StreamSummary | None = None,
    ):
        self._stream = stream
        self._iterator = iter(stream)
        self._finish = finish
        self._summary = summary or StreamSummary()

    def __iter__(self) -> RecordedStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._end()
            raise
        self._summary.take(chunk)
        return chunk

    def close(self) -> None:
        self._stream.close()
        self._end()

    def __enter__(self) -> RecordedStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _end(self) -> None:
        if not self._summary.done:
            self._summary.done = True
            self._finish(self._summary.response())


class AsyncRecordedStream:
    """The async SDK stream, passed through chunk by chunk; usage recorded at the end."""

    def __init__(
        self,
        stream: Any,
        finish: Callable[[dict[str, Any]], Awaitable[None]],
        summary: StreamSummary | None = None,
    ):
        self._stream = stream
        self._iterator = stream.__aiter__()
        self._finish = finish
        self._summary = summary or StreamSummary()

    def __aiter__(self) -> AsyncRecordedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            await self._end()
            raise
        self._summary.take(chunk)
        return chunk

    async def close(self) -> None:
        await self._stream.close()
        await self._end()

    async def __aenter__(self) -> AsyncRecordedStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def _end(self) -> None:
        if not self._summary.done:
            self._summary.done = True
            await self._finish(self._summary.response())
