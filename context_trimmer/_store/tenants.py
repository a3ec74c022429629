"""Tenants and their end users, as the store names them.

The gateway's key names a tenant; ``X-User-Id`` (or the request's ``user``) an end user
within it. They are stored as one user name that no other tenant can produce: the
tenant's ``\\`` and ``:`` are escaped, then ``:`` and the end user follow (``acme`` +
``alice`` is ``acme:alice``; a tenant named ``acme:bob`` is ``acme\\:bob``, never the end
user ``bob`` of ``acme``). So a tenant's data is its own name, or that name and ``:``
followed by anything: :func:`tenant_users` selects exactly that.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_


def escape_tenant(tenant: str) -> str:
    """``tenant`` with its ``\\`` and ``:`` escaped (``\\\\``, ``\\:``)."""
    return tenant.replace("\\", "\\\\").replace(":", "\\:")


def tenant_user(tenant: str, end_user: str | None) -> str:
    """The stored user name of ``tenant``'s ``end_user`` (or of the tenant itself)."""
    escaped = escape_tenant(tenant)
    return escaped if not end_user else f"{escaped}:{end_user}"


def tenant_users(column: Any, tenant: str) -> Any:
    """A SQL condition: ``column`` names ``tenant`` or one of its end users. Compared
    exactly (``substr``, not ``LIKE``, which SQLite matches without regard to case)."""
    own = escape_tenant(tenant)
    prefix = own + ":"
    return or_(column == own, func.substr(column, 1, len(prefix)) == prefix)
