"""Every URL the gateway forwards to: a configured base URL plus a normalised path.

A caller's path is never handed to an HTTP client as it came (``httpx`` treats an
absolute URL given as a path as absolute, and a client keeps ``..`` and encoded
slashes). :func:`normal_path` first undoes what could hide a segment: percent-encoding
(decoded until nothing changes, so ``%252e`` is ``.`` too), backslashes (``/`` to some
servers), repeated slashes; then it resolves ``.`` and ``..``. A path that climbs out of
its root, holds a control character, or whose first segment looks like a scheme
(``http:``) or a host (``//host``), or that holds a URL further in (a segment
``http:``), is refused: None, which the gateway answers with a
JSON 404 before any connection is made. :func:`upstream_url` joins the result, each
segment percent-encoded again, to the base URL, and checks that the URL still has the
base's scheme, host and port and lies under its path (:func:`same_upstream`, also
checked before the upstream key is attached to any request).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

__all__ = ["normal_path", "same_upstream", "upstream_url"]

_DECODE_ROUNDS = 4
"""Percent-decoding passes: a path still encoded after this many is refused."""
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URL_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:$")  # "http:" from ".../http://host/..."
_SAFE = "-._~!$&'()*+,;=@:"  # kept as they are in a segment (RFC 3986 pchar less '%')


def normal_path(raw: str) -> str | None:
    """``raw`` (the part after the base, percent-encoded or not) as plain segments joined
    by ``/``, with no leading slash; None when it is not a path under the base."""
    text = raw
    for _ in range(_DECODE_ROUNDS):
        try:
            decoded = unquote(text, errors="strict") if "%" in text else text
        except UnicodeDecodeError:
            return None
        if decoded == text:
            break
        text = decoded
    else:
        return None  # still encoded after every pass: refused rather than guessed
    if any(ord(c) < 32 or ord(c) == 127 for c in text) or "?" in text or "#" in text:
        return None
    if text.replace("\\", "/").lstrip().startswith("//"):
        return None  # a network-path reference: //host/...
    segments: list[str] = []
    for segment in text.replace("\\", "/").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                return None  # above the base
            segments.pop()
            continue
        segments.append(segment)
    if segments and _SCHEME.match(segments[0]):
        return None  # http://host/..., https:..., file:...
    if any(_URL_START.match(segment) for segment in segments):
        return None  # a URL further in: .../http://host/...
    return "/".join(segments)


def upstream_url(base_url: str, raw_path: str, query: str = "") -> str | None:
    """``base_url`` + the normalised ``raw_path`` (+ ``?query``), or None when the path
    is refused or the result would leave the base."""
    path = normal_path(raw_path)
    if path is None:
        return None
    base = base_url.rstrip("/")
    url = base + "/" + "/".join(quote(s, safe=_SAFE) for s in path.split("/")) if path else base
    if query:
        url += "?" + query
    return url if same_upstream(base_url, url) else None


def same_upstream(base_url: str, url: str) -> bool:
    """Whether ``url`` has the scheme, host and port of ``base_url`` and lies under its
    path: the only URLs an upstream key may go to."""
    base, target = urlsplit(base_url), urlsplit(url)
    if (base.scheme, base.netloc) != (target.scheme, target.netloc) or target.scheme not in (
        "http",
        "https",
    ):
        return False
    root = base.path.rstrip("/")
    return target.path == root or target.path.startswith(root + "/")
