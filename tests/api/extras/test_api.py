"""The extras endpoints through the Falcon app on a real database: metadata with If-Match, manual
close, price pushes, trade statistics, history, as-of, API key management and scopes."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.api.conftest import API_KEY
from tests.sql.calls import fill


def new_key(client, name: str, scope: str, rate_limit: int | None = None) -> str:
    """A stored key made through POST /api/v1/api-keys with the (admin) environment key."""
    body = {"name": name, "scope": scope}
    if rate_limit is not None:
        body["rate_limit"] = rate_limit
    response = client.simulate_post("/api/v1/api-keys", json=body)
    assert response.status_code == 201, response.text
    return response.json["key"]


def history(client, asset="BTCUSDT"):
    return client.simulate_get(f"/api/v1/positions/{asset}/history").json["history"]


def assert_error(response, status, code, *words):
    assert response.status_code == status, response.text
    body = response.json
    assert body["error_code"] == code and body["trace_id"] == response.headers["X-Trace-Id"]
    for word in words:
        assert word in body["message"], body["message"]


# ------------------------------------------------------------------ PATCH with If-Match

def test_patch_with_the_etag_of_get_then_a_stale_etag_is_412(client, db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    etag = client.simulate_get("/api/v1/positions/btcusdt").headers["ETag"]
    response = client.simulate_patch("/api/v1/positions/btcusdt", json={"stop_loss": "48000", "strategy": "momentum"},
                                     headers={"If-Match": etag, "X-Trace-Id": "t-patch-1"})
    assert response.status_code == 200, response.text
    assert response.json["stop_loss"] == "48000" and response.json["version"] == 2
    assert response.headers["ETag"] == 'W/"2"'
    stale = client.simulate_patch("/api/v1/positions/BTCUSDT", json={"notes": "late"}, headers={"If-Match": etag})
    assert_error(stale, 412, "precondition_failed", "expected 1, current 2")
    # not an ETag at all: a malformed header (400 naming it), not a failed precondition
    assert_error(client.simulate_patch("/api/v1/positions/BTCUSDT", json={"notes": "x"}, headers={"If-Match": "garbage"}),
                 400, "invalid_parameter", "If-Match")
    # without If-Match: last writer wins
    assert client.simulate_patch("/api/v1/positions/BTCUSDT", json={"notes": "ok"}).json["version"] == 3
    newest = history(client)[1]
    assert (newest["source"], newest["action"], newest["trace_id"]) == ("manual", "metadata", "t-patch-1")
    assert newest["actor"].startswith("api:") and API_KEY not in json.dumps(newest)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, ["body", "JSON"]), (b"", 400, ["body"]), (b'{"stop_loss": "-1"}', 400, ["stop_loss"]),
    (b'{"size": "1"}', 400, ["size"]), (b'[]', 400, ["body"]), (b'{"notes": 5}', 400, ["notes"]),
])
def test_patch_bad_bodies_are_400_naming_the_field(client, db, body, status, words):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    response = client.simulate_patch("/api/v1/positions/BTCUSDT", body=body, headers={"Content-Type": "application/json"})
    assert_error(response, status, "invalid_parameter", *words)
    assert client.simulate_get("/api/v1/positions/BTCUSDT").json["version"] == 1


def test_patch_of_an_unknown_position_is_404(client):
    assert_error(client.simulate_patch("/api/v1/positions/NOPEUSDT", json={"notes": "x"}), 404, "not_found")


# ------------------------------------------------------------------ close

def test_close_at_a_given_price_then_again_is_409(client, db):
    fill(db, "BTCUSDT", "Buy", "2", "100")
    response = client.simulate_post("/api/v1/positions/BTCUSDT/close", params={"exit_price": "110"},
                                    headers={"If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    assert (response.json["status"], response.json["realized_pnl"], response.json["position"]["size"]) == ("closed", "20", "0")
    assert response.headers["ETag"] == 'W/"2"'
    validation = client.simulate_post("/api/v1/positions/BTCUSDT/validate").json
    assert validation["is_valid"] is True
    assert_error(client.simulate_post("/api/v1/positions/BTCUSDT/close", params={"exit_price": "110"}), 409, "conflict", "flat")
    assert history(client)[0]["action"] == "close"


def test_close_errors(client, db):
    fill(db, "ETHUSDT", "Sell", "1", "3000")
    assert_error(client.simulate_post("/api/v1/positions/ETHUSDT/close"), 400, "invalid_parameter", "exit_price")
    for bad in ("0", "-3", "abc", "NaN"):
        assert_error(client.simulate_post("/api/v1/positions/ETHUSDT/close", params={"exit_price": bad}),
                     400, "invalid_parameter", "exit_price")
    assert_error(client.simulate_post("/api/v1/positions/ETHUSDT/close", params={"exit_price": "1", "mode": "hedge"}), 404, "not_found")
    assert_error(client.simulate_post("/api/v1/positions/ETHUSDT/close", params={"exit_price": "1"},
                                      headers={"If-Match": '"7"'}), 412, "precondition_failed")
    assert client.simulate_get("/api/v1/positions/ETHUSDT").json["size"] == "-1"


def test_close_uses_the_pushed_price(client, db):
    fill(db, "ETHUSDT", "Sell", "1", "3000")
    assert client.simulate_post("/api/v1/prices", json={"ethusdt": "2950"}).json == {"updated": 1, "unchanged": 0, "unknown": []}
    response = client.simulate_post("/api/v1/positions/ETHUSDT/close")
    assert (response.json["exit_price"], response.json["realized_pnl"]) == ("2950", "50")


# ------------------------------------------------------------------ prices

def test_price_push_sets_prices_and_invalidates_the_portfolio_cache(client, db):
    fill(db, "BTCUSDT", "Buy", "2", "100")
    fill(db, "BTCUSDT", "Buy", "1", "100", mode="hedge", position_idx=1)
    before = client.simulate_get("/api/v1/portfolio").json
    assert before["total_exposure_usdt"] == "0"
    response = client.simulate_post("/api/v1/prices", json={"BTCUSDT": "110.5", "SOLUSDT": 150},
                                    headers={"X-Trace-Id": "t-prices"})
    assert response.json == {"updated": 2, "unchanged": 0, "unknown": ["SOLUSDT"]}
    after = client.simulate_get("/api/v1/portfolio").json
    assert Decimal(after["total_exposure_usdt"]) == Decimal("331.5")
    pos = client.simulate_get("/api/v1/positions/BTCUSDT").json
    assert (pos["current_price"], pos["unrealized_pnl"]) == ("110.5", "21")
    entry = history(client)[0]
    assert (entry["source"], entry["action"], entry["trace_id"], entry["detail"]["price"]) == ("manual", "price", "t-prices", "110.5")
    assert client.simulate_post("/api/v1/prices", json={"BTCUSDT": "110.5"}).json["unchanged"] == 2


@pytest.mark.parametrize("body, words", [
    ({"BTCUSDT": "-1"}, ["BTCUSDT"]), ({"BTCUSDT": "1", "ETHUSDT": "abc"}, ["ETHUSDT"]), ({"BT C": "1"}, ["BT C"]),
    ({}, ["body"]), (["BTCUSDT"], ["body"]), ({"BTCUSDT": {"p": 1}}, ["BTCUSDT"]),
    ({"BTCUSDT": "0.000000001"}, ["BTCUSDT", "smallest"]),
])
def test_bad_price_pushes_are_400_and_write_nothing(client, db, body, words):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    assert_error(client.simulate_post("/api/v1/prices", json=body), 400, "invalid_parameter", *words)
    assert client.simulate_get("/api/v1/positions/BTCUSDT").json["current_price"] is None


# ------------------------------------------------------------------ summary, history, as of

def test_summary(client, db):
    fill(db, "BTCUSDT", "Buy", "1", "100", at="2025-01-01T00:00:00Z")
    fill(db, "BTCUSDT", "Sell", "1", "130", at="2025-01-01T01:00:00Z")
    fill(db, "ETHUSDT", "Buy", "1", "100", at="2025-01-01T00:00:00Z")
    fill(db, "ETHUSDT", "Sell", "1", "90", at="2025-01-01T01:00:00Z")
    fill(db, "SOLUSDT", "Buy", "1", "100")
    client.simulate_post("/api/v1/prices", json={"SOLUSDT": "80"})
    client.simulate_patch("/api/v1/positions/SOLUSDT", json={"stop_loss": "85"})
    s = client.simulate_get("/api/v1/portfolio/summary").json
    assert (s["closed_holdings"], s["open_holdings"], s["win_rate_pct"], s["profit_factor"]) == (2, 1, "50", "3")
    assert (s["average_win"], s["average_loss"], s["largest_position_pct"]) == ("30", "-10", "100")
    assert (s["positions_at_risk"], s["positions_at_risk_assets"]) == (1, ["SOLUSDT"])
    assert_error(client.simulate_get("/api/v1/portfolio/summary", params={"x": "1"}), 400, "invalid_parameter", "x")


def test_history_pages_and_errors(client, db):
    for price in ("100", "101", "102"):
        fill(db, "BTCUSDT", "Buy", "1", price)
    page = client.simulate_get("/api/v1/positions/btcusdt/history", params={"limit": "2"}).json
    assert [h["version"] for h in page["history"]] == [3, 2] and page["has_more"] is True
    page = client.simulate_get("/api/v1/positions/btcusdt/history", params={"limit": "2", "offset": "2"}).json
    assert [h["version"] for h in page["history"]] == [1] and page["has_more"] is False
    assert_error(client.simulate_get("/api/v1/positions/NOPEUSDT/history"), 404, "not_found")
    assert_error(client.simulate_get("/api/v1/positions/BTCUSDT/history", params={"limit": "0"}), 400, "invalid_parameter", "limit")


def test_as_of(client, db):
    fill(db, "BTCUSDT", "Buy", "1", "100", at="2025-01-01T00:00:00Z")
    fill(db, "BTCUSDT", "Buy", "1", "110", at="2025-01-02T00:00:00Z")
    then = client.simulate_get("/api/v1/positions/BTCUSDT", params={"as_of": "2025-01-01T12:00:00Z"})
    assert then.status_code == 200 and (then.json["size"], then.json["average_entry_price"]) == ("1", "100")
    assert "ETag" not in then.headers
    now = client.simulate_get("/api/v1/positions/BTCUSDT", params={"as_of": "2025-01-03T00:00:00+02:00"}).json
    assert (now["size"], now["average_entry_price"]) == ("2", "105")
    assert_error(client.simulate_get("/api/v1/positions/BTCUSDT", params={"as_of": "2024-01-01T00:00:00Z"}), 404, "not_found", "did not exist")
    assert_error(client.simulate_get("/api/v1/positions/BTCUSDT", params={"as_of": "yesterday"}), 400, "invalid_parameter", "as_of")
    assert_error(client.simulate_get("/api/v1/positions/BTCUSDT", params={"as_of": "2025-01-01T00:00:00Z", "x": "1"}),
                 400, "invalid_parameter", "x")
    # without as_of the route is the plain GET (ETag, 304)
    plain = client.simulate_get("/api/v1/positions/BTCUSDT")
    assert plain.headers["ETag"] == 'W/"2"'
    assert client.simulate_get("/api/v1/positions/BTCUSDT", headers={"If-None-Match": 'W/"2"'}).status_code == 304


# ------------------------------------------------------------------ keys and scopes

def test_scopes_of_stored_keys(client, make_client, api_settings, db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    reader = make_client(api_settings, new_key(client, "dashboard", "read"))
    writer = make_client(api_settings, new_key(client, "trader-ops", "write"))
    admin = make_client(api_settings, new_key(client, "oncall", "admin"))

    for c in (reader, writer, admin):
        assert c.simulate_get("/api/v1/positions/BTCUSDT").status_code == 200
        assert c.simulate_get("/api/v1/portfolio/summary").status_code == 200
        assert c.simulate_post("/api/v1/positions/BTCUSDT/validate").status_code == 200
    assert_error(reader.simulate_patch("/api/v1/positions/BTCUSDT", json={"notes": "x"}), 403, "forbidden",
                 "dashboard", "read", "needs write")
    assert_error(reader.simulate_post("/api/v1/prices", json={"BTCUSDT": "1"}), 403, "forbidden")
    assert_error(reader.simulate_post("/api/v1/positions/BTCUSDT/close", params={"exit_price": "1"}), 403, "forbidden")
    assert_error(reader.simulate_post("/api/v1/positions/BTCUSDT/snapshot"), 403, "forbidden")
    assert_error(writer.simulate_post("/api/v1/positions/BTCUSDT/validate", params={"fix_discrepancies": "true"}),
                 403, "forbidden", "needs admin")
    assert_error(writer.simulate_get("/api/v1/api-keys"), 403, "forbidden")
    assert writer.simulate_patch("/api/v1/positions/BTCUSDT", json={"notes": "x"}).status_code == 200
    assert history(client)[0]["actor"] == "key:trader-ops"
    assert admin.simulate_post("/api/v1/positions/BTCUSDT/validate", params={"fix_discrepancies": "true"}).status_code == 200
    assert [k["name"] for k in admin.simulate_get("/api/v1/api-keys").json["keys"]] == ["dashboard", "oncall", "trader-ops"]
    assert admin.simulate_post("/api/v1/positions/BTCUSDT/close", params={"exit_price": "2"}).status_code == 200

    # revoked: 401 at the very next request
    assert client.simulate_delete("/api/v1/api-keys/dashboard").json["revoked_at"] is not None
    assert_error(reader.simulate_get("/api/v1/positions/BTCUSDT"), 401, "unauthorized")
    assert_error(client.simulate_delete("/api/v1/api-keys/dashboard"), 404, "not_found")
    assert_error(make_client(api_settings, "pmk_unknown").simulate_get("/api/v1/positions"), 401, "unauthorized")


def test_a_stored_key_has_its_own_rate_limit(client, make_client, api_settings):
    limited = make_client(api_settings, new_key(client, "slow", "read", rate_limit=3))
    statuses = [limited.simulate_get("/api/v1/portfolio/summary") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[0].headers["X-RateLimit-Limit"] == "3" and "Retry-After" in statuses[3].headers
    assert client.simulate_get("/api/v1/portfolio/summary").status_code == 200   # other keys unaffected


def test_key_management_errors(client):
    created = client.simulate_post("/api/v1/api-keys", json={"name": "ui", "scope": "read"})
    assert created.status_code == 201 and created.json["key"].startswith("pmk_")
    assert created.json["key"] not in json.dumps(client.simulate_get("/api/v1/api-keys").json)
    assert_error(client.simulate_post("/api/v1/api-keys", json={"name": "ui", "scope": "read"}), 409, "conflict", "ui")
    for body, field in (({"name": "x", "scope": "root"}, "scope"), ({"scope": "read"}, "name"),
                        ({"name": "bad name", "scope": "read"}, "name"), ({"name": "x", "scope": "read", "rate_limit": 0}, "rate_limit"),
                        ({"name": "x", "scope": "read", "extra": 1}, "extra"), ([1], "body")):
        assert_error(client.simulate_post("/api/v1/api-keys", json=body), 400, "invalid_parameter", field)


def test_a_validation_fix_by_a_stored_admin_key_is_audited_with_its_name(client, make_client, api_settings, db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    db.execute("UPDATE public.positions SET size = 5 WHERE asset = 'BTCUSDT'")   # break it
    admin = make_client(api_settings, new_key(client, "oncall", "admin"))
    result = admin.simulate_post("/api/v1/positions/BTCUSDT/validate", params={"fix_discrepancies": "true"}).json
    assert result["is_valid"] is False and result["updated_position"]["size"] == "1"
    entry = history(client)[0]
    assert (entry["source"], entry["action"], entry["actor"]) == ("validation", "fix", "key:oncall")
