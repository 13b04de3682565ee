"""The endpoints beyond positions and portfolio: manual control (metadata, price, open, close, delete,
bulk updates), price pushes, trade statistics, history and as-of, API key management. Each checks
its parameters and makes one SQL call (sql/repeatable/88_manual.sql and the others); bodies come
back from SQL as JSON text and are sent as they are. Calls that write run in a write transaction
behind the upgrade gate (call_write).
"""
from __future__ import annotations

import json
import re

import falcon

from app.api import params
from app.api.errors import ApiError, bad_parameter
from app.api.keys import SCOPES, digest, new_key
from app.api.middleware import actor
from app.api.resources import PositionResource, PositionsResource, call_one, call_write, send_json

HISTORY_LIMIT_MAX = 1000
PRICES_MAX_SYMBOLS = 1000
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_IF_MATCH = re.compile(r'^(?:(?:W/)?"(\d{1,10})"|(\d{1,10}))$')   # an ETag of GET, or its bare version


def json_body(req: falcon.Request, *, required: bool = True):
    """The request body as JSON (any type; the SQL function checks the shape and names fields).
    Content-Type must be JSON when given (415); at most POSITION_MANAGER_MAX_BODY_BYTES are read:
    a longer body is 413 (announced by Content-Length: refused before reading any of it, see
    app.api.middleware.BodyLimitMiddleware; chunked: after reading one byte more than the limit)."""
    media = (req.content_type or "").split(";")[0].strip().lower()
    if media and not _JSON_TYPE.match(media):
        raise ApiError(415, "unsupported_media_type", f"expected Content-Type: application/json, got {media[:80]!r}")
    limit = req.context.max_body_bytes
    # with a Content-Length (at most the limit: BodyLimitMiddleware) the bounded stream; chunked, the
    # server's stream, never more than one byte past the limit
    raw = (req.bounded_stream if req.content_length is not None else req.stream).read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"body larger than {limit} bytes")
    if not raw.strip():
        if required:
            raise bad_parameter("body", "a JSON object is required")
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_parameter("body", f"not valid JSON: {str(exc)[:200]}") from None


def expected_version(req: falcon.Request) -> int | None:
    """If-Match: the version the client last saw, as an ETag of GET (W/"7" or "7", or the bare 7);
    * or absent = any. Anything else is not an ETag: 400 naming the header. A well-formed ETag of another version
    is answered 412 by the SQL function."""
    header = req.get_header("If-Match")
    if header is None or header.strip() == "*":
        return None
    match = _IF_MATCH.match(header.strip())
    if match is None:
        raise bad_parameter("If-Match", f'expected * or an ETag of this API such as W/"7", got {header[:40]!r}')
    version = int(match.group(1) or match.group(2))
    return version if version <= params.INT4_MAX else -1   # no position has it: 412


def _set_etag(resp: falcon.Response, position: dict) -> None:
    resp.set_header("ETag", f'W/"{position["version"]}"')


class PositionsExtResource(PositionsResource):
    """GET /api/v1/positions (PositionsResource) and POST /api/v1/positions: open a position by hand."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req)
        args = {"body": json.dumps(json_body(req)), "trace": req.context.trace_id, "actor": actor(req)}
        position = json.loads(call_write(req, "extras_open_position", args))["position"]
        _set_etag(resp, position)
        resp.location = f"/api/v1/positions/{position['id']}"
        send_json(resp, json.dumps(position), falcon.HTTP_201)


class PositionExtResource(PositionResource):
    """GET /api/v1/positions/{asset} (plus ?as_of=), PATCH and DELETE /api/v1/positions/{asset};
    {asset} is a symbol or the position's id.

    Replaces the route of PositionResource: a GET without as_of is exactly its GET."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        if "as_of" not in req.params:
            return super().on_get(req, resp, asset)
        params.only(req, "mode", "as_of")
        args = {**params.position(req, asset), "as_of": params.timestamp(req, "as_of")}
        send_json(resp, call_one(req, "extras_position_as_of", args))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode")
        args = {**params.position(req, asset), "patch": json.dumps(json_body(req)),
                "expected_version": expected_version(req), "trace": req.context.trace_id, "actor": actor(req)}
        result = json.loads(call_write(req, "extras_update_position_meta", args))
        _set_etag(resp, result["position"])
        send_json(resp, json.dumps(result["position"]))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode")
        args = {**params.position(req, asset), "expected_version": expected_version(req),
                "trace": req.context.trace_id, "actor": actor(req)}
        send_json(resp, call_write(req, "extras_delete_position", args))


