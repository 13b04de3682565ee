"""GET /api/v1/positions and /api/v1/positions/{asset}: fields, filters, pagination, ETag, 400/404."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest

from tests.sql.calls import fill, set_prices

POSITION_FIELDS = {
    "id", "asset", "mode", "side", "size", "long_size", "short_size", "average_entry_price", "long_avg_price",
    "short_avg_price", "current_price", "price_updated_at", "unrealized_pnl", "realized_pnl", "unrealized_pnl_pct",
    "time_held_minutes", "position_size_norm", "exposure_usdt", "version", "created_at", "last_updated",
    "closed_at", "last_snapshot_at",
}
DECIMAL_FIELDS = {"size", "average_entry_price", "current_price", "unrealized_pnl", "realized_pnl",
                  "unrealized_pnl_pct", "position_size_norm", "exposure_usdt"}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture
def book(db):
    """BTC long 1.5 @ 50000 (price 50100), ETH short 2 @ 3000 (price 2900), SOL closed, XRP hedge."""
    fill(db, "BTCUSDT", "Buy", "1.5", "50000", fee="0.1")
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    fill(db, "SOLUSDT", "Buy", "10", "100")
    fill(db, "SOLUSDT", "Sell", "10", "110")
    fill(db, "XRPUSDT", "Buy", "100", "0.5", mode="hedge", position_idx=1)
    set_prices(db, {"BTCUSDT": "50100", "ETHUSDT": "2900"})


def assets(body):
    return [(p["asset"], p["mode"]) for p in body["positions"]]


def test_position_has_every_field_of_the_contract_with_strings_and_z_timestamps(client, book):
    response = client.simulate_get("/api/v1/positions/BTCUSDT")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json
    assert POSITION_FIELDS <= body.keys()
    for name in DECIMAL_FIELDS:
        assert isinstance(body[name], str), name
    assert body["asset"] == "BTCUSDT" and body["mode"] == "one-way" and body["side"] == "long"
    assert Decimal(body["size"]) == Decimal("1.5")
    assert Decimal(body["average_entry_price"]) == Decimal("50000")
    assert Decimal(body["current_price"]) == Decimal("50100")
    assert Decimal(body["unrealized_pnl"]) == Decimal("150")      # 1.5 x (50100 - 50000), computed in SQL
    assert Decimal(body["realized_pnl"]) == Decimal("-0.1")
    assert Decimal(body["exposure_usdt"]) == Decimal("75150")
    assert isinstance(body["version"], int) and isinstance(body["time_held_minutes"], int)
    for name in ("created_at", "last_updated", "price_updated_at"):
        assert ISO_Z.match(body[name]), (name, body[name])


def test_asset_is_case_insensitive_and_mode_selects_the_row(client, book):
    assert client.simulate_get("/api/v1/positions/btcusdt").json["asset"] == "BTCUSDT"
    hedge = client.simulate_get("/api/v1/positions/xrpusdt", params={"mode": "hedge"})
    assert hedge.status_code == 200
    assert hedge.json["mode"] == "hedge" and Decimal(hedge.json["long_size"]) == 100
    # the default mode is one-way, and XRP has no one-way position
    missing = client.simulate_get("/api/v1/positions/XRPUSDT")
    assert missing.status_code == 404
    assert missing.json["error_code"] == "not_found" and "XRPUSDT" in missing.json["message"]
    assert missing.json["trace_id"] == missing.headers["x-trace-id"]


def test_etag_from_version_and_if_none_match(client, db, book):
    first = client.simulate_get("/api/v1/positions/BTCUSDT")
    etag = first.headers["etag"]
    assert etag == f'W/"{first.json["version"]}"'
    not_modified = client.simulate_get("/api/v1/positions/BTCUSDT", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.text == "" and not_modified.headers["etag"] == etag
    # strong form of the same tag, a list, and * also match (weak comparison)
    assert client.simulate_get("/api/v1/positions/BTCUSDT",
                               headers={"If-None-Match": f'"x", "{first.json["version"]}"'}).status_code == 304
    assert client.simulate_get("/api/v1/positions/BTCUSDT", headers={"If-None-Match": "*"}).status_code == 304
    fill(db, "BTCUSDT", "Buy", "0.5", "50200")
    changed = client.simulate_get("/api/v1/positions/BTCUSDT", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json["version"] > first.json["version"]
    assert changed.headers["etag"] != etag


def test_a_read_with_nothing_left_to_admit_is_the_same_and_as_fresh(make_client, api_settings, db, book):
    """With nothing to ask the database about the caller (here: no rate limit) the read is a statement
    of its own (api_read_position_admitted): the same Position as the read with admission, a change
    committed elsewhere seen at once, 404 for no position, the hedge row by its mode."""
    alone = make_client(api_settings.with_overrides(rate_limit_enabled=False))
    admitted = make_client(api_settings.with_overrides(rate_limit_default=100))   # one token per request
    first = alone.simulate_get("/api/v1/positions/BTCUSDT")
    reference = admitted.simulate_get("/api/v1/positions/BTCUSDT")
    assert first.status_code == reference.status_code == 200
    assert {k: v for k, v in first.json.items() if k != "time_held_minutes"} == \
           {k: v for k, v in reference.json.items() if k != "time_held_minutes"}
    assert alone.simulate_get("/api/v1/positions/BTCUSDT").json["version"] == first.json["version"]   # (cached)
    fill(db, "BTCUSDT", "Buy", "0.5", "50200")
    changed = alone.simulate_get("/api/v1/positions/BTCUSDT")
    assert changed.json["version"] > first.json["version"] and Decimal(changed.json["size"]) == Decimal("2")
    assert alone.simulate_get("/api/v1/positions/NOPEUSDT").status_code == 404
    assert alone.simulate_get("/api/v1/positions/XRPUSDT", params={"mode": "hedge"}).json["mode"] == "hedge"


def test_list_all_with_count_and_total(client, book):
    body = client.simulate_get("/api/v1/positions").json
    assert assets(body) == [("BTCUSDT", "one-way"), ("ETHUSDT", "one-way"), ("SOLUSDT", "one-way"),
                            ("XRPUSDT", "hedge")]
    assert body["count"] == 4 and body["total"] == 4
    assert all(POSITION_FIELDS <= p.keys() for p in body["positions"])


@pytest.mark.parametrize("query, expected", [
    ({"asset": "btcusdt"}, ["BTCUSDT"]),
    ({"mode": "hedge"}, ["XRPUSDT"]),
    ({"mode": "one-way"}, ["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
    ({"status": "open"}, ["BTCUSDT", "ETHUSDT", "XRPUSDT"]),
    ({"status": "closed"}, ["SOLUSDT"]),
    ({"status": "all"}, ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]),
    ({"size_min": "1.5"}, ["BTCUSDT", "ETHUSDT", "XRPUSDT"]),      # |size|: ETH is -2
    ({"size_min": "1.6"}, ["ETHUSDT", "XRPUSDT"]),
    ({"size_max": "2"}, ["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
    ({"size_min": "1", "size_max": "1.5"}, ["BTCUSDT"]),
    ({"status": "open", "mode": "one-way", "size_max": "1.9"}, ["BTCUSDT"]),
    ({"asset": "DOGEUSDT"}, []),
])
def test_list_filters(client, book, query, expected):
    response = client.simulate_get("/api/v1/positions", params=query)
    assert response.status_code == 200, response.text
    assert [a for a, _ in assets(response.json)] == expected
    assert response.json["total"] == len(expected)


def test_list_pagination(client, book):
    page = client.simulate_get("/api/v1/positions", params={"limit": "2", "offset": "1"}).json
    assert [a for a, _ in assets(page)] == ["ETHUSDT", "SOLUSDT"]
    assert page["count"] == 2 and page["total"] == 4
    beyond = client.simulate_get("/api/v1/positions", params={"limit": "2", "offset": "10"}).json
    assert beyond["positions"] == [] and beyond["total"] == 4
    only_total = client.simulate_get("/api/v1/positions", params={"limit": "0"}).json
    assert only_total["positions"] == [] and only_total["total"] == 4


@pytest.mark.parametrize("query, parameter", [
    ({"mode": "both"}, "mode"),
    ({"mode": ""}, "mode"),
    ({"status": "opened"}, "status"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "10001"}, "limit"),
    ({"offset": "-5"}, "offset"),
    ({"offset": "1.5"}, "offset"),
    ({"size_min": "abc"}, "size_min"),
    ({"size_min": "-1"}, "size_min"),
    ({"size_max": "NaN"}, "size_max"),
    ({"size_max": "Infinity"}, "size_max"),
    ({"size_min": "1e999999"}, "size_min"),
    ({"asset": "BTC/USDT"}, "asset"),
    ({"asset": "A" * 21}, "asset"),
    ("mode=hedge&mode=one-way", "mode"),
])
def test_list_rejects_bad_parameters_naming_them(client, book, query, parameter):
    if isinstance(query, str):
        response = client.simulate_get("/api/v1/positions", query_string=query)
    else:
        response = client.simulate_get("/api/v1/positions", params=query)
    assert response.status_code == 400, response.text
    assert response.json["error_code"] == "invalid_parameter"
    assert f"parameter {parameter}" in response.json["message"]


@pytest.mark.parametrize("path, query, parameter", [
    ("/api/v1/positions/BTCUSDT", {"mode": "Hedge"}, "mode"),
    ("/api/v1/positions/BTC$USDT", {}, "asset"),
    ("/api/v1/positions/" + "B" * 21, {}, "asset"),
])
def test_single_position_rejects_bad_parameters(client, book, path, query, parameter):
    response = client.simulate_get(path, params=query)
    assert response.status_code == 400
    assert f"parameter {parameter}" in response.json["message"]


def test_hedge_position_fields(client, db, book):
    fill(db, "XRPUSDT", "Sell", "40", "0.6", mode="hedge", position_idx=2)
    body = client.simulate_get("/api/v1/positions/XRPUSDT", params={"mode": "hedge"}).json
    assert body["side"] == "hedged"
    assert Decimal(body["long_size"]) == 100 and Decimal(body["short_size"]) == 40
    assert Decimal(body["size"]) == 60
    assert Decimal(body["long_avg_price"]) == Decimal("0.5") and Decimal(body["short_avg_price"]) == Decimal("0.6")


def test_list_is_served_from_the_process_cache_until_any_change_and_has_an_etag(client, connect, book):
    """The page is rendered once per positions fingerprint: a write no trigger sees (a replication
    session, no version bump) is not in the cached page, which proves the cache is used; any real
    change, by another connection, is in the very next answer."""
    other = connect(autocommit=True)
    first = client.simulate_get("/api/v1/positions")
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    with other.transaction():
        other.execute("SET LOCAL session_replication_role = replica")
        other.execute("UPDATE public.positions SET realized_pnl = realized_pnl + 1000 WHERE asset = 'BTCUSDT'")
    cached = client.simulate_get("/api/v1/positions")
    assert cached.json == first.json and cached.headers["etag"] == etag
    not_modified = client.simulate_get("/api/v1/positions", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.text == ""
    # another page of the same data is its own entry with its own tag
    page = client.simulate_get("/api/v1/positions", params={"limit": "1"})
    assert page.json["count"] == 1 and page.headers["etag"] != etag
    fill(other, "BTCUSDT", "Buy", "1", "50100")
    fresh = client.simulate_get("/api/v1/positions", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    btc = next(p for p in fresh.json["positions"] if p["asset"] == "BTCUSDT")
    assert Decimal(btc["size"]) == Decimal("2.5")
    assert Decimal(btc["realized_pnl"]) == Decimal("999.9")   # and the unseen write, now rendered


def test_list_answers_with_the_rate_limit_headers_and_429(make_client, api_settings, book):
    client = make_client(api_settings.with_overrides(rate_limit_default=2))
    for remaining in ("1", "0"):
        ok = client.simulate_get("/api/v1/positions")
        assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"] == remaining
    refused = client.simulate_get("/api/v1/positions")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json["error_code"] == "rate_limited"
