"""The gateway's SSE relay: chunks from the upstream to the client, and a clean end
however the stream stops.

The upstream stream is the wrapped client's recorded stream, which records its attempt,
the usage so far (estimated and marked) and settles the quota when it ends, is closed
or fails. So the relay closes it in every case: read to the end, the upstream failing
mid-stream (the client gets the error in-band, then ``[DONE]``), or the client going
away, which is noticed while the relay waits for the upstream, not only at the next
write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("context_trimmer.gateway")


class SSERelay(StreamingResponse):
    """``text/event-stream`` of the chunks of ``stream`` (an async iterator of SDK
    chunks with an async ``close()``), closed when the client goes away."""

    def __init__(self, stream: Any):
        self.upstream = stream
        self.client_gone = False
        self._events = self._relay()
        super().__init__(self._events, media_type="text/event-stream")

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self.upstream:
                yield b"data: " + json.dumps(chunk.to_dict()).encode() + b"\n\n"
        except Exception as error:  # the upstream broke mid-stream: say so, in-band
            if self.client_gone:
                return
            log.warning("upstream stream failed: %s", error)
            failure = {
                "error": {"message": str(error) or type(error).__name__, "type": "upstream_error"}
            }
            yield b"data: " + json.dumps(failure).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

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
