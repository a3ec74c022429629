"""``GET /metrics``: the gateway in the Prometheus text format (version 0.0.4), by hand.

Two sources, named by the metric:

- In this process (``context_trimmer_http_*``, ``context_trimmer_passthrough_*``,
  ``context_trimmer_passthrough_upstream_429_total``): every request the gateway
  answered, by endpoint, model, status and tenant (the key's user), its latency as a
  histogram (until the last byte of the body, streams included), the requests passed
  through, and the 429s the upstream gave them. With ``--workers N`` each worker counts
  its own; Prometheus adds them up per instance.
- From the store (``context_trimmer_store_*``): the ledger's totals that every worker
  and wrapped client on the same database writes: prompt tokens as given and as sent,
  tokens saved, summaries, summary failures and fallbacks, 429s the trimmed calls
  received (and retried or fell back from), fallbacks to the fallback model. They are
  read with the savings report at most every :data:`STORE_SECONDS` seconds, and fall
  only when ``forget`` or ``prune`` erase rows. ``context_trimmer_store_up`` is 1 when
  the store answered, 0 when it did not (its figures are then left out).

:class:`Observe` is the ASGI middleware that times and counts each request and gives it
a request id (see ``gateway._logs``); a handler adds the model and tenant with :func:`note`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._exceptions import TrimmerError
from ._logs import REQUEST_ID, new_request_id

__all__ = ["Metrics", "Observe", "endpoint_family", "note", "render_metrics"]

access_log = logging.getLogger("context_trimmer.access")
STORE_SECONDS = 5.0
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OBSERVED = "context_trimmer.observed"
_FAMILIES = frozenset(
    {
        "assistants",
        "audio",
        "batches",
        "chat",
        "completions",
        "containers",
        "conversations",
        "embeddings",
        "evals",
        "files",
        "fine_tuning",
        "images",
        "models",
        "moderations",
        "realtime",
        "responses",
        "savings",
        "threads",
        "uploads",
        "vector_stores",
    }
)


def endpoint_family(path: str) -> str:
    """A bounded label for a path: ``/v1/files/file-1/content`` -> ``files``,
    ``/v1/chat/completions`` -> ``chat/completions``; unknown ones -> ``other``."""
    parts = path.strip("/").split("/")
    if parts[0] in ("metrics", "healthz") and len(parts) == 1:
        return parts[0]
    if parts[0] != "v1" or len(parts) < 2 or parts[1] not in _FAMILIES:
        return "other"
    if parts[1] == "chat" and parts[2:3] == ["completions"]:
        return "chat/completions"
    return parts[1]


def note(request: Request, **labels: str | None) -> None:
    """Label the request being answered (``model``, ``user``) for the metrics and logs."""
    observed = request.scope.get(_OBSERVED)
    if observed is not None:
        observed.update({k: v for k, v in labels.items() if isinstance(v, str)})


@dataclass
class Histogram:
    buckets: Sequence[float] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1


@dataclass
class Metrics:
    """The counters of this process (updated on the event loop: no lock needed)."""

    requests: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    latency: dict[str, Histogram] = field(default_factory=dict)
    passthroughs: Counter[str] = field(default_factory=Counter)
    passthrough_429s: int = 0
    _store: tuple[float, list[str]] | None = None

    def request(self, endpoint: str, model: str, status: int, user: str, seconds: float) -> None:
        self.requests[(endpoint, model, str(status), user)] += 1
        self.latency.setdefault(endpoint, Histogram()).observe(seconds)

    def passthrough(self, endpoint: str) -> None:
        self.passthroughs[endpoint] += 1

    def upstream_429(self) -> None:
        self.passthrough_429s += 1

    def lines(self) -> list[str]:
        """This process's metrics, in the text format."""
        out = _family("context_trimmer_http_requests_total", "counter", "Requests answered.")
        for (endpoint, model, status, user), value in sorted(self.requests.items()):
            labels = {"endpoint": endpoint, "model": model, "status": status, "user": user}
            out.append(_sample("context_trimmer_http_requests_total", labels, value))
        name = "context_trimmer_http_request_duration_seconds"
        out += _family(name, "histogram", "Time to the last byte of the answer.")
        for endpoint, histogram in sorted(self.latency.items()):
            out += _histogram(name, {"endpoint": endpoint}, histogram)
        name = "context_trimmer_passthrough_requests_total"
        out += _family(name, "counter", "Requests relayed to the upstream untouched.")
        out += [_sample(name, {"endpoint": e}, v) for e, v in sorted(self.passthroughs.items())]
        name = "context_trimmer_passthrough_upstream_429_total"
        out += _family(name, "counter", "429 answers the upstream gave passed-through requests.")
        out.append(_sample(name, {}, self.passthrough_429s))
        return out


