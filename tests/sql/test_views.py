"""The public views and the portfolio definitions, computed from positions built by fills
and prices set through pm.set_prices."""
from __future__ import annotations

from decimal import Decimal as D

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.sql.helpers import apply_order, exec_a, hedge_a


def view_row(db, asset, mode="one-way"):
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pm.v_positions WHERE asset = %s AND mode = %s", (asset, mode)).fetchone()


def portfolio(db):
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pm.v_portfolio").fetchone()


def set_prices(db, prices: dict) -> dict:
    return db.execute("SELECT pm.set_prices(%s)", (Jsonb(prices),)).fetchone()[0]


def book(db):
    """BTC long 2 @ 100, ETH short 3 @ 2000, SOL hedge long 3 @ 20 / short 1 @ 25, XRP closed, ADA without price."""
    apply_order(db, exec_a("b1", "Buy", 2, 100, "0", 0, asset="BTCUSDT"))
    apply_order(db, exec_a("e1", "Sell", 3, 2000, "0", 0, asset="ETHUSDT"))
    apply_order(db, hedge_a("s1", 1, "Buy", 3, 20, "0", 0, asset="SOLUSDT"))
    apply_order(db, hedge_a("s2", 2, "Sell", 1, 25, "0", 1, asset="SOLUSDT"))
    apply_order(db, exec_a("x1", "Buy", 10, 1, "0", 0, asset="XRPUSDT"))
    apply_order(db, exec_a("x2", "Sell", 10, "1.5", "0", 90, asset="XRPUSDT"))
    apply_order(db, exec_a("a1", "Buy", 100, "0.5", "0", 0, asset="ADAUSDT"))
    res = set_prices(db, {"BTCUSDT": "110", "ETHUSDT": "1990", "SOLUSDT": "22", "XRPUSDT": "1.6"})
    assert res["unknown"] == []


def test_position_metrics(db):
    book(db)
    btc = view_row(db, "BTCUSDT")
    assert (btc["side"], btc["is_open"], btc["exposure_usdt"], btc["unrealized_pnl"]) == ("long", True, 220, 20)
    assert btc["unrealized_pnl_pct"] == 10                     # 20 / (2 * 100) * 100
    assert btc["price_is_stale"] is False
    eth = view_row(db, "ETHUSDT")
    assert (eth["side"], eth["exposure_usdt"], eth["unrealized_pnl"]) == ("short", 5970, 30)
    assert eth["unrealized_pnl_pct"] == D("0.5")               # 30 / (3 * 2000) * 100
    sol = view_row(db, "SOLUSDT", "hedge")
    assert (sol["side"], sol["exposure_usdt"], sol["size"]) == ("hedged", 88, 2)
    assert sol["unrealized_pnl"] == 9                          # 3 * (22 - 20) + 1 * (25 - 22)
    xrp = view_row(db, "XRPUSDT")
    assert (xrp["side"], xrp["is_open"], xrp["unrealized_pnl"], xrp["unrealized_pnl_pct"]) == ("flat", False, 0, None)
    assert xrp["time_held_minutes"] == 90                      # opened at 0, closed at 90
    ada = view_row(db, "ADAUSDT")
    assert (ada["exposure_usdt"], ada["position_size_norm"], ada["price_is_stale"]) == (None, None, True)
    total = D(220 + 5970 + 88)
    assert btc["position_size_norm"] == round(D(220) / total, 8)
    assert sol["position_size_norm"] == round(D(88) / total, 8)
    assert btc["time_held_minutes"] > 0


def test_portfolio_totals(db):
    book(db)
    p = portfolio(db)
    assert p["total_exposure_usdt"] == 220 + 5970 + 88          # ADA has no price: excluded
    assert p["net_exposure_usdt"] == 2 * 110 - 3 * 1990 + 2 * 22
    assert p["portfolio_value_usdt"] == p["net_exposure_usdt"]
    assert p["total_unrealized_pnl_usdt"] == 20 + 30 + 9
    assert p["total_realized_pnl_usdt"] == 5                    # XRP: 10 * (1.5 - 1)
    assert p["total_pnl_usdt"] == 64
    assert (p["open_positions_count"], p["long_positions_count"], p["short_positions_count"]) == (4, 3, 1)
    by_asset = {r[0]: r[1:] for r in db.execute(
        "SELECT asset, size, exposure_usdt, unrealized_pnl_usdt FROM pm.v_portfolio_by_asset").fetchall()}
    assert set(by_asset) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT"}    # open positions only
    assert by_asset["SOLUSDT"] == (2, 88, 9)
    assert by_asset["ADAUSDT"][1] == 0


