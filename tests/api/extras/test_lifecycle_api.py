"""A position's life through the API: GET by id, POST /api/v1/positions (201, Location, 409),
DELETE (admin only, flat only, 404 by id afterwards), POST /api/v1/positions/bulk-update (all or
nothing), PATCH with current_price, the fuller summary; through the Falcon app and, for the whole
life in one go, through a real gunicorn over HTTP."""
from __future__ import annotations

import uuid

import pytest
import requests

from tests.api.conftest import API_KEY, server_environ
from tests.api.extras.test_api import assert_error, new_key
from tests.sql.calls import fill


def create(client, **body):
    return client.simulate_post("/api/v1/positions", json=body, headers={"X-Trace-Id": "t-create"})


def test_get_by_id_and_every_path_that_takes_a_symbol_takes_the_id(client, db):
    pos = fill(db, "XRPUSDT", "Buy", "10", "0.5", mode="hedge", position_idx=1)
    by_id = client.simulate_get(f"/api/v1/positions/{pos['id']}")
    assert by_id.status_code == 200 and by_id.json == client.simulate_get(
        "/api/v1/positions/xrpusdt", params={"mode": "hedge"}).json
    assert by_id.headers["ETag"] == 'W/"1"'
    assert client.simulate_get(f"/api/v1/positions/{pos['id'].upper()}",
                               headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.simulate_get(f"/api/v1/positions/{pos['id']}", params={"mode": "hedge"}).status_code == 200
    assert_error(client.simulate_get(f"/api/v1/positions/{pos['id']}", params={"mode": "one-way"}),
                 404, "not_found", "not found in mode one-way")
    assert_error(client.simulate_get(f"/api/v1/positions/{uuid.uuid4()}"), 404, "not_found")
    for path in ("history", "snapshots"):
        assert client.simulate_get(f"/api/v1/positions/{pos['id']}/{path}").status_code == 200
    assert client.simulate_post(f"/api/v1/positions/{pos['id']}/snapshot").status_code == 201
    assert client.simulate_post(f"/api/v1/positions/{pos['id']}/validate").json["is_valid"]
    assert client.simulate_get(f"/api/v1/positions/{pos['id']}",
                               params={"as_of": "2025-01-28T00:00:00Z"}).json["long_size"] == "10"
    patched = client.simulate_patch(f"/api/v1/positions/{pos['id']}", json={"notes": "by id"})
    assert patched.status_code == 200 and (patched.json["notes"], patched.json["mode"]) == ("by id", "hedge")
    closed = client.simulate_post(f"/api/v1/positions/{pos['id']}/close", params={"exit_price": "0.6"})
    assert closed.status_code == 200 and closed.json["position"]["is_open"] is False
    # a symbol needs a letter: neither a UUID nor a symbol is 400 naming both
    for bad in ("1000", "not-a-uuid-but-far-too-long-for-a-symbol", "12345678-1234-1234-1234-12345678901g"):
        assert_error(client.simulate_get(f"/api/v1/positions/{bad}"), 400, "invalid_parameter", "position id")


def test_create_is_201_with_location_etag_and_the_position_then_409(client):
    response = create(client, asset="btcusdt", side="long", quantity="0.5", entry_price="50000",
                      stop_loss="48000", strategy="momentum")
    assert response.status_code == 201, response.text
    pos = response.json
    assert response.headers["Location"] == f"/api/v1/positions/{pos['id']}"
    assert response.headers["ETag"] == 'W/"1"'
    assert (pos["asset"], pos["side"], pos["size"], pos["average_entry_price"], pos["stop_loss"], pos["strategy"]) == \
        ("BTCUSDT", "long", "0.5", "50000", "48000", "momentum")
    assert client.simulate_get(response.headers["Location"]).json == client.simulate_get("/api/v1/positions/BTCUSDT").json
    (entry,) = client.simulate_get(f"/api/v1/positions/{pos['id']}/history").json["history"]
    assert (entry["source"], entry["action"], entry["trace_id"]) == ("manual", "open", "t-create")
    assert entry["actor"].startswith("api:")
    assert_error(create(client, asset="BTCUSDT", side="short", quantity="1", entry_price="1"), 409, "conflict",
                 "already open")
    assert_error(create(client, asset="BTCUSDT", side="sideways", quantity="1", entry_price="1"), 400,
                 "invalid_parameter", "side")
    assert_error(client.simulate_post("/api/v1/positions", body=b"{nope", headers={"Content-Type": "application/json"}),
                 400, "invalid_parameter", "body")
    assert_error(client.simulate_post("/api/v1/positions", json={"asset": "ETHUSDT"}, params={"mode": "hedge"}),
                 400, "invalid_parameter", "mode")


def test_delete_needs_admin_and_a_flat_position(make_client, client, api_settings, db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    writer = make_client(api_settings, key=new_key(client, "ops", "write"))
    assert_error(writer.simulate_delete("/api/v1/positions/BTCUSDT"), 403, "forbidden", "needs admin")
    assert writer.simulate_post("/api/v1/positions", json={"asset": "ETHUSDT", "side": "short", "quantity": "1",
                                                           "entry_price": "3000"}).status_code == 201
    assert_error(client.simulate_delete("/api/v1/positions/BTCUSDT"), 409, "conflict", "close it first")
    pos = client.simulate_post("/api/v1/positions/BTCUSDT/close", params={"exit_price": "110"}).json["position"]
    assert_error(client.simulate_delete(f"/api/v1/positions/{pos['id']}", headers={"If-Match": 'W/"1"'}),
                 412, "precondition_failed")
    deleted = client.simulate_delete(f"/api/v1/positions/{pos['id']}", headers={"If-Match": f'W/"{pos["version"]}"'})
    assert deleted.status_code == 200, deleted.text
    assert (deleted.json["status"], deleted.json["id"], deleted.json["kept"]["ledger_rows"]) == ("deleted", pos["id"], 2)
    assert_error(client.simulate_get(f"/api/v1/positions/{pos['id']}"), 404, "not_found", "was deleted at")
    assert_error(client.simulate_get("/api/v1/positions/BTCUSDT"), 404, "not_found")
    assert_error(client.simulate_delete("/api/v1/positions/BTCUSDT"), 404, "not_found")
    assert [p["asset"] for p in client.simulate_get("/api/v1/positions").json["positions"]] == ["ETHUSDT"]
    # the asset opened again: a new id, versions after the deleted ones (no ETag of the old row matches)
    again = create(client, asset="BTCUSDT", side="long", quantity="1", entry_price="120")
    assert again.status_code == 201 and again.json["id"] != pos["id"] and again.json["version"] == pos["version"] + 1


def test_bulk_update_all_or_nothing(client, db):
    ids = [fill(db, asset, "Buy", "1", "100")["id"] for asset in ("BTCUSDT", "ETHUSDT")]
    response = client.simulate_post("/api/v1/positions/bulk-update",
                                    json={"position_ids": ids, "updates": {"stop_loss": "90", "notes": "tightened"}})
    assert response.status_code == 200, response.text
    assert response.json["updated"] == 2 and [p["id"] for p in response.json["positions"]] == ids
    assert {p["stop_loss"] for p in response.json["positions"]} == {"90"}
    missing = str(uuid.uuid4())
    assert_error(client.simulate_post("/api/v1/positions/bulk-update",
                                      json={"position_ids": ids + [missing], "updates": {"stop_loss": "80"}}),
                 404, "not_found", missing)
    assert_error(client.simulate_post("/api/v1/positions/bulk-update",
                                      json={"position_ids": ids, "updates": {"stop_loss": "0"}}),
                 400, "invalid_parameter", "stop_loss")
    assert {client.simulate_get(f"/api/v1/positions/{i}").json["stop_loss"] for i in ids} == {"90"}
    assert client.simulate_get("/api/v1/positions/bulk-update").status_code == 405


def test_patch_current_price_and_the_summary_totals(client, db):
    fill(db, "BTCUSDT", "Buy", "2", "100", fee="1")
    fill(db, "ETHUSDT", "Sell", "1", "50")
    response = client.simulate_patch("/api/v1/positions/BTCUSDT", json={"current_price": "110"})
    assert response.status_code == 200, response.text
    assert (response.json["current_price"], response.json["unrealized_pnl"], response.json["version"]) == ("110", "20", 2)
    assert response.headers["ETag"] == 'W/"2"'
    assert client.simulate_post("/api/v1/prices", json={"ETHUSDT": "40"}).status_code == 200
    summary = client.simulate_get("/api/v1/portfolio/summary").json
    portfolio = client.simulate_get("/api/v1/portfolio").json
    assert (summary["total_positions"], summary["open_positions"], summary["closed_positions"]) == (2, 2, 0)
    assert summary["total_market_value"] == portfolio["total_exposure_usdt"] == "260"
    assert summary["total_unrealized_pnl"] == portfolio["total_unrealized_pnl_usdt"] == "30"
    assert summary["total_realized_pnl"] == portfolio["total_realized_pnl_usdt"] == "-1"


@pytest.mark.slow
def test_a_whole_life_over_gunicorn(start_server, settings, db):
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="2"))
    http = requests.Session()
    http.headers["X-API-Key"] = API_KEY
    url = server.url + "/api/v1/positions"

    created = http.post(url, json={"asset": "SOLUSDT", "side": "short", "quantity": "3", "entry_price": "150",
                                   "take_profit": "120"}, timeout=10)
    assert created.status_code == 201, created.text
    pos = created.json()
    location = server.url + created.headers["Location"]
    assert http.post(url, json={"asset": "solusdt", "side": "long", "quantity": "1", "entry_price": "1"},
                     timeout=10).status_code == 409
    patched = http.patch(location, json={"current_price": "140", "notes": "halfway"},
                         headers={"If-Match": created.headers["ETag"]}, timeout=10)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["unrealized_pnl"], patched.json()["notes"]) == ("30", "halfway")
    bulk = http.post(url + "/bulk-update", json={"position_ids": [pos["id"]], "updates": {"stop_loss": "160"}}, timeout=10)
    assert bulk.status_code == 200 and bulk.json()["positions"][0]["stop_loss"] == "160"
    summary = http.get(server.url + "/api/v1/portfolio/summary", timeout=10).json()
    assert (summary["total_positions"], summary["total_market_value"], summary["total_unrealized_pnl"]) == (1, "420", "30")
    assert http.delete(location, timeout=10).status_code == 409
    closed = http.post(location + "/close", timeout=10)        # at the current price, 140
    assert closed.status_code == 200 and closed.json()["realized_pnl"] == "30"
    deleted = http.delete(location, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    gone = http.get(location, timeout=10)
    assert gone.status_code == 404 and "was deleted at" in gone.json()["message"]
    assert http.get(url, timeout=10).json()["total"] == 0
    assert http.get(server.url + "/api/v1/portfolio/summary", timeout=10).json()["total_positions"] == 0
    history = db.execute("SELECT action FROM pm.outbox WHERE position_id = %s AND event_type = 'position_updated' "
                         "ORDER BY id", (pos["id"],)).fetchall()
    assert [a for (a,) in history] == ["open", "price", "metadata", "metadata", "close"]
