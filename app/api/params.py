"""Query and path parameters: parsed and checked before anything reaches SQL.

Each helper returns the typed value or raises a 400 whose message names the parameter. A parameter
given twice is an error rather than a silent pick of one of the values.
"""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

import falcon

from app.api.errors import bad_parameter

MODES = ("one-way", "hedge")
# Bybit linear symbols (BTCUSDT, 1000PEPEUSDT, ...); positions.asset is VARCHAR(20). A symbol has
# at least one letter, so it is never confused with a position id (a UUID, 36 characters anyway).
_ASSET = re.compile(r"^(?=[A-Z0-9._-]*[A-Z])[A-Z0-9][A-Z0-9._-]{0,19}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
INT4_MAX = 2**31 - 1
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def only(req: falcon.Request, *names: str) -> None:
    """Reject parameters the endpoint does not know: a typo (sizemin=1) must not silently widen a query."""
    for name in req.params:
        if name not in names:
            raise bad_parameter(name, f"unknown parameter; this endpoint accepts {', '.join(names) or 'none'}")


def _raw(req: falcon.Request, name: str) -> str | None:
    value = req.params.get(name)
    if isinstance(value, list):
        raise bad_parameter(name, "given more than once")
    return value


def asset_value(value: str, name: str = "asset") -> str:
    """Case-insensitive on input, upper case inside."""
    normalised = value.upper()
    if not _ASSET.match(normalised):
        raise bad_parameter(name, f"expected a symbol such as BTCUSDT (letters and digits, at least one letter, "
                                  f"at most 20), got {value!r}")
    return normalised


def is_position_id(value: str) -> bool:
    """Whether a path's position reference is an id (a UUID) rather than a symbol."""
    return bool(_UUID.match(value.lower()))


def position(req: falcon.Request, value: str, name: str = "asset") -> dict:
    """The position a path names, as the queries take it (pm.position_key): {"asset", "mode"}.
    A symbol (case-insensitive) with ?mode= (default one-way), or the position's id (a UUID) whose
    own mode applies (?mode=, when given, must be that mode)."""
    if _UUID.match(value.lower()):
        return {"asset": value.lower(), "mode": mode(req, default=None)}
    if not _ASSET.match(value.upper()):
        raise bad_parameter(name, f"expected a symbol such as BTCUSDT (letters and digits, at least one letter, "
                                  f"at most 20) or a position id (UUID), got {value[:64]!r}")
    return {"asset": value.upper(), "mode": mode(req)}


def asset(req: falcon.Request, name: str = "asset") -> str | None:
    raw = _raw(req, name)
    return None if raw is None else asset_value(raw, name)


def assets(req: falcon.Request, name: str = "asset", maximum: int = 100) -> list[str] | None:
    """A comma-separated list of symbols (BTCUSDT,ETHUSDT), each case-insensitive; None when absent."""
    raw = _raw(req, name)
    if raw is None:
        return None
    names = raw.split(",")
    if len(names) > maximum:
        raise bad_parameter(name, f"at most {maximum} symbols, got {len(names)}")
    return sorted({asset_value(part, name) for part in names})


def choice(req: falcon.Request, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    raw = _raw(req, name)
    if raw is None:
        return default
    if raw not in choices:
        raise bad_parameter(name, f"expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def mode(req: falcon.Request, default: str | None = "one-way") -> str | None:
    return choice(req, "mode", MODES, default)


def boolean(req: falcon.Request, name: str, default: bool = False) -> bool:
    raw = _raw(req, name)
    if raw is None:
        return default
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise bad_parameter(name, f"expected true or false, got {raw!r}")


def integer(req: falcon.Request, name: str, default: int | None, minimum: int, maximum: int = INT4_MAX) -> int | None:
    raw = _raw(req, name)
    if raw is None:
        return default
    text = raw.strip()
    if not re.fullmatch(r"[+-]?\d{1,12}", text):
        raise bad_parameter(name, f"expected an integer, got {raw!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise bad_parameter(name, f"must be between {minimum} and {maximum}, got {value}")
    return value


def decimal(req: falcon.Request, name: str, minimum: Decimal = Decimal(0)) -> Decimal | None:
    raw = _raw(req, name)
    if raw is None:
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise bad_parameter(name, f"expected a decimal number, got {raw!r}") from None
    # Exponents beyond what numeric holds would only fail later inside PostgreSQL.
    if not value.is_finite() or abs(value.adjusted()) > 1000:
        raise bad_parameter(name, f"expected a finite decimal number, got {raw!r}")
    if value < minimum:
        raise bad_parameter(name, f"must be >= {minimum}, got {raw!r}")
    return value


def timestamp(req: falcon.Request, name: str) -> datetime | None:
    """RFC 3339 / ISO 8601 date-time with an offset (Z or +hh:mm), as OpenAPI's date-time."""
    raw = _raw(req, name)
    if raw is None:
        return None
    problem = f"expected an ISO 8601 timestamp with offset such as 2025-01-27T10:00:00Z, got {raw!r}"
    if not _TIMESTAMP.match(raw):
        raise bad_parameter(name, problem)
    try:
        return datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
    except ValueError:
        raise bad_parameter(name, problem) from None
