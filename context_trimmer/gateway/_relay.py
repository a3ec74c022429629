"""The gateway's SSE relay: the upstream's bytes to the client as they come, and a
clean end however the stream stops.

The upstream stream is the wrapped client's relayed stream (``_client.relayed``): the bytes
the upstream wrote, read only for accounting, which records its attempt, the usage so
far (estimated and marked) and settles the quota when it ends, is closed or fails. So
the relay closes it in every case: read to the end (the upstream's own ``[DONE]``
passes through), the upstream failing mid-stream (the client gets the error in-band as
an event of its own, then ``[DONE]``), or the client going away, which is noticed while
the relay waits for the upstream, not only at the next write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .._client.relayed import RelayedStream

log = logging.getLogger("context_trimmer.gateway")


def chat_failure(error: Exception) -> bytes:
    """The in-band error of a chat completions stream the upstream broke, and its end."""
    failure = {"error": {"message": str(error) or type(error).__name__, "type": "upstream_error"}}
    return b"data: " + json.dumps(failure).encode() + b"\n\ndata: [DONE]\n\n"


class SSERelay(StreamingResponse):
    """``text/event-stream`` of the bytes of ``stream`` (a :class:`RelayedStream`),
    closed when the client goes away."""

    def __init__(self, stream: RelayedStream, failure: Callable[[Exception], bytes] | None = None):
        self.upstream = stream
        self.failure = failure or chat_failure
        self.client_gone = False
        self._events = self._relay()
        super().__init__(self._events, media_type="text/event-stream")

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        try:
            async for data in self.upstream:
                yield data
        except Exception as error:  # the upstream broke mid-stream: say so, in-band
            if self.client_gone:
                return
            log.warning("upstream stream failed: %s", error)
            cut = b"" if self.upstream.at_event_boundary else b"\n\n"  # end the cut event
            yield cut + self.failure(error)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch, receive)
                try:
                    await self.stream_response(send)
                except OSError:  # the client went away while we wrote
                    self.client_gone = True
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
                await self._close()

    async def _watch(self, receive: Receive) -> None:
        """Close the upstream as soon as the client disconnects: the relay, waiting for
        the next chunk, then stops."""
        await self.listen_for_disconnect(receive)
        self.client_gone = True
        with anyio.CancelScope(shield=True):  # recording the stream must not be cut short
            await self._close()

    async def _close(self) -> None:
        try:
            await self.upstream.close()
        except Exception as error:  # closing a broken connection may fail: it is closed
            log.debug("closing the upstream stream: %s", error)
