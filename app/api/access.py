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

Tokens of fast keys are leased (TokenLeases): for a key limited to at least LEASE_MIN_LIMIT
requests per minute whose bucket is far from empty, a process takes several tokens in one take and
spends them on its next requests of that key within LEASE_SECONDS, so that most of its requests
write nothing to the database. Near the bucket's end, and for slower keys, every request takes its
own token. docs/security.md says what that changes of the limit's guarantees.
"""
from __future__ import annotations

import hmac
import re
import threading
import time
from collections import deque
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

LEASE_MIN_LIMIT = 6000   # requests per minute: keys limited below this take one token per request
LEASE_SECONDS = 0.1      # a leased token not spent within this after its take lapses (and goes back to the bucket)
LEASE_WAIT_SECONDS = 0.005   # a request waits at most this for the lease another thread is taking
LEASE_SHARE = 8          # a take asks for at most 1/8 of the tokens its key's bucket held after the last one
LEASE_KEYS = 4096        # keys remembered per process before expired leases are forgotten


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


class _Lease:
    """What a process holds of one key: leased tokens in batches [count, spend-by], the key's limit
    and what its bucket held after the last take, and the requests of the key it admitted since
    `since` (its own rate of them)."""
    __slots__ = ("batches", "limit", "remaining", "since", "admitted", "taking_until", "lapsed")

    def __init__(self, now: float) -> None:
        self.batches: deque[list] = deque()
        self.limit = self.remaining = self.admitted = self.lapsed = 0
        self.since = now
        self.taking_until = 0.0   # a lease is being taken (by another thread) until then

    def held(self) -> int:
        return sum(count for count, _ in self.batches)


class TokenLeases:
    """The tokens this process took ahead from the buckets of fast keys, to spend on its next
    requests of each key. A take asks for one token, or for a lease of several when the key's limit
    is at least LEASE_MIN_LIMIT: as many as this process admits of the key in half of LEASE_SECONDS
    at the rate it admitted them since its last lease (so that a lease is spent before it lapses),
    at most `most` and at most 1/LEASE_SHARE of what the bucket held after the last take (so near
    the bucket's end every request takes its own token again, and what all processes hold stays a
    small share of it). One lease at a time per key and process: a request that finds one being
    taken waits for it (at most LEASE_WAIT_SECONDS, then takes a single token). The database grants
    what the bucket holds (pm.rate_limit_lease): never more than the limit is taken. Each lease is
    spent within LEASE_SECONDS of its take or lapses; what a lapsed lease left is given back to the
    bucket before this process's next take of the key (pm.rate_limit_return). Shared by the threads
    of a worker."""

    def __init__(self, most: int):
        self.most = most
        self.lock = threading.Lock()
        self.lease_arrived = threading.Condition(self.lock)
        self.keys: dict[str, _Lease] = {}

    def spend(self, key_hash: str) -> tuple[int, int] | None:
        """(limit, remaining) when a token held for the key was spent on this request, else None.
        While another thread takes the key's lease, waits for it (LEASE_WAIT_SECONDS at most)."""
        with self.lock:
            lease = self.keys.get(key_hash)
            if lease is None:
                return None
            spent = self._spend(lease)
            if spent is None and lease.taking_until > time.monotonic():
                self.lease_arrived.wait(LEASE_WAIT_SECONDS)
                spent = self._spend(lease)
            return spent

    @staticmethod
    def _spend(lease: _Lease) -> tuple[int, int] | None:
        now = time.monotonic()
        batches = lease.batches
        while batches and (batches[0][0] <= 0 or batches[0][1] < now):
            lease.lapsed += batches.popleft()[0]   # spent, or lapsed: its tokens go back later
        if not batches:
            return None
        batches[0][0] -= 1
        lease.admitted += 1
        return lease.limit, lease.remaining + lease.held()

    def refund(self, key_hash: str) -> None:
        """A spent token back (its request was refused for its scope)."""
        with self.lock:
            lease = self.keys.get(key_hash)
            if lease is not None and lease.batches:
                lease.batches[0][0] += 1
                lease.admitted -= 1

    def lapsed(self, key_hash: str) -> tuple[int, int]:
        """(tokens, limit) that lapsed leases of the key left, now claimed to be given back."""
        with self.lock:
            lease = self.keys.get(key_hash)
            if lease is None or not lease.lapsed:
                return 0, 0
            tokens, lease.lapsed = lease.lapsed, 0
            return tokens, lease.limit

    def want(self, key_hash: str) -> int:
        """How many tokens this request's take asks for (more than one: it takes the lease)."""
        with self.lock:
            lease = self.keys.get(key_hash)
            if self.most <= 1 or lease is None or lease.limit < LEASE_MIN_LIMIT:
                return 1
            now = time.monotonic()
            if lease.taking_until > now:
                return 1
            rate = lease.admitted / max(now - lease.since, 0.001)
            tokens = min(self.most, lease.remaining // LEASE_SHARE, int(rate * LEASE_SECONDS / 2))
            if tokens <= 1:
                return 1
            lease.taking_until = now + 1.0   # (cleared by keep; a take that failed lets the next try after 1 s)
            lease.admitted, lease.since = 0, now
            return tokens

    def keep(self, key_hash: str, asked: int, granted: int, limit: int, remaining: int) -> int:
        """After a take that asked for `asked` tokens: the request spends one granted token, the
        others are held. Returns the tokens left to the key (its bucket's and those held here)."""
        now = time.monotonic()
        with self.lock:
            lease = self.keys.get(key_hash)
            if lease is None:
                if len(self.keys) >= LEASE_KEYS:
                    self.keys = {k: v for k, v in self.keys.items() if any(b[1] >= now for b in v.batches)}
                lease = self.keys[key_hash] = _Lease(now)
            if granted > 1:
                lease.batches.append([granted - 1, now + LEASE_SECONDS])
            if asked > 1:
                lease.taking_until = 0.0
                self.lease_arrived.notify_all()
            lease.limit, lease.remaining = limit, remaining
            lease.admitted += granted > 0
            return remaining + lease.held()


class Admission:
    """The database part of admitting one request, run at most once (pm.api_admit, or folded into a
    resource's statement). Outcomes other than ok raise the error response; the rate-limit headers
    go on the response either way."""

    def __init__(self, req: falcon.Request, resp: falcon.Response, caller: Caller, needed: str, tokens: int,
                 default_limit: int, leases: TokenLeases | None = None, spent: bool = False):
        self.req, self.resp, self.caller = req, resp, caller
        self.needed, self.tokens, self.default_limit = needed, tokens, default_limit
        self.leases, self.spent = leases, spent   # spent: the request spent a token held by this process
        self.done = False

    def args(self) -> dict:
        """The admission arguments of pm.api_admit / pm.api_read_position. Before a take, the tokens
        a lapsed lease of the key left go back to its bucket (a statement of its own, only then)."""
        self.done = True
        if self.tokens and self.leases is not None:
            lapsed, limit = self.leases.lapsed(self.caller.key_hash)
            if lapsed:
                raw_connection(self.req).execute(q("api_rate_return"), {
                    "key_hash": self.caller.key_hash, "limit": limit, "tokens": lapsed})
        return {"key_hash": self.caller.key_hash, "scope": self.caller.scope, "limit": self.caller.limit,
                "default_limit": self.default_limit, "needed": self.needed, "tokens": self.tokens}

    def run(self, conn=None) -> None:
        conn = conn if conn is not None else raw_connection(self.req)
        self.apply(*conn.execute(q("api_admit"), self.args()).fetchone())

    def apply(self, outcome: str, key_name: str | None, scope: str | None, rate_limit: int | None,
              remaining: int | None, retry_after: float | None, granted: int | None) -> None:
        self.done = True
        if self.spent and outcome in ("unknown_key", "forbidden"):
            self.leases.refund(self.caller.key_hash)
        if outcome == "unknown_key":
            raise ApiError(401, "unauthorized", "missing or invalid X-API-Key header")
        if key_name is not None:
            self.caller.name = key_name
        self.caller.scope = scope
        if outcome == "forbidden":
            _forbidden(self.req, self.caller, self.needed)
        if remaining is not None:
            if self.leases is not None:
                remaining = self.leases.keep(self.caller.key_hash, self.tokens, granted, rate_limit, remaining)
            _limit_headers(self.resp, rate_limit, remaining)
        if outcome == "rate_limited":
            RATE_LIMITED.inc()
            wait = max(1, -int(-retry_after // 1))  # whole seconds, rounded up
            raise ApiError(429, "rate_limited",
                           f"rate limit of {rate_limit} requests per minute exceeded; retry in {wait} s",
                           {"Retry-After": str(wait)})


def _limit_headers(resp: falcon.Response, limit: int, remaining: int) -> None:
    resp.set_header("X-RateLimit-Limit", str(limit))
    resp.set_header("X-RateLimit-Remaining", str(remaining))


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
            "needed": "read", "tokens": 0}


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
        self.leases = TokenLeases(settings.rate_limit_lease)
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
        tokens, spent = 0, None
        if self.limited and getattr(resource, "RATE_LIMITED", True):
            spent = self.leases.spend(caller.key_hash)
            if spent is None:
                tokens = self.leases.want(caller.key_hash)
            else:
                _limit_headers(resp, *spent)
        if caller.kind != "stored" and not tokens:
            return  # nothing left to ask the database
        admission = Admission(req, resp, caller, needed, tokens, self.default_limit, self.leases, spent is not None)
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
            admission = req.context.admission = Admission(req, resp, caller, "read", 0, self.default_limit)
        if admission is not None and not admission.done:
            try:
                admission.run()
            except Exception as exc:  # noqa: BLE001 - answered like any error
                resp.stream = None
                resp.data = None
                errors.handle(req, resp, exc, None)
