"""The gateway on the command line: ``keys`` (create, list, revoke) and ``serve``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from .._store.db import Database
from .._store.keys import create_key, list_keys, revoke_key
from ..gateway._config import (
    CONFIG_ENV,
    LOG_FORMATS,
    PASSTHROUGH,
    STORE_ERROR_POLICIES,
    SUMMARIZERS,
    SYSTEM_PROMPTS,
    GatewayConfig,
    describe,
    endpoints,
)
from ..gateway._config import flag as config_flag
from ..gateway._logs import log_config
from ._common import F, db_option, emit, existing_db, json_option, share, user_errors


@click.group()
def keys() -> None:
    """Gateway API keys (only their hashes are stored)."""


@keys.command("create")
@click.option("--user", required=True, help="Who the key belongs to (the gateway tenant).")
@click.option("--admin", is_flag=True, help="May read GET /v1/savings.")
@db_option
@json_option
@user_errors
def keys_create(user: str, admin: bool, db_url: str | None, as_json: bool) -> None:
    """Create a key and print it: it is shown this once."""
    with Database(db_url) as store:
        key, info = create_key(store, user, admin=admin)
    emit({"key": key, "id": info.id, "user": info.user, "admin": info.admin}, as_json, key)
    if not as_json:
        click.echo(
            f"key {info.id} for {user!r}{' (admin)' if admin else ''}: store it now, "
            "it cannot be shown again",
            err=True,
        )


@keys.command("list")
@db_option
@json_option
@user_errors
def keys_list(db_url: str | None, as_json: bool) -> None:
    """List keys: id, prefix, user, admin, created, revoked."""
    with Database(existing_db(db_url, "keys list")) as store:
        found = list_keys(store)
    rows = [
        {
            "id": k.id,
            "prefix": k.prefix,
            "user": k.user,
            "admin": k.admin,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in found
    ]
    emit({"keys": rows}, as_json, _key_table(rows) if rows else "no keys")


def _key_table(rows: list[dict[str, Any]]) -> str:
    """One line per key under a header: id, prefix, user, role, created, revoked."""
    lines = [("ID", "PREFIX", "USER", "ROLE", "CREATED (UTC)", "REVOKED (UTC)")]
    for r in rows:
        revoked = r["revoked_at"][:19].replace("T", " ") if r["revoked_at"] else "-"
        role = "admin" if r["admin"] else "user"
        created = r["created_at"][:19].replace("T", " ")
        lines.append((str(r["id"]), r["prefix"] + "...", r["user"], role, created, revoked))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


@keys.command("revoke")
@click.argument("key_id")
@db_option
@user_errors
def keys_revoke(key_id: str, db_url: str | None) -> None:
    """Revoke a key by its id or prefix (see ``keys list``)."""
    with Database(existing_db(db_url, "keys revoke")) as store:
        revoked = revoke_key(store, key_id)
    if not revoked:
        raise click.ClickException(f"no active key with id or prefix {key_id!r}")
    click.echo(f"revoked {revoked} key(s)")


GATEWAY_INSTALL = "the package is not on an index: from its checkout, pip install '.[gateway]'"
_SERVE_DEFAULTS = {f.name: f.default for f in fields(GatewayConfig)}


def _serve_option(name: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    """The ``serve`` flag for GatewayConfig field ``name`` (its default shown), also read
    from ``$CONTEXT_TRIMMER_<NAME>``."""
    kwargs.setdefault("default", _SERVE_DEFAULTS[name])
    return click.option(
        config_flag(name),
        name,
        envvar=f"CONTEXT_TRIMMER_{name.upper()}",
        show_envvar=True,
        show_default=kwargs["default"] is not None,
        help=help,
        **kwargs,
    )


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@db_option
@_serve_option("workers", "Worker processes.")
@_serve_option(
    "upstream",
    "OpenAI-compatible base URL (default: $OPENAI_BASE_URL, else OpenAI).",
    metavar="URL",
)
@_serve_option("upstream_key_env", "Environment variable holding the upstream API key.")
@_serve_option(
    "summarizer",
    "Who writes the summaries: the upstream's model, or locally without model calls "
    "(default: openai, at the upstream).",
    type=click.Choice(SUMMARIZERS),
)
@_serve_option("summary_model", "Model for summaries and --system-prompt llm rewrites.")
@_serve_option(
    "summary_base_url",
    "Send summaries and prompt rewrites here instead of the upstream (needs --summary-key-env).",
    metavar="URL",
)
@_serve_option(
    "summary_key_env",
    "Environment variable holding the key for summaries (default: the upstream's).",
)
@_serve_option("keep_last", "Messages sent verbatim.", type=int)
@_serve_option("fold_every", "Messages folded into the summary at once.", type=int)
@_serve_option("summary_tokens", "Summary budget in tokens.", type=int)
@_serve_option(
    "summary_share",
    "Grow the summary budget to this share of the history it replaces "
    "(never above --summary-tokens); off: a fixed --summary-tokens.",
    type=share,
)
@_serve_option("recall_tokens", "Budget of the recalled earlier messages (0: no recall).", type=int)
@_serve_option(
    "recall_share",
    "Recall at most this share of the history's tokens too; off: --recall-tokens alone.",
    type=share,
)
@_serve_option("max_tokens", "max_tokens set on requests that give none.", type=int)
@_serve_option(
    "system_prompt",
    "System prompt compression: safe (local), llm (rewritten by --summary-model), off.",
    type=click.Choice(SYSTEM_PROMPTS),
)
@_serve_option("fallback_model", "Model to use when one stays 429.")
@_serve_option("user_tokens_per_minute", "Token quota per end user and minute.", type=int)
@_serve_option("user_tokens_per_day", "Token quota per end user and UTC day.", type=int)
@_serve_option("max_body_bytes", "Largest request body accepted.", type=int)
@_serve_option(
    "key_cache_seconds", "How long a checked gateway key is trusted (revocation delay).", type=float
)
@_serve_option(
    "on_store_error",
    "When the history store is down: answer 503 (raise), or send requests upstream "
    "untrimmed (passthrough).",
    type=click.Choice(STORE_ERROR_POLICIES),
)
@_serve_option("metrics_public", "Serve GET /metrics without a key.", is_flag=True)
@_serve_option(
    "passthrough",
    "Forward the other /v1 endpoints (stateless ones, and each tenant's own files, "
    "responses, batches...) or refuse them.",
    type=click.Choice(PASSTHROUGH),
)
@_serve_option("log_format", "Log lines as text or JSON.", type=click.Choice(LOG_FORMATS))
@_serve_option(
    "folds",
    "Where due folds run: this process's thread, or jobs for `context-trimmer worker` "
    "(PostgreSQL only).",
    type=click.Choice(["thread", "queue"]),
)
@_serve_option(
    "config",
    "TOML file with [[upstreams]] (name, base_url, api_key_env, models, tpm, rpm, azure, "
    "api_version): each request goes to the one with the most budget left.",
    metavar="FILE",
)
@user_errors
def serve(host: str, port: int, **settings: Any) -> None:
    """Run the OpenAI-compatible gateway: point any client's base URL at it.

    Every option can also be set by the environment variable shown. The settings in
    effect are printed at start-up (key variable names, never keys).
    """
    config = GatewayConfig(**settings)
    ends = endpoints(config, os.environ)
    try:
        import uvicorn

        from ..gateway import _app as gateway
        from ..gateway._http import protocol
    except ModuleNotFoundError as missing:
        raise click.ClickException(
            f"the gateway needs {missing.name}; {GATEWAY_INSTALL}"
        ) from missing
    Database(config.db_url).close()  # migrate once, before the workers start
    click.echo(f"context-trimmer gateway on http://{host}:{port}/v1", err=True)
    click.echo(describe(config, ends), err=True)
    if config.workers == 1:
        uvicorn.run(
            gateway.create_app(config), host=host, port=port, http=protocol(), **_logging(config)
        )
        return
    os.environ[CONFIG_ENV] = config.to_json()  # one value, read back by each worker
    uvicorn.run(
        "context_trimmer.gateway:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=config.workers,
        http=protocol(),  # malformed requests answered in JSON, as every refusal
        **_logging(config),
        **_worker_patience(uvicorn.run),
    )


def _logging(config: GatewayConfig) -> dict[str, Any]:
    """uvicorn's logging: our handlers (request ids; JSON lines if asked), and our access
    line in place of uvicorn's."""
    return {"log_config": log_config(config.log_format), "access_log": False}


def _worker_patience(run: Callable[..., Any]) -> dict[str, Any]:
    """A worker answers uvicorn's health check only once its imports are done, which
    takes longer than uvicorn's 5 s on a busy host: give it 30 s where uvicorn lets us
    (0.37 and later), rather than have it killed and restarted in a loop."""
    if "timeout_worker_healthcheck" in inspect.signature(run).parameters:
        return {"timeout_worker_healthcheck": 30}
    return {}
