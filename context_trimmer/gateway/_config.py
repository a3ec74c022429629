"""The gateway's configuration: one typed, frozen value, checked in one place.

``serve`` builds a :class:`GatewayConfig` from its flags and environment variables (one
field per flag, the same name); ``serve --workers N`` hands it to each worker process
as one JSON value, read back through the same checks. The configuration names the
variables that hold the keys and never holds a key itself, so it is safe to print and to
pass on. :func:`endpoints` resolves it against the environment: where the requests go,
and where summaries and prompt rewrites go (the same upstream, with the same key, unless
the operator names another endpoint).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .._exceptions import ConfigurationError
from .._options import FOLDS, TrimmerOptions
from .._store.db import resolve_url, url_origin
from ._upstreams import UpstreamConfig, UpstreamEndpoint, load_upstreams, resolve

MAX_BODY_BYTES = 4 * 1024 * 1024
CONFIG_ENV = "CONTEXT_TRIMMER_GATEWAY_CONFIG"
OPENAI_URL = "https://api.openai.com/v1"
_LIBRARY = TrimmerOptions()
SUMMARIZERS = ("extractive", "openai")
SYSTEM_PROMPTS = ("safe", "llm", "off")
STORE_ERROR_POLICIES = ("raise", "passthrough")
LOG_FORMATS = ("text", "json")
PASSTHROUGH = ("on", "off")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLAGS = {"db_url": "--db"}  # every other field's flag is its name with dashes


def flag(name: str) -> str:
    """The ``serve`` flag of a :class:`GatewayConfig` field."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway runs: one field per ``serve`` flag (same name, dashes for
    underscores; ``db_url`` is ``--db``), checked when built. It holds the *names* of
    the variables with the keys, never a key, so it can be printed and handed to worker
    processes as it is (:meth:`to_json`, :meth:`from_json`).

    ``summarizer=None`` means the upstream's LLM (``openai``), the gateway always having
    its upstream key. Summaries and prompt rewrites go to the upstream with its key unless
    ``summary_base_url`` (which then needs its own ``summary_key_env``) or
    ``summary_key_env`` say otherwise.
    """

    upstream: str | None = None
    upstream_key_env: str = "OPENAI_API_KEY"
    db_url: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    key_cache_seconds: float = 5.0
    fallback_model: str | None = None
    summarizer: str | None = None
    summary_model: str = "gpt-4o-mini"
    summary_base_url: str | None = None
    summary_key_env: str | None = None
    # The trimming settings default to the library's, measured ones (TrimmerOptions).
    keep_last: int = _LIBRARY.keep_last
    fold_every: int = _LIBRARY.fold_every
    summary_tokens: int = _LIBRARY.summary_tokens
    summary_share: float | None = _LIBRARY.summary_share
    recall_tokens: int = _LIBRARY.recall_tokens
    recall_share: float | None = _LIBRARY.recall_share
    max_tokens: int = _LIBRARY.max_tokens
    system_prompt: str = "safe"
    user_tokens_per_minute: int | None = None
    user_tokens_per_day: int | None = None
    workers: int = 1
    on_store_error: str = "raise"
    metrics_public: bool = False
    passthrough: str = "on"  # off: only chat completions, responses, models, savings
    log_format: str = "text"
    folds: str = "thread"  # or "queue": folds as jobs for `context-trimmer worker` (_queue)
    config: str | None = None

    def __post_init__(self) -> None:
        if self.config is not None:
            if self.upstream is not None:
                raise ConfigurationError("give --upstream or --config FILE, not both")
            object.__setattr__(self, "_upstreams", load_upstreams(self.config))
        for name in ("upstream", "summary_base_url"):
            _check_url(name, getattr(self, name))
        _check_env_name("upstream_key_env", self.upstream_key_env)
        if self.summary_key_env is not None:
            _check_env_name("summary_key_env", self.summary_key_env)
        if self.summary_base_url is not None and self.summary_key_env is None:
            raise ConfigurationError(
                "--summary-base-url needs --summary-key-env: the upstream key is only ever "
                "sent to the upstream"
            )
        for name in ("db_url", "fallback_model"):
            _check_text(name, getattr(self, name), optional=True)
        _check_text("summary_model", self.summary_model)
        _check_choice("summarizer", self.summarizer, SUMMARIZERS, optional=True)
        _check_choice("system_prompt", self.system_prompt, SYSTEM_PROMPTS)
        _check_choice("on_store_error", self.on_store_error, STORE_ERROR_POLICIES)
        _check_choice("log_format", self.log_format, LOG_FORMATS)
        _check_choice("passthrough", self.passthrough, PASSTHROUGH)
        _check_choice("folds", self.folds, FOLDS)
        if self.folds == "queue" and resolve_url(self.db_url).startswith("sqlite"):
            raise ConfigurationError("--folds queue needs a PostgreSQL --db (the queue is in it)")
        for name, minimum in _COUNTS.items():
            _check_count(name, getattr(self, name), minimum)
        for name in ("user_tokens_per_minute", "user_tokens_per_day"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name), 1)
        _check_seconds("key_cache_seconds", self.key_cache_seconds)
        for name in ("summary_share", "recall_share"):
            if getattr(self, name) is not None:
                _check_share(name, getattr(self, name))

    def to_json(self) -> str:
        """The configuration as one JSON object (no secrets: keys stay in their variables)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GatewayConfig:
        """The inverse of :meth:`to_json`, through the same checks."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{CONFIG_ENV} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ConfigurationError(f"{CONFIG_ENV} must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigurationError(f"{CONFIG_ENV} has unknown settings: {', '.join(unknown)}")
        return cls(**data)

    @property
    def upstreams(self) -> tuple[UpstreamConfig, ...]:
        """The ``[[upstreams]]`` of the ``config`` file, read and checked when this value
        was built (each worker reads the file again); empty without one."""
        upstreams: tuple[UpstreamConfig, ...] = self.__dict__.get("_upstreams", ())
        return upstreams


_COUNTS = {
    "max_body_bytes": 1,
    "keep_last": 0,
    "fold_every": 0,
    "summary_tokens": 1,
    "recall_tokens": 0,
    "max_tokens": 1,
    "workers": 1,
}


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{flag(name)} must be an integer >= {minimum}, got {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"{flag(name)} must be a number of seconds >= 0, got {value!r}")


def _check_share(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigurationError(
            f"{flag(name)} must be a number in (0, 1], such as 0.085; got {value!r}"
        )


def _check_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{flag(name)} must be a non-empty string, got {value!r}")


def _check_choice(
    name: str, value: object, choices: tuple[str, ...], *, optional: bool = False
) -> None:
    if (value is None and optional) or value in choices:
        return
    raise ConfigurationError(f"{flag(name)} must be one of {', '.join(choices)}; got {value!r}")


def _check_url(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise ConfigurationError(
            f"{flag(name)} must be an http(s) URL such as https://api.openai.com/v1, got {value!r}"
        )


def _check_env_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ConfigurationError(
            f"{flag(name)} takes the name of an environment variable (such as "
            f"OPENAI_API_KEY), not its value; got {_masked(value)}"
        )


def _masked(value: object) -> str:
    """A value that may be a key pasted in the wrong place: its shape, not its text."""
    if isinstance(value, str) and len(value) > 8:
        return f"a {len(value)}-character value"
    return repr(value)


@dataclass(frozen=True)
class Endpoints:
    """Where the gateway's calls go, with the keys read from the environment.

    Summaries and prompt rewrites go to the upstream, with its key, unless the
    configuration names another endpoint and key: no text leaves for a host the operator
    did not name."""

    upstream_url: str
    upstream_key: str = field(repr=False)
    summarizer: str
    summary_url: str
    summary_key_env: str
    summary_key: str = field(repr=False)
    upstreams: tuple[UpstreamEndpoint, ...] = ()  # the pool, the one above first

    @property
    def calls_a_model(self) -> bool:
        return self.summarizer == "openai"


def endpoints(config: GatewayConfig, environ: Mapping[str, str]) -> Endpoints:
    """Resolve the URLs and keys of ``config`` against ``environ``; ConfigurationError
    says which variable to set."""
    pool = _pool(config, environ)
    summarizer = config.summarizer or "openai"  # the gateway always has the upstream's key
    calls = summarizer == "openai" or config.system_prompt == "llm"
    # Summaries go to the first upstream that is not Azure (no deployment path there).
    own = next((u.config for u in pool if not u.config.azure), None)
    if own is None and config.summary_base_url is None and calls:
        raise ConfigurationError(
            "every upstream is Azure OpenAI, where summaries cannot be sent as they are: "
            "give --summary-base-url with --summary-key-env, or --summarizer extractive"
        )
    own = own or pool[0].config
    upstream_url, upstream_key = pool[0].config.base_url, pool[0].key
    summary_key_env = config.summary_key_env or own.api_key_env
    summary_key = environ.get(summary_key_env, "")
    if not summary_key and calls:
        raise ConfigurationError(
            f"set {summary_key_env} to the API key for summaries (--summary-key-env)"
        )
    return Endpoints(
        upstream_url=upstream_url,
        upstream_key=upstream_key,
        summarizer=summarizer,
        summary_url=config.summary_base_url or own.base_url,
        summary_key_env=summary_key_env,
        summary_key=summary_key,
        upstreams=pool,
    )


def _pool(config: GatewayConfig, environ: Mapping[str, str]) -> tuple[UpstreamEndpoint, ...]:
    """The upstreams with their keys: the configuration file's, else the one upstream."""
    if config.upstreams:
        return resolve(config.upstreams, environ)
    upstream_key = environ.get(config.upstream_key_env)
    if not upstream_key:
        raise ConfigurationError(
            f"set {config.upstream_key_env} to the upstream API key "
            "(--upstream-key-env names another variable)"
        )
    url = config.upstream or environ.get("OPENAI_BASE_URL") or OPENAI_URL
    return (UpstreamEndpoint(UpstreamConfig(None, url, config.upstream_key_env), upstream_key),)


