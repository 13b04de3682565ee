"""The endpoints of positions, snapshots and the portfolio. Each resource checks its parameters and makes one SQL call.

Bodies come back from SQL as JSON text (decimals as strings, timestamps ISO Z, built by
pm.position_json / pm.portfolio_json / ...) and are sent as they are: no arithmetic and no
re-serialisation in Python.
"""
from __future__ import annotations

import hashlib
import json

import falcon

from app.api import access, params
from app.api.docs import OPENAPI_FILE
from app.api.cache import PortfolioCache, ReadCache
from app.api.errors import not_found
from app.api.middleware import actor, client_addr, connection, raw_connection
from app.db import q, write_transaction

POSITIONS_LIMIT_MAX = 10000
SNAPSHOTS_LIMIT_MAX = 1000


def send_json(resp: falcon.Response, body: str | bytes, status: str = falcon.HTTP_200) -> None:
    """A JSON body as SQL built it (text, or already encoded: a cached body), sent as it is."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    if isinstance(body, bytes):
        resp.data = body
    else:
        resp.text = body


def call_one(req: falcon.Request, name: str, args: dict):
    """The one value of the one row of the named query, on the request's connection."""
    (result,) = connection(req).execute(q(name), args).fetchone()
    return result


def call_write(req: falcon.Request, name: str, args: dict):
    """As call_one, for a statement that writes: in a write transaction of its own, behind the
    upgrade gate (app.db.write_transaction), with the client's address for the audit trail
    (pm.write_state records it beside the actor)."""
    conn = connection(req)
    with write_transaction(conn):
        conn.execute(q("api_client_addr"), {"addr": client_addr(req) or ""})
        (result,) = conn.execute(q(name), args).fetchone()
    return result


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match with weak comparison (a W/ prefix is ignored on both sides; * matches)."""
    if not header:
        return False
    opaque = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


def _cached_read(req: falcon.Request, cache: ReadCache, key, query: str, args: dict,
                 admitted_query: str | None = None):
    """(version, body) of a read that folds admission into its statement and renders only what
    this process does not hold: the statement gets the cached version as `known`, answers
    (admission..., version, body) with body NULL when the known version is current. When nothing is
    left to admit in the database, `admitted_query` (if given) reads (version, body) alone."""
    known, known_body = cache.known(key)
    admission = access.pending(req)
    conn = raw_connection(req)
    if admission is None and admitted_query is not None:
        version, body = conn.execute(q(admitted_query), {**args, "known": known}).fetchone() or (None, None)
    else:
        row = conn.execute(q(query), {**access.read_args(req, admission), **args, "known": known}).fetchone()
        if admission is not None:
            admission.apply(*row[:7])
        version, body = row[7], row[8]
    if body is not None:
        return version, cache.store(key, version, body)
    return version, (known_body if version is not None else None)


def _send_tagged(req: falcon.Request, resp: falcon.Response, etag: str, body) -> None:
    """The body with its ETag, or 304 when If-None-Match names it."""
    resp.set_header("ETag", etag)
    if _etag_matches(req.get_header("If-None-Match"), etag):
        resp.status = falcon.HTTP_304
        return
    send_json(resp, body)


class PositionsResource:
    """GET /api/v1/positions: admission and the list in one round trip (pm.api_list_positions),
    which renders the page only when the positions fingerprint moved since this process rendered
    it (ReadCache); ETag from the fingerprint, If-None-Match -> 304."""

    ADMITS_IN_QUERY = ("GET",)

    def __init__(self, cache: ReadCache):
        self.cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req, "asset", "mode", "size_min", "size_max", "status", "limit", "offset")
        args = {
            "asset": params.asset(req),
            "mode": params.mode(req, default=None),  # a filter here: absent = both modes
            "size_min": params.decimal(req, "size_min"),
            "size_max": params.decimal(req, "size_max"),
            "status": params.choice(req, "status", ("open", "closed", "all"), "all"),
            "page_limit": params.integer(req, "limit", default=1000, minimum=0, maximum=POSITIONS_LIMIT_MAX),
            "offset": params.integer(req, "offset", default=0, minimum=0),
        }
        page = tuple(args.values())
        fingerprint, body = _cached_read(req, self.cache, page, "api_list_positions", args)
        # Weak: time_held_minutes and the staleness flag move with the clock at the same fingerprint.
        _send_tagged(req, resp, 'W/"%s"' % hashlib.sha1(repr((fingerprint, page)).encode()).hexdigest()[:20], body)


class PositionResource:
    """GET /api/v1/positions/{asset}: ETag from version, If-None-Match -> 304.

    The API's most frequent read: admission (stored key, scope, rate-limit token) and the read are
    one statement, one round trip (pm.api_read_position; app/api/access.py), which renders the
    Position only when this process does not hold its current version already (ReadCache). When
    nothing is left to admit in the database (a key checked here whose token this process held),
    the statement is the read alone (api_read_position_admitted)."""

    ADMITS_IN_QUERY = ("GET",)

    def __init__(self, cache: ReadCache):
        self.cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode")
        key = params.position(req, asset)
        if params.is_position_id(asset):   # by id: admitted first, then read by its id
            row = connection(req).execute(q("api_get_position"), key).fetchone()
            if row is None:
                raise not_found(f"no position {key['asset']} ({key['mode']})")
            body, version = row
        else:
            version, body = _cached_read(req, self.cache, (key["asset"], key["mode"]), "api_read_position", key,
                                         "api_read_position_admitted")
            if version is None:
                raise not_found(f"no position {key['asset']} ({key['mode']})")
        # Weak: time_held_minutes and the staleness flag move with the clock at the same version.
        _send_tagged(req, resp, f'W/"{version}"', body)


class ValidateResource:
    """POST /api/v1/positions/{asset}/validate"""

    def on_post(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode", "fix_discrepancies")
        args = {**params.position(req, asset), "fix": params.boolean(req, "fix_discrepancies", False),
                "trace": req.context.trace_id, "actor": actor(req)}
        send_json(resp, call_write(req, "api_validate_position", args))


class SnapshotResource:
    """POST /api/v1/positions/{asset}/snapshot"""

    def on_post(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode")
        args = {**params.position(req, asset), "trace": req.context.trace_id}
        send_json(resp, call_write(req, "api_snapshot_position", args), falcon.HTTP_201)


class SnapshotsResource:
    """GET /api/v1/positions/{asset}/snapshots: newest first."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode", "limit", "offset", "from", "to")
        args = {
            **params.position(req, asset),
            "limit": params.integer(req, "limit", default=100, minimum=1, maximum=SNAPSHOTS_LIMIT_MAX),
            "offset": params.integer(req, "offset", default=0, minimum=0),
            "from": params.timestamp(req, "from"),
            "to": params.timestamp(req, "to"),
        }
        send_json(resp, call_one(req, "api_list_snapshots", args))


