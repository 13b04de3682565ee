"""Which scope each route needs (`required_scope`), one table for the access check of
app/api/access.py.

Scopes are ordered: read < write < admin. POSITION_MANAGER_API_KEY has admin; a stored key
(bin/api-keys) its own scope; a bearer token the scope of its `scope` claim.
"""
from __future__ import annotations

from typing import Callable

import falcon


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
