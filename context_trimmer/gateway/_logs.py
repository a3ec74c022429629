"""The gateway's logs: text (uvicorn's usual lines) or JSON lines (``--log-format json``),
each record with the id of the request it belongs to.

:class:`~._metrics.Observe` gives every request an id (``req_`` and 16 hex digits),
answers it in the ``x-gateway-request-id`` header and sets it in :data:`REQUEST_ID`
while the request is served, so every record logged meanwhile (the gateway's, the
trimmer's, the access line on ``context_trimmer.access``) carries it. A JSON line holds
``time``, ``level``, ``logger``, ``message``, ``request_id`` and the access line's
``method``, ``path``, ``status``, ``duration_ms``, ``model`` and ``user``.
:func:`log_config` is the ``logging.config`` dictionary handed to uvicorn (applied in
each worker process).
"""

from __future__ import annotations

import json
import logging
import secrets
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

__all__ = ["REQUEST_ID", "JsonFormatter", "log_config", "new_request_id"]

REQUEST_ID: ContextVar[str | None] = ContextVar("context_trimmer_request_id", default=None)
_ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "model", "user")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(8)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for name in _ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """The logging configuration for uvicorn and the gateway: ``text`` or ``json``."""
    if log_format == "json":
        formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter"}
    else:
        formatter = {"format": "%(levelname)s:     %(name)s [%(request_id)s] %(message)s"}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "gateway",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    logger = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"gateway": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": logger,
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "context_trimmer": logger,
        },
    }
