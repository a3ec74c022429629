"""Reading the SDK's response objects, or the same data as plain dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def field_of(obj: Any, name: str) -> Any:
    """``obj.name`` for SDK objects, ``obj[name]`` for dicts, None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
