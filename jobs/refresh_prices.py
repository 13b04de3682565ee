"""bin/refresh-prices: set current_price from Bybit's mark prices for open positions whose price is
missing or older than POSITION_MANAGER_PRICE_STALENESS_THRESHOLD seconds.

One GET of every linear ticker (BYBIT_API_URL, timeout POSITION_MANAGER_PRICE_API_TIMEOUT,
POSITION_MANAGER_PRICE_API_RETRIES retries with backoff 1 s, 2 s, 4 s), then one SQL call,
pm.set_prices(prices, 'exchange'). When the API fails, no price changes: the last known price is
kept (exit 1). A stale symbol that Bybit does not list keeps its last price and is reported (exit 3)."""
from __future__ import annotations

import json
import sys
import time
from typing import Callable

from app.db import q, write
from jobs import common
from jobs.bybit import BybitClient, PriceApiError

ACTOR = "bin/refresh-prices"


def _refresh(ctx: common.JobContext, args, sleep: Callable[[float], None]) -> int:
    stale = [row[0] for row in ctx.conn.execute(q("job_stale_price_assets")).fetchall()]
    if not stale:
        print("refresh-prices: no stale prices, nothing to do")
        return common.EXIT_OK
    client = BybitClient(ctx.settings.bybit_api_url, float(ctx.settings.price_api_timeout),
                         ctx.settings.price_api_retries, sleep=sleep)
    started = time.monotonic()
    try:
        tickers = client.linear_tickers()
    except PriceApiError as exc:
        raise common.JobFailure(f"price API failed: {exc}; last known prices kept for "
                                f"{len(stale)} stale symbol(s): {', '.join(stale)}") from None
    prices = {symbol: tickers.prices[symbol] for symbol in stale if symbol in tickers.prices}
    missing = [symbol for symbol in stale if symbol not in tickers.prices]
    result = {"updated": 0, "unchanged": 0, "unknown": []}
    if prices:
        (result,) = write(ctx.conn, "job_set_prices", {"prices": json.dumps(prices), "trace": ctx.trace_id, "actor": ACTOR})
    elapsed = time.monotonic() - started
    for symbol in missing:
        ctx.log.warning("symbol missing from Bybit's tickers; last known price kept",
                        extra={"symbol": symbol, "reason": tickers.rejected.get(symbol, "not listed")})
    ctx.log.info("prices refreshed", extra={"stale": stale, "result": result, "missing": missing,
                                            "attempts": client.attempts, "seconds": round(elapsed, 3)})
    line = (f"refresh-prices: {len(stale)} stale symbol(s), {result.get('updated', 0)} position(s) updated, "
            f"{result.get('unchanged', 0)} unchanged")
    if missing:
        line += f", {len(missing)} missing from Bybit (last price kept: {', '.join(missing)})"
    print(line + f" in {elapsed:.2f} s")
    return common.EXIT_ATTENTION if missing else common.EXIT_OK


def main(argv: list[str] | None = None, environ=None, sleep: Callable[[float], None] = time.sleep) -> int:
    args = common.parser("refresh-prices", __doc__.split("\n\n")[0].replace("\n", " ")).parse_args(argv)
    return common.run("refresh-prices", args, lambda ctx, a: _refresh(ctx, a, sleep), environ)


if __name__ == "__main__":
    sys.exit(main())