def test_portfolio_json_matches_the_view(db):
    book(db)
    j = db.execute("SELECT pm.portfolio_json(NULL)").fetchone()[0]
    p = portfolio(db)
    for key in ("total_exposure_usdt", "net_exposure_usdt", "total_unrealized_pnl_usdt", "total_realized_pnl_usdt",
                "total_pnl_usdt"):
        assert isinstance(j[key], str) and D(j[key]) == p[key], key
    assert D(j["by_asset"]["BTCUSDT"]["exposure_usdt"]) == 220
    one = db.execute("SELECT pm.portfolio_json('ETHUSDT')").fetchone()[0]
    assert set(one["by_asset"]) == {"ETHUSDT"}
    assert D(one["total_exposure_usdt"]) == 5970


def test_one_asset_in_both_modes_is_summed_by_asset(db):
    apply_order(db, exec_a("b1", "Buy", 1, 100, "0", 0))
    apply_order(db, hedge_a("b2", 2, "Sell", 3, 100, "0", 0))
    set_prices(db, {"BTCUSDT": "100"})
    size, exposure = db.execute("SELECT size, exposure_usdt FROM pm.v_portfolio_by_asset").fetchone()
    assert (size, exposure) == (-2, 400)


def test_price_keeps_unrealized_until_a_new_price(db):
    apply_order(db, exec_a("b1", "Buy", 2, 100, "0", 0))
    set_prices(db, {"BTCUSDT": "105"})
    apply_order(db, exec_a("b2", "Buy", 2, 110, "0", 1))      # a fill recomputes with the known price
    row = view_row(db, "BTCUSDT")
    assert (row["average_entry_price"], row["unrealized_pnl"]) == (105, 0)
    res = set_prices(db, {"BTCUSDT": "105"})
    assert (res["updated"], res["unchanged"]) == (0, 1)
    assert view_row(db, "BTCUSDT")["version"] == 3            # fill, price, fill: an unchanged price is no change


def test_stale_price_flag(db):
    apply_order(db, exec_a("b1", "Buy", 1, 100, "0", 0))
    set_prices(db, {"BTCUSDT": "100"})
    assert view_row(db, "BTCUSDT")["price_is_stale"] is False
    db.execute("UPDATE public.positions SET price_updated_at = price_updated_at - interval '301 seconds'")
    assert view_row(db, "BTCUSDT")["price_is_stale"] is True
    assert db.execute("SELECT array_agg(a) FROM pm.stale_price_assets() a").fetchone()[0] == ["BTCUSDT"]
    db.execute("SET pm.price_staleness_threshold = '600'")
    assert view_row(db, "BTCUSDT")["price_is_stale"] is False


def test_outbox_image_renders_like_the_view(db):
    """A change is kept in pm.outbox as an image and rendered on read: at the same instant the
    rendering equals the view's Position for every kind of position (open, short, hedged, closed,
    without price), and the stored image is the row as written."""
    book(db)
    apply_order(db, exec_a("b2", "Buy", 1, 120, "0", 5, asset="BTCUSDT"))
    rows = db.execute("""
        SELECT v.asset, pm.position_json(v, false),
               pm.position_json(pm.image_position(pm.image_of(p), pm.now_utc()), false),
               (SELECT pm.outbox_body(o) FROM pm.outbox o WHERE o.position_id = p.id ORDER BY o.id DESC LIMIT 1),
               (SELECT o.image = pm.image_of(p) FROM pm.outbox o WHERE o.position_id = p.id ORDER BY o.id DESC LIMIT 1)
          FROM pm.v_positions v JOIN public.positions p ON p.id = v.id ORDER BY v.asset""").fetchall()
    assert [r[0] for r in rows] == ["ADAUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    for asset, from_view, from_image, body, image_is_row in rows:
        assert from_image == from_view, asset
        assert image_is_row, asset
        # the published body: the same Position (time-dependent fields as of the change) + event fields
        event_fields = {"event_id", "event_type", "update_source", "trace_id", "timestamp"}
        assert set(body) == set(from_view) | event_fields, asset
        for key in set(from_view) - {"time_held_minutes", "price_is_stale"}:
            assert body[key] == from_view[key], (asset, key)