class PortfolioResource:
    """GET /api/v1/portfolio (cached per process, see app/api/cache.py)."""

    def __init__(self, cache: PortfolioCache):
        self.cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req, "asset", "include_positions")
        asset = params.asset(req)
        include = params.boolean(req, "include_positions", False)
        query = "api_portfolio_with_positions" if include else "api_portfolio"

        def compute(conn):
            return tuple(conn.execute(q(query), {"asset": asset}).fetchone())

        send_json(resp, self.cache.get(("portfolio", asset, include), connection(req), compute))


class PortfolioPartResource:
    """GET /api/v1/portfolio/exposure and /pnl: fields of the (cached) portfolio of all assets."""

    def __init__(self, cache: PortfolioCache, part: str, fields: tuple[str, ...]):
        self.cache = cache
        self.part = part
        self.fields = fields

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req)

        def compute(conn):
            fingerprint, body = conn.execute(q("api_portfolio"), {"asset": None}).fetchone()
            metrics = json.loads(body)
            return fingerprint, json.dumps({name: metrics[name] for name in self.fields})

        send_json(resp, self.cache.get((self.part,), connection(req), compute))


class OpenApiResource:
    """GET /openapi.yaml: the description of this API, read once."""

    def __init__(self):
        self.body = OPENAPI_FILE.read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/yaml"
        resp.data = self.body


class SelectOneResource:
    """GET /bench/select1: the benchmark's reference (only with POSITION_MANAGER_BENCH_REFERENCE=1):
    the least a request can cost, one trivial statement behind the same key check (so never rate
    limited: the endpoints measured against it pay for their limiter)."""

    RATE_LIMITED = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        (value,) = connection(req).execute(q("api_select_one")).fetchone()
        send_json(resp, '{"value": %d}' % value)
