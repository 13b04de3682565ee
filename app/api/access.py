"""Who is asking, and may they: the credentials, scope and rate limit of every API request.

A request presents one credential:
  - `X-API-Key: <POSITION_MANAGER_API_KEY>`: the environment key, scope admin, compared in constant
    time (SHA-256 digests compared with hmac.compare_digest: neither the key's content nor its length
    shows in the timing);
  - `X-API-Key: <key made by bin/api-keys>`: a stored key (pm.api_keys, only its digest is kept),
    with its own scope and limit, looked up in the database on every request (a revoked key stops at once);
  - `Authorization: Bearer <JWT>` when POSITION_MANAGER_JWT_SECRET is set: HS256 only, `exp`, `sub`
    and `scope` (read|write|admin) required; the subject is the actor of the audit trail.
POSITION_MANAGER_RATE_LIMIT_OVERRIDES only sets limits (`key:limit`) of keys accepted by the above;
a key listed there and nowhere else is refused like any unknown key.

What needs no database is decided in Python, at once: no or malformed credential, a bad token -> 401;
a known scope below the route's -> 403. What needs it (a stored key's lookup, the token of the rate
limit) is one statement, pm.api_admit, run before the resource touches the database. A resource
may instead fold admission into its own statement (`ADMITS_IN_QUERY`: GET /api/v1/positions/{asset}
reads key, token and position in one round trip, pm.api_read_position); admission then still
happens before any other statement (app.api.middleware.connection), error (app.api.errors.handle)
or response goes out.
"""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

import falcon
import jwt

from app.api import docs, errors
from app.api.errors import ApiError
from app.api.extras.auth import required_scope
from app.api.keys import SCOPES, digest, scope_allows
from app.api.metrics import RATE_LIMITED
from app.api.middleware import raw_connection
from app.db import q
from app.settings import Settings


# Paths that need no credential: load balancers, metrics scrapers (they carry no key names and no
# secrets), the schema and its browsable page (/docs and its assets).
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.yaml"}) | docs.PATHS
# No key of ours is longer; a longer header is refused before it is hashed.
KEY_MAX_LENGTH = 256
TOKEN_MAX_LENGTH = 4096
_SUBJECT = re.compile(r"^[\x21-\x7e]{1,128}$")   # printable ASCII, no spaces or control characters


@dataclass
class Caller:
    """The credential of a request. key_hash names its rate-limit bucket."""
    kind: str                 # "env" | "stored" | "jwt"
    key_hash: str
    scope: str | None         # None until a stored key was looked up
    limit: int | None         # an override (or the environment key's limit); None: the key's own / the default
    name: str | None = None   # a stored key's name, a token's subject

    @property
    def actor(self) -> str:
        """Who asked, for the audit trail; never the key itself."""
        if self.kind == "stored" and self.name:
            return f"key:{self.name}"
        if self.kind == "jwt":
            return f"jwt:{self.name}"
        return "api:" + self.key_hash[:12]


