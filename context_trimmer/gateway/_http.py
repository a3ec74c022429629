"""uvicorn's HTTP protocols, answering a request they cannot parse as the gateway answers
every refusal: an OpenAI-style JSON 400.

A request whose header holds a control character (or whose request line is broken)
never reaches the app: uvicorn's parser (httptools, else h11) refuses it and answers
``400 Invalid HTTP request received.`` as plain text from ``send_400_response``. These
subclasses write the same status, closing the connection as uvicorn does, with a JSON
body. ``serve`` hands :func:`protocol` to uvicorn as its ``http`` setting (an import
string, so worker processes load it too).
"""

from __future__ import annotations

import importlib.util
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["JSON_400", "H11JSONProtocol", "protocol"]

JSON_400 = json.dumps(
    {
        "error": {
            "message": "Invalid HTTP request: the request line or a header could not be "
            "parsed (a header value may not hold control characters).",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_http_request",
        }
    }
).encode()


def _head(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"HTTP/1.1 400 Bad Request\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(JSON_400)).encode() + b"\r\n",
        b"connection: close\r\n",
        b"\r\n",
    ]
    return b"".join(lines)


class H11JSONProtocol(H11Protocol):
    """uvicorn's h11 protocol, its parse failures answered in JSON."""

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_head(self.server_state.default_headers) + JSON_400)
        self.transport.close()


def protocol() -> str:
    """uvicorn's ``http`` setting: the JSON-answering twin of the parser uvicorn's
    ``auto`` would choose (httptools when installed, else h11)."""
    if importlib.util.find_spec("httptools") is not None:
        return "context_trimmer.gateway._httptools:HttpToolsJSONProtocol"
    return f"{__name__}:H11JSONProtocol"
