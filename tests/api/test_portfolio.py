"""GET /api/v1/portfolio (+ exposure, pnl): figures from SQL, parameters, and the cache with its
invalidation by a change made on another connection (as a consumer process does)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.sql.calls import fill, set_prices

PORTFOLIO_FIELDS = {"total_exposure_usdt", "net_exposure_usdt", "total_unrealized_pnl_usdt", "total_realized_pnl_usdt",
                    "total_pnl_usdt", "portfolio_value_usdt", "open_positions_count", "long_positions_count",
                    "short_positions_count", "calculated_at", "by_asset"}


@pytest.fixture
def book(db):
    fill(db, "BTCUSDT", "Buy", "1.5", "50000", fee="0.1")
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    set_prices(db, {"BTCUSDT": "50100", "ETHUSDT": "2900"})


def test_empty_portfolio_is_zeros(client):
    body = client.simulate_get("/api/v1/portfolio").json
    assert PORTFOLIO_FIELDS <= body.keys()
    assert body["total_exposure_usdt"] == "0" and body["open_positions_count"] == 0 and body["by_asset"] == {}


def test_portfolio_figures_as_strings(client, book):
    body = client.simulate_get("/api/v1/portfolio").json
    assert PORTFOLIO_FIELDS <= body.keys()
    assert Decimal(body["total_exposure_usdt"]) == Decimal("75150") + Decimal("5800")
    assert Decimal(body["net_exposure_usdt"]) == Decimal("75150") - Decimal("5800")
    assert Decimal(body["total_unrealized_pnl_usdt"]) == Decimal("150") + Decimal("200")
    assert Decimal(body["total_realized_pnl_usdt"]) == Decimal("-0.1")
    assert (body["open_positions_count"], body["long_positions_count"], body["short_positions_count"]) == (2, 1, 1)
    assert set(body["by_asset"]) == {"BTCUSDT", "ETHUSDT"}
    btc = body["by_asset"]["BTCUSDT"]
    assert {"exposure_usdt", "unrealized_pnl_usdt", "realized_pnl_usdt", "size"} <= btc.keys()
    assert Decimal(btc["size"]) == Decimal("1.5") and Decimal(btc["exposure_usdt"]) == Decimal("75150")
    assert body["calculated_at"].endswith("Z")
    assert "positions" not in body


def test_portfolio_of_one_asset_and_with_positions(client, book):
    one = client.simulate_get("/api/v1/portfolio", params={"asset": "ethusdt"}).json
    assert set(one["by_asset"]) == {"ETHUSDT"}
    assert Decimal(one["total_exposure_usdt"]) == Decimal("5800")
    assert one["open_positions_count"] == 1
    with_positions = client.simulate_get("/api/v1/portfolio", params={"include_positions": "true"}).json
    assert [p["asset"] for p in with_positions["positions"]] == ["BTCUSDT", "ETHUSDT"]
    assert PORTFOLIO_FIELDS <= with_positions.keys()
    both = client.simulate_get("/api/v1/portfolio", params={"include_positions": "true", "asset": "BTCUSDT"}).json
    assert [p["asset"] for p in both["positions"]] == ["BTCUSDT"]
    without = client.simulate_get("/api/v1/portfolio", params={"include_positions": "false"}).json
    assert "positions" not in without


@pytest.mark.parametrize("query, parameter", [
    ({"include_positions": "yes"}, "include_positions"),
    ({"include_positions": "1"}, "include_positions"),
    ({"asset": "not an asset"}, "asset"),
])
def test_portfolio_rejects_bad_parameters(client, query, parameter):
    response = client.simulate_get("/api/v1/portfolio", params=query)
    assert response.status_code == 400
    assert f"parameter {parameter}" in response.json["message"]


def test_exposure_and_pnl(client, book):
    exposure = client.simulate_get("/api/v1/portfolio/exposure").json
    assert set(exposure) == {"total_exposure_usdt", "net_exposure_usdt", "calculated_at"}
    assert Decimal(exposure["total_exposure_usdt"]) == Decimal("80950")
    assert Decimal(exposure["net_exposure_usdt"]) == Decimal("69350")
    pnl = client.simulate_get("/api/v1/portfolio/pnl").json
    assert set(pnl) == {"total_unrealized_pnl_usdt", "total_realized_pnl_usdt", "total_pnl_usdt", "calculated_at"}
    assert Decimal(pnl["total_pnl_usdt"]) == Decimal("349.9")


def test_cache_serves_unchanged_portfolio_and_a_change_elsewhere_invalidates_it(client, connect, book):
    """The TTL is 60 s here: only the change id can make the second and third answers fresh."""
    other = connect(autocommit=True)  # another process: a consumer applying fills
    first = client.simulate_get("/api/v1/portfolio").json
    exposure_before = client.simulate_get("/api/v1/portfolio/exposure").json
    # A write that even the foreign-write trigger does not see (a replication session, no version
    # bump): the cached answer is still served, which proves the cache is in use.
    with other.transaction():
        other.execute("SET LOCAL session_replication_role = replica")
        other.execute("UPDATE public.positions SET realized_pnl = realized_pnl + 1000 WHERE asset = 'BTCUSDT'")
    cached = client.simulate_get("/api/v1/portfolio").json
    assert cached == first
    # Any other writer's change is caught and bumps a version: the very next request is fresh.
    other.execute("UPDATE public.positions SET last_snapshot_at = now() WHERE asset = 'ETHUSDT'")
    foreign = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(foreign["total_realized_pnl_usdt"]) == Decimal(first["total_realized_pnl_usdt"]) + 1000
    # A fill applied by another connection: the very next request sees it.
    fill(other, "BTCUSDT", "Buy", "1", "50100")
    fresh = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(fresh["by_asset"]["BTCUSDT"]["size"]) == Decimal("2.5")
    assert Decimal(fresh["total_exposure_usdt"]) == Decimal("2.5") * 50100 + 5800
    exposure_after = client.simulate_get("/api/v1/portfolio/exposure").json
    assert Decimal(exposure_after["total_exposure_usdt"]) - Decimal(exposure_before["total_exposure_usdt"]) == 50100
    # and a price change pushed by another process
    set_prices(other, {"ETHUSDT": "3100"})
    repriced = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(repriced["total_exposure_usdt"]) == Decimal("2.5") * 50100 + 6200
    assert Decimal(client.simulate_get("/api/v1/portfolio/exposure").json["total_exposure_usdt"]) == \
        Decimal("2.5") * 50100 + 6200


def test_cache_expires_after_ttl(make_client, api_settings, connect, book):
    client = make_client(api_settings.with_overrides(metrics_cache_ttl=0))
    other = connect(autocommit=True)
    client.simulate_get("/api/v1/portfolio")
    other.execute("UPDATE public.positions SET realized_pnl = realized_pnl + 1000 WHERE asset = 'BTCUSDT'")
    body = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(body["total_realized_pnl_usdt"]) == Decimal("999.9")


def test_a_change_committed_after_a_later_one_still_invalidates_the_cache(client, connect, book):
    """Two writers commit out of the order in which they got their outbox ids: A (BTC) first takes
    its id and commits last, B (ETH) takes a higher id and commits first. The portfolio computed
    between the two commits misses A's fill; A's commit must still invalidate it."""
    slow = connect()                   # transaction A, left open
    fast = connect(autocommit=True)    # transaction B
    fill(slow, "BTCUSDT", "Buy", "1", "50100")
    fill(fast, "ETHUSDT", "Sell", "1", "2900")
    between = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(between["by_asset"]["BTCUSDT"]["size"]) == Decimal("1.5")   # A not committed yet
    assert Decimal(between["by_asset"]["ETHUSDT"]["size"]) == Decimal("-3")
    slow.commit()
    after = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(after["by_asset"]["BTCUSDT"]["size"]) == Decimal("2.5")