class BulkUpdateResource:
    """POST /api/v1/positions/bulk-update {"position_ids": [...], "updates": {...}}: all or nothing."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req)
        args = {"body": json.dumps(json_body(req)), "trace": req.context.trace_id, "actor": actor(req)}
        send_json(resp, call_write(req, "extras_bulk_update_positions", args))


class CloseResource:
    """POST /api/v1/positions/{asset}/close?exit_price=...: a manual execution closing every leg."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode", "exit_price")
        exit_price = params.decimal(req, "exit_price")
        if exit_price is not None and exit_price <= 0:
            raise bad_parameter("exit_price", f"must be > 0, got {req.get_param('exit_price')!r}")
        args = {**params.position(req, asset), "exit_price": exit_price,
                "expected_version": expected_version(req), "trace": req.context.trace_id, "actor": actor(req)}
        body = call_write(req, "extras_close_position", args)
        _set_etag(resp, json.loads(body)["position"])
        send_json(resp, body)


class PricesResource:
    """POST /api/v1/prices {"BTCUSDT": "50100.5", ...}: current prices in one SQL call."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req)
        prices = json_body(req)
        if not isinstance(prices, dict) or not prices:
            raise bad_parameter("body", 'expected a non-empty JSON object {"SYMBOL": "price", ...}')
        if len(prices) > PRICES_MAX_SYMBOLS:
            raise bad_parameter("body", f"at most {PRICES_MAX_SYMBOLS} symbols per request, got {len(prices)}")
        args = {"prices": json.dumps(prices), "trace": req.context.trace_id, "actor": actor(req)}
        send_json(resp, call_write(req, "extras_set_prices", args))


class SummaryResource:
    """GET /api/v1/portfolio/summary: trade statistics of the ledger's holdings."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req)
        send_json(resp, call_one(req, "extras_trade_statistics", {}))


class HistoryResource:
    """GET /api/v1/positions/{asset}/history: the audit trail, newest first."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, asset: str) -> None:
        params.only(req, "mode", "limit", "offset")
        args = {**params.position(req, asset),
                "limit": params.integer(req, "limit", default=100, minimum=1, maximum=HISTORY_LIMIT_MAX),
                "offset": params.integer(req, "offset", default=0, minimum=0)}
        send_json(resp, call_one(req, "extras_position_history", args))


class ApiKeysResource:
    """GET /api/v1/api-keys (list) and POST /api/v1/api-keys (create; the key is in this answer only)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req, "include_revoked")
        result = call_one(req, "extras_api_key_list", {"include_revoked": params.boolean(req, "include_revoked", False)})
        send_json(resp, json.dumps(result))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req)
        body = json_body(req)
        if not isinstance(body, dict):
            raise bad_parameter("body", 'expected a JSON object {"name", "scope", "rate_limit"?}')
        unknown = set(body) - {"name", "scope", "rate_limit"}
        if unknown:
            raise bad_parameter(sorted(unknown)[0], "unknown field; accepted: name, scope, rate_limit")
        name, scope, rate_limit = body.get("name"), body.get("scope"), body.get("rate_limit")
        if not isinstance(name, str):
            raise bad_parameter("name", "a string is required")
        if scope not in SCOPES:
            raise bad_parameter("scope", f"expected one of {', '.join(SCOPES)}, got {scope!r}")
        if rate_limit is not None and (isinstance(rate_limit, bool) or not isinstance(rate_limit, int)
                                       or not 0 < rate_limit <= 2**31 - 1):
            raise bad_parameter("rate_limit", f"expected a positive integer (requests per minute), got {rate_limit!r}")
        key = new_key()
        created = call_write(req, "extras_api_key_create",
                       {"name": name, "key_hash": digest(key), "scope": scope, "rate_limit": rate_limit})
        send_json(resp, json.dumps({**created, "key": key}), falcon.HTTP_201)


class ApiKeyResource:
    """DELETE /api/v1/api-keys/{name}: revoke."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        params.only(req)
        send_json(resp, json.dumps(call_write(req, "extras_api_key_revoke", {"name": name})))