class Admission:
    """The database part of admitting one request, run at most once (pm.api_admit, or folded into a
    resource's statement). Outcomes other than ok raise the error response; the rate-limit headers
    go on the response either way."""

    def __init__(self, req: falcon.Request, resp: falcon.Response, caller: Caller, needed: str, limited: bool,
                 default_limit: int):
        self.req, self.resp, self.caller = req, resp, caller
        self.needed, self.limited, self.default_limit = needed, limited, default_limit
        self.done = False

    def args(self) -> dict:
        """The admission arguments of pm.api_admit / pm.api_read_position."""
        self.done = True
        return {"key_hash": self.caller.key_hash, "scope": self.caller.scope, "limit": self.caller.limit,
                "default_limit": self.default_limit, "needed": self.needed, "limited": self.limited}

    def run(self, conn=None) -> None:
        conn = conn if conn is not None else raw_connection(self.req)
        self.apply(*conn.execute(q("api_admit"), self.args()).fetchone())

    def apply(self, outcome: str, key_name: str | None, scope: str | None, rate_limit: int | None,
              remaining: int | None, retry_after: float | None) -> None:
        self.done = True
        if outcome == "unknown_key":
            raise ApiError(401, "unauthorized", "missing or invalid X-API-Key header")
        if key_name is not None:
            self.caller.name = key_name
        self.caller.scope = scope
        if outcome == "forbidden":
            _forbidden(self.req, self.caller, self.needed)
        if remaining is not None:
            self.resp.set_header("X-RateLimit-Limit", str(rate_limit))
            self.resp.set_header("X-RateLimit-Remaining", str(remaining))
        if outcome == "rate_limited":
            RATE_LIMITED.inc()
            wait = max(1, -int(-retry_after // 1))  # whole seconds, rounded up
            raise ApiError(429, "rate_limited",
                           f"rate limit of {rate_limit} requests per minute exceeded; retry in {wait} s",
                           {"Retry-After": str(wait)})


def _forbidden(req: falcon.Request, caller: Caller, needed: str):
    who = f"key {caller.name}" if caller.kind == "stored" else ("this token" if caller.kind == "jwt" else "this key")
    raise ApiError(403, "forbidden", f"{who} has scope {caller.scope}; {req.method} {req.uri_template} needs {needed}")


def read_args(req: falcon.Request, admission: Admission | None) -> dict:
    """The admission arguments of a statement that folds admission in: the pending admission's, or,
    when nothing is left to ask the database (no rate limit, a key checked in Python), arguments
    that only read."""
    if admission is not None:
        return admission.args()
    caller = req.context.caller
    return {"key_hash": caller.key_hash, "scope": caller.scope, "limit": caller.limit, "default_limit": 1,
            "needed": "read", "limited": False}


def pending(req: falcon.Request) -> Admission | None:
    """The request's admission when it has not run yet (for a resource that folds it into its statement)."""
    admission = req.context.get("admission")
    return admission if admission is not None and not admission.done else None




class AccessMiddleware:
    """Credentials in process_request (401 without touching the database when it can), scope and
    admission in process_resource (after routing: the route decides the scope it needs)."""

    def __init__(self, settings: Settings):
        self.env_digest = digest(settings.api_key).encode()
        self.env_limit = settings.api_key_limit()
        # overrides of stored keys, by digest (the presented key is hashed anyway)
        self.override_limits = {digest(key): limit for key, limit in settings.rate_limit_overrides.items()}
        self.default_limit = settings.rate_limit_default
        self.limited = settings.rate_limit_enabled
        self.jwt_secret = settings.jwt_secret or None

    # -------------------------------------------------------------- credentials

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.caller = None
        req.context.admission = None
        if req.path in PUBLIC_PATHS:
            return
        key = req.get_header("X-API-Key")
        if key is not None:
            req.context.caller = self._key(key)
            return
        authorization = req.get_header("Authorization")
        if authorization is not None and self.jwt_secret:
            req.context.caller = self._token(authorization)
            return
        raise ApiError(401, "unauthorized", "missing or invalid X-API-Key header"
                       + (" (or Authorization: Bearer token)" if self.jwt_secret else ""))

    def _key(self, key: str) -> Caller:
        if not key or len(key) > KEY_MAX_LENGTH:
            raise ApiError(401, "unauthorized", "missing or invalid X-API-Key header")
        hashed = digest(key)
        if hmac.compare_digest(hashed.encode(), self.env_digest):
            return Caller("env", hashed, "admin", self.env_limit)
        return Caller("stored", hashed, None, self.override_limits.get(hashed))

    def _token(self, authorization: str) -> Caller:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > TOKEN_MAX_LENGTH:
            raise ApiError(401, "unauthorized", "expected Authorization: Bearer <token>")
        try:
            claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"],
                                options={"require": ["exp", "sub", "scope"]})
        except jwt.PyJWTError as exc:
            raise ApiError(401, "unauthorized", f"invalid bearer token: {exc}") from None
        subject, scope = claims["sub"], claims["scope"]
        if not isinstance(subject, str) or not _SUBJECT.match(subject):
            raise ApiError(401, "unauthorized", "invalid bearer token: sub must be 1-128 printable characters")
        if scope not in SCOPES:
            raise ApiError(401, "unauthorized", f"invalid bearer token: scope must be one of {', '.join(SCOPES)}")
        return Caller("jwt", digest("jwt:" + subject), scope, None, subject)

    # -------------------------------------------------------------- scope and admission

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        caller = req.context.get("caller")
        if caller is None:
            return  # a public path
        needed = required_scope(req)
        if caller.scope is not None and not scope_allows(caller.scope, needed):
            _forbidden(req, caller, needed)
        limited = self.limited and getattr(resource, "RATE_LIMITED", True)
        if caller.kind != "stored" and not limited:
            return  # nothing left to ask the database
        admission = Admission(req, resp, caller, needed, limited, self.default_limit)
        req.context.admission = admission
        if req.method not in getattr(resource, "ADMITS_IN_QUERY", ()):
            admission.run()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        """No response leaves before its request was admitted: a resource that folds admission into
        its statement may have answered without reaching it, and a path without a route never came
        to process_resource (a stored key is still looked up: an unknown key learns nothing more)."""
        caller = req.context.get("caller")
        if caller is None:
            return
        admission = req.context.get("admission")
        if admission is None and caller.kind == "stored":
            admission = req.context.admission = Admission(req, resp, caller, "read", False, self.default_limit)
        if admission is not None and not admission.done:
            try:
                admission.run()
            except Exception as exc:  # noqa: BLE001 - answered like any error
                resp.stream = None
                resp.data = None
                errors.handle(req, resp, exc, None)