def describe(config: GatewayConfig, ends: Endpoints) -> str:
    """The settings in effect, one per line, for the start-up log (no key, no password)."""
    summary_at = f"at {public_url(ends.summary_url)} with ${ends.summary_key_env}"
    summarizer = (
        f"openai {config.summary_model} {summary_at}"
        if ends.calls_a_model
        else "extractive (local, no model calls)"
    )
    prompt = config.system_prompt + (
        f" (rewrites by {config.summary_model} {summary_at})"
        if config.system_prompt == "llm"
        else ""
    )
    share, recall_share = (
        "off" if value is None else f"{value:g}"
        for value in (config.summary_share, config.recall_share)
    )
    rows = [
        *_upstream_rows(ends),
        ("database", _public_db(config.db_url)),
        ("summarizer", summarizer),
        ("keep last / fold every", f"{config.keep_last} / {config.fold_every} messages"),
        ("summary tokens / share", f"{config.summary_tokens} / {share}"),
        ("recall tokens / share", f"{config.recall_tokens or 'off'} / {recall_share}"),
        ("folds", "jobs for context-trimmer worker" if config.folds == "queue" else "thread"),
        ("max tokens", str(config.max_tokens)),
        ("system prompt", prompt),
        ("fallback model", config.fallback_model or "none"),
        ("user tokens per minute", _limit(config.user_tokens_per_minute)),
        ("user tokens per day", _limit(config.user_tokens_per_day)),
        ("body limit", f"{config.max_body_bytes:,} bytes"),
        ("key cache", f"{config.key_cache_seconds:g} s"),
        ("workers", str(config.workers)),
        ("on store error", config.on_store_error),
        ("metrics", "GET /metrics, " + ("public" if config.metrics_public else "admin keys")),
        ("log format", config.log_format),
        ("passthrough", _passthrough(config.passthrough)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _upstream_rows(ends: Endpoints) -> list[tuple[str, str]]:
    rows = []
    for number, upstream in enumerate(ends.upstreams, start=1):
        u = upstream.config
        text = f"{public_url(u.base_url)} with ${u.api_key_env}"
        if u.name is not None:
            text = f"{u.name}: {text}"
        if u.azure:
            text += f" (Azure, api-version {u.api_version})"
        if u.models is not None:
            text += " for " + ", ".join(
                f"{m} as {u.models[m]}" if isinstance(u.models, Mapping) and u.models[m] != m else m
                for m in u.models
            )
        if u.limits is not None:
            text += f", {_limit(u.tpm)} TPM / {_limit(u.rpm)} RPM until headers say"
        rows.append(("upstream" if len(ends.upstreams) == 1 else f"upstream {number}", text))
    return rows


def _passthrough(setting: str) -> str:
    if setting == "off":
        return "off (chat completions, responses, models and savings only)"
    return "on (stateless endpoints, and each tenant's own objects)"


def _limit(value: int | None) -> str:
    return "no limit" if value is None else f"{value:,}"


def public_url(url: str) -> str:
    """``url`` without any user or password in it."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _public_db(url: str | None) -> str:
    """The store in effect, resolved (no password), and where its URL came from."""
    try:
        resolved = make_url(resolve_url(url)).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(not a database URL)"
    return f"{resolved} (from {url_origin(url)})"
