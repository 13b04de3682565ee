"""The one place that turns exceptions into HTTP statuses and the JSON error body.

Every error response is `{"error_code", "message", "trace_id"}`. SQLSTATEs map to statuses here
and nowhere else (the PostgREST rule): class 22 (invalid input, raised by the SQL functions with a
message naming the field) -> 400, P0002 (no such position) -> 404, PM412 (version check) -> 412,
lock/serialization conflicts -> 409 (retry), 23505/55000 (exists / wrong state) -> 409, a
database that cannot be reached -> 503 with Retry-After. Anything else is a bug: 500, logged
with its traceback, and the message does not leak internals.
"""
from __future__ import annotations

import json
import logging

import falcon
import psycopg
from psycopg_pool import PoolTimeout, TooManyRequests

log = logging.getLogger("position_manager.api")

# How long a client should wait before retrying when the database is unreachable (seconds).
DATABASE_RETRY_AFTER = 5

_CONFLICT_STATES = {"40001", "40P01", "55P03"}
# Server shutting down / cannot connect now / too many connections: the database is unavailable.
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "53300"}

_CODES_BY_STATUS = {
    400: "invalid_parameter",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    503: "database_unavailable",
}


class ApiError(Exception):
    """An error response: status, machine-readable code, human message, extra headers."""

    def __init__(self, status: int, error_code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}


def bad_parameter(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"invalid parameter {name}: {problem}")


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def database_unavailable(detail: str = "the database is unreachable") -> ApiError:
    return ApiError(503, "database_unavailable", f"{detail}; retry later",
                    {"Retry-After": str(DATABASE_RETRY_AFTER)})


def _from_database(exc: psycopg.Error) -> ApiError | None:
    state = exc.sqlstate or ""
    message = (exc.diag.message_primary if exc.diag else None) or str(exc).strip()
    if state.startswith("22"):
        return ApiError(400, "invalid_parameter", message)
    if state == "P0002":
        return not_found(message)
    if state == "PM412":  # an If-Match version that is not the current one (sql/0040)
        return ApiError(412, "precondition_failed", message)
    if state in ("55000", "23505"):  # nothing to close / a live API key of that name exists
        return ApiError(409, "conflict", message)
    if state in _CONFLICT_STATES:
        return ApiError(409, "conflict", f"{message}; retry the request")
    if state == "57014":  # statement_timeout (make_api_pool): overloaded or a pathological query
        return ApiError(503, "database_timeout", "the database did not answer in time; retry later",
                        {"Retry-After": str(DATABASE_RETRY_AFTER)})
    if state.startswith("08") or state in _UNAVAILABLE_STATES or isinstance(exc, psycopg.OperationalError):
        return database_unavailable()
    return None


def classify(exc: BaseException) -> ApiError:
    """Map any exception to the error response it deserves."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, falcon.HTTPError):
        status = exc.status_code
        code = _CODES_BY_STATUS.get(status, "http_error")
        message = exc.description or exc.title or code
        if status == 404:
            message = "no such resource"
        elif status == 405:
            message = "method not allowed here; allowed: " + (exc.headers or {}).get("Allow", "")
        return ApiError(status, code, message, dict(exc.headers or {}))
    if isinstance(exc, (PoolTimeout, TooManyRequests)):
        return database_unavailable("no database connection available")
    if isinstance(exc, psycopg.Error):
        mapped = _from_database(exc)
        if mapped is not None:
            return mapped
    return ApiError(500, "internal_error", "internal error; see the service log for this trace_id")


def error_body(error: ApiError, trace_id: str | None) -> str:
    return json.dumps({"error_code": error.error_code, "message": error.message, "trace_id": trace_id})


def handle(req: falcon.Request, resp: falcon.Response, exc: BaseException, params) -> None:
    """Falcon error handler for every exception (registered for Exception and falcon.HTTPError)."""
    error = classify(exc)
    if error.status == 500:
        log.error("unhandled error: %s", exc, exc_info=exc)
    elif error.status == 503:
        log.warning("database unavailable: %s", exc)
    resp.status = error.status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = error_body(error, getattr(req.context, "trace_id", None))
    for name, value in error.headers.items():
        resp.set_header(name, value)
