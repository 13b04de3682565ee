"""Scoped API keys in the API: the stored-key lookup that AuthMiddleware calls when no
environment key matched, and the scope check of every route.

Environment keys (POSITION_MANAGER_API_KEY and the keys of POSITION_MANAGER_RATE_LIMIT_OVERRIDES)
are admin keys. A stored key (bin/api-keys) has its scope and its own rate limit (the default
limit when it has none). Which scope a request needs is decided in one table, `required_scope`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import falcon

from app.api.errors import ApiError
from app.api.keys import digest, scope_allows
from app.api.middleware import connection
from app.db import q


@dataclass(frozen=True)
class StoredKey:
    name: str
    scope: str
    rate_limit: int
    key_hash: str


def stored_key_lookup(default_rate_limit: int) -> Callable[[falcon.Request, str], StoredKey | None]:
    """lookup(req, key) for AuthMiddleware: one index probe per request, so a revoked key stops
    working at once in every worker (no cache to expire)."""

    def lookup(req: falcon.Request, key: str) -> StoredKey | None:
        if len(key) > 256:  # no key of ours is that long; do not hash megabytes
            return None
        hashed = digest(key)
        name, scope, rate_limit = connection(req).execute(q("extras_api_key_lookup"), {"key_hash": hashed}).fetchone()
        if name is None:
            return None
        stored = StoredKey(name, scope, rate_limit or default_rate_limit, hashed)
        req.context.stored_key = stored
        return stored

    return lookup


def key_scope(req: falcon.Request) -> str | None:
    """The scope of the request's key: its own for a stored key, admin for an environment key."""
    if req.context.get("api_key") is None:
        return None
    stored = req.context.get("stored_key")
    return stored.scope if stored else "admin"


# (method, route template) -> the scope it needs; a callable decides from the request.
# Anything not listed: GET/HEAD need read, every other method needs write.
_SCOPES: dict[tuple[str, str], str | Callable[[falcon.Request], str]] = {
    ("POST", "/api/v1/positions/{asset}/validate"):
        lambda req: "admin" if req.get_param("fix_discrepancies") == "true" else "read",
    ("DELETE", "/api/v1/positions/{asset}"): "admin",
    ("GET", "/api/v1/api-keys"): "admin",
    ("POST", "/api/v1/api-keys"): "admin",
    ("DELETE", "/api/v1/api-keys/{name}"): "admin",
}


def required_scope(req: falcon.Request) -> str:
    rule = _SCOPES.get((req.method, req.uri_template or ""))
    if rule is None:
        return "read" if req.method in ("GET", "HEAD") else "write"
    return rule(req) if callable(rule) else rule


class ScopeMiddleware:
    """403 when the key's scope is below what the route needs (after routing, before the resource)."""

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        scope = key_scope(req)
        if scope is None or resource is None:
            return  # a public path (/health, /openapi.yaml) or no route (404 follows)
        needed = required_scope(req)
        if not scope_allows(scope, needed):
            stored = req.context.get("stored_key")
            name = stored.name if stored else "this key"
            raise ApiError(403, "forbidden", f"key {name} has scope {scope}; {req.method} {req.uri_template} needs {needed}")