class Observe:
    """ASGI middleware: a request id for each request (answered in
    ``x-gateway-request-id``, set for the logs), its latency and status counted in
    :class:`Metrics`, one access log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        token = REQUEST_ID.set(request_id)
        observed: dict[str, Any] = {}
        scope[_OBSERVED] = observed
        status = 500
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-gateway-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            self._record(scope, observed, status, seconds)
            REQUEST_ID.reset(token)

    def _record(self, scope: Scope, observed: dict[str, Any], status: int, seconds: float) -> None:
        endpoint = endpoint_family(scope["path"])
        model, user = observed.get("model", ""), observed.get("user", "")
        self.metrics.request(endpoint, model, status, user, seconds)
        access_log.info(
            "%s %s %s %.3fs",
            scope["method"],
            scope["path"],
            status,
            seconds,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "model": model or None,
                "user": user or None,
            },
        )


async def render_metrics(metrics: Metrics, trimmer: Any) -> Response:
    """The text the scraper reads: this process's counters, then the store's figures."""
    now = time.monotonic()
    cached = metrics._store
    if cached is None or now - cached[0] > STORE_SECONDS:
        cached = metrics._store = (now, await asyncio.to_thread(store_lines, trimmer))
    body = "\n".join([*metrics.lines(), *cached[1]]) + "\n"
    return Response(body, media_type=CONTENT_TYPE)


_PER_MODEL = (
    ("requests", "store_requests_total", "Requests recorded in the ledger."),
    (
        "baseline_tokens_as_given",
        "store_prompt_tokens_given_total",
        "Prompt tokens as the apps gave them.",
    ),
    (
        "baseline_tokens",
        "store_prompt_tokens_baseline_total",
        "Baseline prompt tokens: as given, cut to the context window less the reply.",
    ),
    (
        "over_window_requests",
        "store_over_window_requests_total",
        "Requests whose messages were over the model's context window less the reply.",
    ),
    ("prompt_tokens", "store_prompt_tokens_sent_total", "Prompt tokens as sent, after trimming."),
    ("saved_tokens", "store_tokens_saved_total", "Prompt tokens trimming saved."),
    ("rate_limited_429s", "store_upstream_429_total", "429s the trimmed calls received."),
    ("fallbacks", "store_fallbacks_total", "Requests answered by the fallback model."),
    ("failed_requests", "store_failed_requests_total", "Trimmed requests that failed."),
)
_TOTALS = (
    ("summaries", "store_summaries_total", "Summaries written."),
    ("summary_failures", "store_summary_failures_total", "Summary calls that failed."),
    ("summary_fallbacks", "store_summary_fallbacks_total", "Summaries by the fallback summarizer."),
)


def store_lines(trimmer: Any) -> list[str]:
    """The ledger's figures (blocking: run in a thread), and whether the store answered."""
    up = _family("context_trimmer_store_up", "gauge", "1 if the store answered, else 0.")
    try:
        report = trimmer.report(group_by="model")
    except (TrimmerError, SQLAlchemyError) as error:
        logging.getLogger("context_trimmer.gateway").warning("metrics: store: %s", error)
        return [*up, "context_trimmer_store_up 0"]
    out = [*up, "context_trimmer_store_up 1"]
    for attribute, short, help_text in _PER_MODEL:
        name = "context_trimmer_" + short
        out += _family(name, "counter", help_text)
        for row in report.rows:
            out.append(_sample(name, {"model": row.group}, getattr(row, attribute)))
    for attribute, short, help_text in _TOTALS:
        name = "context_trimmer_" + short
        out += _family(name, "counter", help_text)
        out.append(_sample(name, {}, getattr(report.totals, attribute)))
    return out


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


def _histogram(name: str, labels: dict[str, str], histogram: Histogram) -> Iterable[str]:
    for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
        yield _sample(name + "_bucket", {**labels, "le": _number(bound)}, count)
    yield _sample(name + "_bucket", {**labels, "le": "+Inf"}, histogram.count)
    yield _sample(name + "_sum", labels, histogram.total)
    yield _sample(name + "_count", labels, histogram.count)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
