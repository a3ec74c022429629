"""The passthrough: ``/v1/...`` requests the gateway does not answer itself, relayed to
the upstream with the upstream key, by allow-list and scoped by tenant.

Every forwarded URL is built by :func:`~._upstream_url.upstream_url` from the
configured base URL and the request's raw path, normalised (a path that leaves the base
or names a host is a JSON 404 before any connection). :func:`~._gateway_objects.classify`
says what may pass; objects are owned by the tenant that created them
(:class:`~._ownership.Ownership`). Bodies stream both ways, less the hop-by-hop
headers, except where the gateway must read one: a JSON request body that may name
objects, and the answer to a create (its id is recorded), a list (filtered to the
caller's objects) or an owned object (files made for it become the caller's).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .._client.upstream_url import normal_path, same_upstream, upstream_url
from .._store.keys import KeyInfo
from .._store.ownership import Ownership
from .._store.tenants import tenant_user
from ._guard import error_response
from ._metrics import Metrics, endpoint_family, note
from ._objects import Target, claimed, classify, no_such_object, not_forwarded, references

try:
    import httpx2 as httpx  # openai 3.x is built on httpx2
except ModuleNotFoundError:  # pragma: no cover (openai 2.x is built on httpx)
    import httpx  # type: ignore[no-redef]

__all__ = ["Passthrough", "forward", "request_path"]

PASSTHROUGH_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "x-user-id", "x-conversation-id"}
_REWRITTEN = {"content-length", "content-encoding"}  # an answer read whole is re-encoded


class Passthrough:
    """The upstream the passthrough reaches (its base URL and key), the HTTP client it
    shares, and the object owners; ``enabled`` False refuses every request."""

    def __init__(self, base_url: str, key: str, ownership: Ownership, *, enabled: bool = True):
        self.base_url = base_url
        self._key = key
        self.ownership = ownership
        self.enabled = enabled
        self.http = httpx.AsyncClient(timeout=PASSTHROUGH_TIMEOUT, follow_redirects=False)

    def authorization(self, url: str) -> dict[str, str]:
        """The upstream key's header, for a URL under the upstream's base only."""
        if not same_upstream(self.base_url, url):
            raise ValueError(f"refusing to send the upstream key to {url!r}")
        return {"authorization": f"Bearer {self._key}"}

    async def owners(self, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        db = self.ownership.db
        return await db.offload(self.ownership.owners, ids)

    async def record(self, tenant: str, objects: dict[str, str]) -> None:
        if objects:
            await self.ownership.db.offload(self.ownership.record, tenant, objects.items())

    async def aclose(self) -> None:
        await self.http.aclose()


def request_path(request: Request) -> str | None:
    """The request's path under ``/v1``, normalised from the raw bytes the client sent
    (what follows ``/v1`` is a path relative to the upstream's base: ``//host`` or
    ``..`` there is refused); None when it is not one."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    if not raw.startswith(b"/v1/"):
        return None
    try:
        return normal_path(raw[3:].decode("ascii"))
    except UnicodeDecodeError:
        return None


def refused_path(request: Request) -> Response:
    return error_response(
        404,
        f"Unknown path: {request.method} {request.url.path}. The gateway forwards paths under "
        "/v1 only, with no host, scheme or '..' in them.",
        code="unknown_url",
    )


async def forward(request: Request, key: KeyInfo) -> Response:
    """Check, then relay ``request`` for ``key``'s tenant."""
    passthrough: Passthrough = request.app.state.passthrough
    path = request_path(request)
    if path is None:
        return refused_path(request)
    if not passthrough.enabled:
        return error_response(
            404,
            f"{request.method} {request.url.path} is not served: this gateway runs with "
            "--passthrough off (chat completions and responses only).",
            code="passthrough_off",
        )
    target = classify(request.method, path)
    if target is None and not key.admin:
        return not_forwarded(request.method, path)
    tenant = tenant_user(key.user, None)
    note(request, user=key.user)
    if target is not None and target.object_id is not None and not key.admin:
        refused = await _check_path(passthrough, tenant, target)
        if refused is not None:
            return refused
    body: bytes | None = None
    if _json_body(request) and (target is None or target.reads_body):
        read = await _read_checked(request, passthrough, tenant, key.admin)
        if isinstance(read, Response):
            return read
        body = read
    metrics: Metrics = request.app.state.metrics
    metrics.passthrough(endpoint_family(request.url.path))
    return await _relay(request, passthrough, path, body, target, tenant, key.admin)


