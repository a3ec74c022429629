"""``context-trimmer serve``: an OpenAI-compatible gateway with trimming built in.

The app (``_app``: lifespan, chat completions, models, savings, healthz), the other
routes (``_routes``: Responses, the tenant-scoped passthrough, metrics), the guards
(``_guard``: bodies, identity, keys, store health; ``_headers`` and ``_http``: JSON
for what uvicorn's parsers refuse), the passthrough by allow-list with objects owned per
tenant (``_passthrough``, ``_objects``), the SSE relay (``_relay``), the configuration
(``_config``, ``_upstreams``), logs and metrics. It may import the facade
and everything below it; only the CLI imports it.
"""

from ._app import GatewayConfig, app_from_env, create_app, error_response

__all__ = ["GatewayConfig", "app_from_env", "create_app", "error_response"]
