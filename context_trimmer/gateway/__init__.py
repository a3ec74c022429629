"""``context-trimmer serve``: an OpenAI-compatible gateway with trimming built in.

The app (``_app``: lifespan, chat completions, models, savings, healthz), the other
routes (``_routes``: Responses, the tenant-scoped passthrough, metrics), the guards
(``_guard``: bodies, identity, keys, store health; ``_headers`` and ``_http``: JSON
for what uvicorn's parsers refuse), the passthrough by allow-list with objects owned per
tenant (``_passthrough``, ``_objects``), the SSE relay (``_relay``), the configuration
(``_config``, ``_upstreams``), logs and metrics. It may import the facade and everything
below it; only the CLI imports it.

The server's packages (starlette, uvicorn) are the ``gateway`` extra: the app's names
load on first use, so the CLI (which reads the configuration) runs without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._config import GatewayConfig

if TYPE_CHECKING:
    from ._app import app_from_env, create_app
    from ._guard import error_response

__all__ = ["GatewayConfig", "app_from_env", "create_app", "error_response"]

_LAZY = {"app_from_env": "._app", "create_app": "._app", "error_response": "._guard"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
