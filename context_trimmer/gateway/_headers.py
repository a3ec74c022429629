"""A request whose header holds a control character is refused with a JSON 400.

uvicorn's parsers disagree on what they let through (httptools refuses ``\\x01`` and
DEL in a header value, h11 passes both on to the app), and what they refuse they answer
in plain text (``gateway._http`` makes that JSON). :class:`RefuseControlCharacters`
closes the gap inside the app: any C0 control character but the tab, or DEL, in a
header's name or value is a 400 before any route runs, whichever parser served it.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from ._guard import error_response

__all__ = ["RefuseControlCharacters"]

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class RefuseControlCharacters:
    """ASGI middleware: 400 ``invalid_header`` for a header with a control character."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if _CONTROL.search(value) or _CONTROL.search(name):
                    shown = name.decode("latin-1")
                    refusal = error_response(
                        400,
                        f"the {shown!r} header holds a control character",
                        param=shown,
                        code="invalid_header",
                    )
                    await refusal(scope, receive, send)
                    return
        await self.app(scope, receive, send)
