"""The one place that turns exceptions into HTTP statuses and the JSON error body.

Every error response is `{"error_code", "message", "trace_id"}`. A database error gets the HTTP
status and error_code of its class in app/sqlstates.py (invalid input 400 with the SQL's message
naming the field, not found 404, version mismatch 412, conflicts 409, a database that cannot be
reached or did not answer in time 503 with Retry-After); this module only words the message.
Anything else is a bug: 500, logged with its traceback, and the message does not leak internals.
"""
from __future__ import annotations

import json
import logging

import falcon
import psycopg
from psycopg_pool import PoolTimeout, TooManyRequests

from app import sqlstates

log = logging.getLogger("position_manager.api")

# How long a client should wait before retrying when the database is unreachable (seconds).
DATABASE_RETRY_AFTER = 5

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
    return ApiError(sqlstates.UNAVAILABLE.http_status, sqlstates.UNAVAILABLE.error_code, f"{detail}; retry later",
                    {"Retry-After": str(DATABASE_RETRY_AFTER)})


def internal_error() -> ApiError:
    return ApiError(500, "internal_error", "internal error; see the service log for this trace_id")


def _from_database(exc: psycopg.Error) -> ApiError:
    """The class of the error (app/sqlstates.py) gives status and code; the message is worded here."""
    error = sqlstates.classify(exc)
    if error is sqlstates.UNAVAILABLE:
        pool_empty = isinstance(exc, (PoolTimeout, TooManyRequests))
        return database_unavailable("no database connection available" if pool_empty else "the database is unreachable")
    if error is sqlstates.TIMEOUT:  # statement_timeout (make_api_pool): overloaded or a pathological query
        return ApiError(error.http_status, error.error_code, "the database did not answer in time; retry later",
                        {"Retry-After": str(DATABASE_RETRY_AFTER)})
    if error.http_status == 500:
        return internal_error()
    message = exc.diag.message_primary or str(exc).strip()
    if error in (sqlstates.SERIALIZATION, sqlstates.LOCK_NOT_AVAILABLE):
        message += "; retry the request"
    return ApiError(error.http_status, error.error_code, message)


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
    if isinstance(exc, psycopg.Error):
        return _from_database(exc)
    return internal_error()


def error_body(error: ApiError, trace_id: str | None) -> str:
    return json.dumps({"error_code": error.error_code, "message": error.message, "trace_id": trace_id})


def handle(req: falcon.Request, resp: falcon.Response, exc: BaseException, params) -> None:
    """Falcon error handler for every exception (registered for Exception and falcon.HTTPError).
    A request not admitted yet (app/api/access.py: a resource that folds admission into its own
    statement failed before reaching it) is admitted first: an unknown key is 401, an exhausted
    limit 429, whatever else was wrong with the request."""
    admission = req.context.get("admission") if isinstance(req.context, falcon.Context) else None
    if admission is not None and not admission.done and not isinstance(exc, psycopg.Error):
        try:
            admission.run()
        except Exception as refused:  # noqa: BLE001 - its own error response
            exc = refused
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
