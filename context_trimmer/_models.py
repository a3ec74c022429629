"""Model limits and prices: one data table (``data/models.json``) that users can override.

A model name resolves to its longest listed prefix (``gpt-4o-2024-08-06`` -> ``gpt-4o``,
``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``); names that match nothing get the
``default`` entry, whose encoding is o200k_base as OpenAI's newer models use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError

MODELS_ENV = "CONTEXT_TRIMMER_MODELS"
ENCODINGS = ("o200k_base", "cl100k_base")


@dataclass(frozen=True)
class ModelInfo:
    """What the library needs to know about one model. Prices are USD per 1M tokens."""

    name: str
    encoding: str
    context_window: int
    max_output: int
    input_price: float | None = None
    cached_input_price: float | None = None
    output_price: float | None = None
    image_base_tokens: int = 85
    image_tile_tokens: int = 170
    max_tokens_param: str = "max_tokens"

    @property
    def counting_key(self) -> str:
        """Two models with the same key count every message identically."""
        return f"{self.encoding}/{self.image_base_tokens}/{self.image_tile_tokens}"


def _check_entry(name: str, entry: Any) -> dict[str, Any]:
    known = {f.name for f in fields(ModelInfo)} - {"name"}
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"model table entry {name!r} must be an object")
    unknown = set(entry) - known
    if unknown:
        raise ConfigurationError(
            f"model table entry {name!r} has unknown fields {sorted(unknown)}; "
            f"allowed: {sorted(known)}"
        )
    if "encoding" in entry and entry["encoding"] not in ENCODINGS:
        raise ConfigurationError(f"model table entry {name!r}: encoding must be one of {ENCODINGS}")
    return dict(entry)


class ModelTable:
    """Looks up :class:`ModelInfo` by model name, with user overrides on top."""

    def __init__(self, overrides: Mapping[str, Mapping[str, Any]] | None = None):
        table = _load_builtin()
        env_file = os.environ.get(MODELS_ENV)
        if env_file:
            table = _merge(table, _load_file(Path(env_file)))
        if overrides:
            table = _merge(table, {"models": overrides})
        self._default = _check_entry("default", table["default"])
        self._entries = {name: _check_entry(name, entry) for name, entry in table["models"].items()}
        self._prefixes = sorted(self._entries, key=len, reverse=True)
        self._resolved: dict[str, ModelInfo] = {}

    def get(self, model: str) -> ModelInfo:
        """The entry for ``model`` (longest matching prefix, else the default)."""
        info = self._resolved.get(model)
        if info is None:
            entry = dict(self._default)
            prefix = self.matching_prefix(model)
            if prefix is not None:
                entry.update(self._entries[prefix])
            info = self._resolved[model] = ModelInfo(name=model, **entry)
        return info

    def matching_prefix(self, model: str) -> str | None:
        """The table entry ``model`` resolves to, or None for the default."""
        return next((p for p in self._prefixes if model.startswith(p)), None)


def _load_builtin() -> dict[str, Any]:
    text = resources.files("context_trimmer").joinpath("data/models.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _load_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigurationError(
            f"cannot read model table {path} ({MODELS_ENV}): {error}"
        ) from error
    if not isinstance(data, dict):
        raise ConfigurationError(f"model table {path} must hold a JSON object")
    return data


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = {"default": dict(base["default"]), "models": dict(base["models"])}
    merged["default"].update(extra.get("default", {}))
    for name, entry in extra.get("models", {}).items():
        merged["models"][name] = {**merged["models"].get(name, {}), **entry}
    return merged
