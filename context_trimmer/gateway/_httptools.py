"""uvicorn's httptools protocol, its parse failures answered in JSON (see
``gateway._http``; apart because it imports httptools, which may not be installed)."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._http import JSON_400, _head

__all__ = ["HttpToolsJSONProtocol"]


class HttpToolsJSONProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, its parse failures answered in JSON."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_head(self.server_state.default_headers) + JSON_400)
        self.transport.close()