async def _check_path(passthrough: Passthrough, tenant: str, target: Target) -> Response | None:
    """404 unless ``tenant`` owns the object the path names, and no later segment is
    another tenant's object."""
    assert target.object_id is not None
    owners = await passthrough.owners({target.object_id, *target.rest})
    if owners.get(target.object_id) != tenant:
        return no_such_object(target.object_id)
    for segment in target.rest:
        if owners.get(segment, tenant) != tenant:
            return no_such_object(segment)
    return None


def _json_body(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return request.method in ("POST", "PUT", "PATCH") and kind in ("application/json", "")


async def _read_checked(
    request: Request, passthrough: Passthrough, tenant: str, admin: bool
) -> bytes | Response:
    """The request body, read up to the size limit; a 404 when it names an object that
    is not the caller's (the body is forwarded as it came)."""
    limit = request.app.state.config.max_body_bytes
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > limit:
            return error_response(413, f"request body over {limit:,} bytes", code="body_too_large")
    if admin or not data:
        return bytes(data)
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return bytes(data)  # not JSON after all: the upstream answers it, naming nothing
    refused = await check_references(passthrough, tenant, body)
    return refused if refused is not None else bytes(data)


async def check_references(passthrough: Passthrough, tenant: str, body: Any) -> Response | None:
    """404 for the first object ``body`` names that ``tenant`` does not own."""
    named = references(body)
    if not named:
        return None
    owners = await passthrough.owners(named)
    for object_id in sorted(named):
        if owners.get(object_id) != tenant:
            return no_such_object(object_id)
    return None


async def _relay(
    request: Request,
    passthrough: Passthrough,
    path: str,
    body: bytes | None,
    target: Target | None,
    tenant: str,
    admin: bool,
) -> Response:
    url = upstream_url(passthrough.base_url, path, request.url.query)
    if url is None:
        return refused_path(request)
    headers = [(n, v) for n, v in request.headers.items() if n.lower() not in _NOT_FORWARDED]
    if body is not None:
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    headers += list(passthrough.authorization(url).items())
    streamed = request.method not in ("GET", "HEAD", "OPTIONS", "DELETE") or bool(
        request.headers.get("content-length") or request.headers.get("transfer-encoding")
    )
    content: Any = body if body is not None else (request.stream() if streamed else None)
    outgoing = passthrough.http.build_request(request.method, url, headers=headers, content=content)
    try:
        answer = await passthrough.http.send(outgoing, stream=True)
    except httpx.HTTPError as error:
        return error_response(
            502,
            f"the upstream could not be reached: {type(error).__name__}",
            kind="upstream_error",
            code="upstream_unreachable",
        )
    if answer.status_code == 429:
        request.app.state.metrics.upstream_429()
    relayed = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
    if target is not None and target.inspects_answer and _is_json(answer):
        try:
            data = await answer.aread()
        finally:
            await answer.aclose()
        data = await _inspected(passthrough, target, tenant, admin, answer.status_code, data)
        kept = {k: v for k, v in relayed.items() if k.lower() not in _REWRITTEN}
        return Response(data, status_code=answer.status_code, headers=kept)
    return StreamingResponse(
        answer.aiter_raw(),
        status_code=answer.status_code,
        headers=relayed,
        background=BackgroundTask(answer.aclose),
    )


def _is_json(answer: Any) -> bool:
    return "json" in answer.headers.get("content-type", "")


async def _inspected(
    passthrough: Passthrough, target: Target, tenant: str, admin: bool, status: int, data: bytes
) -> bytes:
    """The answer's bytes after recording what it created for ``tenant`` and, for a
    list, keeping only ``tenant``'s objects (an admin sees every object)."""
    if not 200 <= status < 300:
        return data
    try:
        answer = json.loads(data)
    except ValueError:
        return data
    if not isinstance(answer, dict):
        return data
    made = {i: "file" for i in claimed(answer)}
    if target.create and isinstance(answer.get("id"), str):
        made[answer["id"]] = target.kind
    await passthrough.record(tenant, made)
    if target.listing and not admin and isinstance(answer.get("data"), list):
        return _filtered(await _owned_items(passthrough, tenant, answer["data"]), answer)
    return data


async def _owned_items(passthrough: Passthrough, tenant: str, items: list[Any]) -> list[Any]:
    ids = {
        item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)
    }
    owners = await passthrough.owners(ids)
    return [
        item
        for item in items
        if isinstance(item, dict) and owners.get(str(item.get("id"))) == tenant
    ]


def _filtered(items: list[Any], answer: dict[str, Any]) -> bytes:
    kept = {**answer, "data": items}
    if "first_id" in answer:
        kept["first_id"] = items[0]["id"] if items else None
    if "last_id" in answer:
        kept["last_id"] = items[-1]["id"] if items else None
    return json.dumps(kept).encode()
