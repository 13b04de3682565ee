"""Bybit's public market API, the one call bin/refresh-prices needs: every linear ticker at once.

GET {BYBIT_API_URL}/v5/market/tickers?category=linear answers
{"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [{"symbol", "markPrice", ...}]}, "time"}.
A transport error, an HTTP error, a non-zero retCode or a body of any other shape is a failure.
Transient failures (network, timeout, HTTP 5xx/429, a body that is not JSON, Bybit's own
"busy/timeout" retCodes) are retried with backoff 1 s, 2 s, 4 s (then 4 s); the rest fail at once.
"""
from __future__ import annotations

import logging
import time
from decimal import Decimal, InvalidOperation
from typing import Callable

import requests

log = logging.getLogger("position_manager.bybit")

TICKERS_PATH = "/v5/market/tickers"
BACKOFF_SECONDS = (1, 2, 4)
# retCodes Bybit documents as transient: 10000 server timeout, 10006 too many visits, 10016 server error.
TRANSIENT_RET_CODES = {10000, 10006, 10016}


class PriceApiError(Exception):
    """The price API could not give an answer; `transient` says whether a retry may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class TickerSnapshot:
    """Mark prices by symbol, and the entries of Bybit's list that could not be used."""

    def __init__(self, prices: dict[str, str], rejected: dict[str, str]) -> None:
        self.prices = prices
        self.rejected = rejected


def _mark_price(raw) -> str | None:
    """A usable mark price as a decimal string, or None."""
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        return None
    if not value.is_finite() or value <= 0:
        return None
    return str(value)


def parse_tickers(body) -> TickerSnapshot:
    """Check Bybit's envelope and pick markPrice per symbol (PriceApiError when the envelope is wrong)."""
    if not isinstance(body, dict) or "retCode" not in body:
        raise PriceApiError("malformed response: no retCode", transient=False)
    code = body.get("retCode")
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        code = int(code)  # some proxies re-encode numbers as strings
    if code != 0:
        transient = code in TRANSIENT_RET_CODES
        raise PriceApiError(f"Bybit retCode {code}: {body.get('retMsg', '')}".strip(), transient=transient)
    result = body.get("result")
    items = result.get("list") if isinstance(result, dict) else None
    if not isinstance(items, list):
        raise PriceApiError("malformed response: result.list is not a list", transient=False)
    prices: dict[str, str] = {}
    rejected: dict[str, str] = {}
    for item in items:
        symbol = item.get("symbol") if isinstance(item, dict) else None
        if not isinstance(symbol, str) or not symbol:
            continue
        price = _mark_price(item.get("markPrice"))
        if price is None:
            rejected[symbol] = f"unusable markPrice {item.get('markPrice')!r}"
        else:
            prices[symbol.upper()] = price
    return TickerSnapshot(prices, rejected)


class BybitClient:
    def __init__(self, base_url: str, timeout: float, retries: int,
                 session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = base_url.rstrip("/") + TICKERS_PATH
        self.timeout = float(timeout)
        self.retries = retries
        self.session = session or requests.Session()
        self.sleep = sleep  # injectable so that tests do not wait for real
        self.attempts = 0

    def linear_tickers(self) -> TickerSnapshot:
        """One request for all linear tickers, retried on transient failures."""
        last: PriceApiError | None = None
        self.attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = BACKOFF_SECONDS[min(attempt - 1, len(BACKOFF_SECONDS) - 1)]
                log.warning("price API failed, retrying", extra={"error": str(last), "attempt": attempt,
                                                                 "retry_in_seconds": delay})
                self.sleep(delay)
            self.attempts += 1
            try:
                return parse_tickers(self._get())
            except PriceApiError as exc:
                last = exc
                if not exc.transient:
                    break
        assert last is not None
        raise PriceApiError(f"{last} (after {self.attempts} attempt(s))", transient=last.transient)

    def _get(self):
        try:
            response = self.session.get(self.url, params={"category": "linear"}, timeout=self.timeout,
                                        headers={"Accept": "application/json"})
        except requests.Timeout:
            raise PriceApiError(f"timeout after {self.timeout:g} s from {self.url}", transient=True) from None
        except requests.RequestException as exc:
            raise PriceApiError(f"cannot reach {self.url}: {exc.__class__.__name__}", transient=True) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise PriceApiError(f"HTTP {response.status_code} from {self.url}", transient=True)
        if response.status_code != 200:
            raise PriceApiError(f"HTTP {response.status_code} from {self.url}", transient=False)
        try:
            return response.json()
        except ValueError:
            # A proxy's error page or a cut-off body: worth another try.
            raise PriceApiError(f"malformed response: body is not JSON ({response.text[:80]!r})",
                                transient=True) from None
