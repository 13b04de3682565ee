"""Foreign writers caught in the database: a change of public.positions that did not come through
our SQL functions is counted, recorded with the writer and the row before and after, bumps the
version, publishes position_updated through the outbox, and validation --fix restores the ledger's
state. order-manager's own statements are replayed verbatim (asyncpg's $n parameters, decimals as
strings) from a role that may only touch the shared tables; every writer of ours passes unnoticed."""
from __future__ import annotations

import json
import os
from decimal import Decimal as D

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from app.db import q
from tests.sql.calls import call, push_prices, set_prices
from tests.sql.helpers import (apply_order, apply_position, at, exec_a, fold, messages, order_b, outbox_rows,
                               position)

# order-manager's fill handler, and its hourly rebuild from its orders table, send this upsert
# (the new size and average computed in Python from the row it read before): no version bump.
OM_UPSERT = """
                INSERT INTO positions (asset, size, average_entry_price, mode, last_updated)
                VALUES ($1, $2, $3, $4, NOW())
                ON CONFLICT (asset, mode)
                DO UPDATE SET
                    size = EXCLUDED.size,
                    average_entry_price = EXCLUDED.average_entry_price,
                    last_updated = NOW()
                RETURNING id, asset, size, average_entry_price, unrealized_pnl, realized_pnl,
                          mode, long_size, short_size, long_avg_price, short_avg_price,
                          last_updated, last_snapshot_at
            """
# ... and every 300 s a snapshot of each position, then its last_snapshot_at.
OM_SNAPSHOT = """
                INSERT INTO position_snapshots (
                    id, position_id, asset, size, average_entry_price,
                    unrealized_pnl, realized_pnl, mode, long_size, short_size,
                    snapshot_timestamp
                )
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                RETURNING id, position_id, asset, size, average_entry_price,
                          unrealized_pnl, realized_pnl, mode, long_size, short_size,
                          snapshot_timestamp
            """
OM_SNAPSHOT_MARK = """
                UPDATE positions
                SET last_snapshot_at = $1
                WHERE id = $2
            """
OM_APP = "order-manager"


@pytest.fixture
def order_manager(db, settings):
    """A connection as order-manager would have one: its own login role with privileges on the
    shared tables only (none on schema pm), its application_name, autocommit, $n parameters."""
    role = f"pm_test_om_{os.getpid()}"
    ident = sql.Identifier(role)
    db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    db.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON public.positions, public.position_snapshots TO {}")
               .format(ident))
    conn = psycopg.connect(**{**settings.conninfo(), "user": role, "application_name": OM_APP,
                              "options": "-c TimeZone=UTC"}, autocommit=True, cursor_factory=psycopg.RawCursor)
    conn.role = role
    yield conn
    conn.close()
    db.execute(sql.SQL("DROP OWNED BY {}").format(ident))
    db.execute(sql.SQL("DROP ROLE {}").format(ident))


def om_fill(om, asset: str, size: str, avg: str | None, mode: str = "one-way") -> dict:
    with om.cursor(row_factory=dict_row) as cur:
        return cur.execute(OM_UPSERT, (asset, size, avg, mode)).fetchone()


def foreign_rows(db) -> list[dict]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pm.discrepancies WHERE field = 'foreign_write' ORDER BY id").fetchall()


def foreign_count(db) -> int:
    return db.execute("SELECT coalesce((SELECT value FROM pm.counters WHERE name = 'foreign_writes'), 0)").fetchone()[0]


def fingerprint(db) -> str:
    return db.execute(q("api_positions_fingerprint")).fetchone()[0]


def test_order_managers_fill_upsert_is_caught_and_validation_restores_the_ledger(db, order_manager):
    apply_order(db, exec_a("f1", "Buy", 1, 100))
    before = position(db)
    print_before = fingerprint(db)
    # order-manager applies the same fill on top of our row: current + filled, its own average
    row = om_fill(order_manager, "BTCUSDT", "2", "100")
    assert row["size"] == 2

    after = position(db)
    assert after["version"] == before["version"] + 1 and after["size"] == 2
    assert fingerprint(db) != print_before
    assert foreign_count(db) == 1
    (rec,) = foreign_rows(db)
    assert (rec["source"], rec["detected_by"], rec["writer_role"], rec["application_name"]) == \
        ("foreign_write", "trigger", order_manager.role, OM_APP)
    assert (rec["position_id"], rec["asset"], rec["mode"]) == (after["id"], "BTCUSDT", "one-way")
    assert (D(rec["stored_value"]), D(rec["expected_value"])) == (2, 1)
    assert D(rec["row_before"]["size"]) == 1 and rec["row_before"]["version"] == before["version"]
    assert D(rec["row_after"]["size"]) == 2 and rec["row_after"]["version"] == after["version"]

    # the event: through the outbox like every change, the Position as it is now
    event = outbox_rows(db, after["id"])[-1]
    assert (event["event_type"], event["source"], event["action"], event["actor"], event["version"]) == \
        ("position_updated", "foreign_write", "update", order_manager.role, after["version"])
    assert event["detail"] == {"application_name": OM_APP, "changed": ["last_updated", "size", "version"]}
    body = messages(db)[-1]["payload"]
    assert (body["size"], body["version"], body["update_source"]) == ("2", after["version"], "foreign_write")
    history = call(db, "extras_position_history", asset="BTCUSDT", mode="one-way", limit=10, offset=0)["history"]
    assert (history[0]["source"], history[0]["actor"]) == ("foreign_write", order_manager.role)

    # the ledger is untouched, so validation sees the doubled fill; --fix restores the ledger's state
    assert fold(db, after["id"])["size"] == 1
    found = call(db, "api_validate_position", asset="BTCUSDT", mode="one-way", fix=False, trace=None, actor=None)
    assert {(d["field"], d["stored"], d["expected"]) for d in found["discrepancies"]} == {("size", "2", "1")}
    (summary,) = db.execute(q("job_validate_all"), {"fix": True, "trace": "t-fix"}).fetchone()
    assert summary["fixed"] == 1
    fixed = position(db)
    assert fixed["size"] == 1 and fixed["version"] == after["version"] + 1
    audit = outbox_rows(db, after["id"])[-1]
    assert (audit["source"], audit["action"], audit["trace_id"]) == ("validation", "fix", "t-fix")
    assert foreign_count(db) == 1    # our fix is not foreign


def test_a_position_order_manager_inserts_has_a_flat_ledger_and_our_fill_does_not_adopt_it(db, order_manager):
    om_fill(order_manager, "ETHUSDT", "3", "2000")      # order-manager saw the fill first
    (rec,) = foreign_rows(db)
    assert rec["row_before"] is None and D(rec["row_after"]["size"]) == 3
    created = position(db, "ETHUSDT")
    assert [(e["action"], e["source"]) for e in outbox_rows(db, created["id"])] == [("insert", "foreign_write")]
    # the same fill reaches us: it adds to the row, but the ledger holds only ours
    apply_order(db, exec_a("e1", "Buy", 3, 2000, asset="ETHUSDT"))
    assert position(db, "ETHUSDT")["size"] == 6
    assert fold(db, created["id"])["size"] == 3
    result = call(db, "api_validate_position", asset="ETHUSDT", mode="one-way", fix=True, trace=None, actor="test")
    assert result["fixed"] is True and position(db, "ETHUSDT")["size"] == 3


def test_order_managers_hourly_rebuild_and_snapshots_are_caught(db, order_manager):
    apply_order(db, exec_a("f1", "Buy", 2, 100))
    pos = position(db)
    # hourly: size and average from the sum of its orders table, the same upsert
    om_fill(order_manager, "BTCUSDT", "1.5", "99.5")
    # every 300 s: a snapshot row (not ours to police) and last_snapshot_at on the position
    with order_manager.cursor(row_factory=dict_row) as cur:
        snap = cur.execute(OM_SNAPSHOT, ("9b2f7c1e-4f7e-4a52-9a11-0c1f6d2e3a4b", str(pos["id"]), "BTCUSDT", "1.5",
                                         "99.5", None, None, "one-way", None, None, "2026-01-01 00:05:00")).fetchone()
        cur.execute(OM_SNAPSHOT_MARK, ("2026-01-01 00:05:00", str(pos["id"])))
    assert snap["position_id"] == pos["id"]
    recs = foreign_rows(db)
    assert len(recs) == 2 == foreign_count(db)
    assert "last_snapshot_at" in set(outbox_rows(db, pos["id"])[-1]["detail"]["changed"])
    assert position(db)["version"] == pos["version"] + 2
    # the same last_snapshot_at again changes nothing: not a write, not counted
    with order_manager.cursor() as cur:
        cur.execute(OM_SNAPSHOT_MARK, ("2026-01-01 00:05:00", str(pos["id"])))
    assert foreign_count(db) == 2 and position(db)["version"] == pos["version"] + 2


def test_our_own_writers_are_not_foreign(db):
    apply_order(db, exec_a("f1", "Buy", 1, 100))                                      # creates the row
    batch = [exec_a(f"b{i}", "Buy", 1, 10, minute=i, asset="SOLUSDT") for i in range(3)]
    db.execute(q("pipeline_apply_batch"), {"kind": "order", "bodies": [json.dumps(b) for b in batch]})  # the consumers' path
    apply_order(db, order_b("o9", "partially_filled", "Sell", "0.5", "101", minute=5))  # cumulative shape
    report = {"event_id": "p1", "event_type": "position", "topic": "position.position", "timestamp": at(6),
              "payload": {"symbol": "BTCUSDT", "size": "0.5", "side": "Buy", "avg_price": None,
                          "mode": 0, "raw": {"positionIdx": 0, "markPrice": "105", "updatedTime": "1767225960000",
                                             "side": "Buy", "size": "0.5", "seq": 7}}}
    assert apply_position(db, report)["status"] == "applied"
    again = apply_position(db, {**report, "timestamp": at(7),
                                "payload": {**report["payload"], "raw": {**report["payload"]["raw"],
                                                                         "updatedTime": "1767226020000", "seq": 8}}})
    assert (again["status"], again.get("reason")) == ("ignored", "no change"), again   # price_updated_at only
    assert set_prices(db, {"SOLUSDT": "11"})["updated"] == 1
    assert set_prices(db, {"SOLUSDT": "11"})["unchanged"] == 1            # price_updated_at only
    push_prices(db, {"BTCUSDT": "106"})
    db.execute("SELECT pm.snapshot_all('t')")
    call(db, "api_snapshot_position", asset="BTCUSDT", mode="one-way", trace=None)
    db.execute("SELECT pm.validate_all(true, 't')")
    call(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way", patch='{"notes": "x"}',
         expected_version=None, trace=None, actor="test")
    call(db, "extras_close_position", asset="SOLUSDT", mode="one-way", exit_price=None, expected_version=None,
         trace=None, actor="test")
    call(db, "extras_delete_position", asset="SOLUSDT", mode="one-way", expected_version=None, trace=None, actor="test")
    call(db, "extras_open_position", body=json.dumps({"asset": "SOLUSDT", "side": "short", "quantity": "2",
                                                      "entry_price": "12"}), trace=None, actor="test")
    assert position(db, "SOLUSDT")["size"] == -2
    assert db.execute("SELECT count(*) FROM pm.outbox WHERE source = 'foreign_write'").fetchone()[0] == 0
    assert foreign_rows(db) == [] and foreign_count(db) == 0


def test_the_marker_covers_only_our_statement(db):
    """A foreign statement in the same transaction as one of ours, after it, is caught; a marker set
    by hand for the session, or left from another transaction, does not pass."""
    apply_order(db, exec_a("f1", "Buy", 1, 100))
    with db.transaction():
        apply_order(db, exec_a("f2", "Buy", 1, 100))
        db.execute("UPDATE public.positions SET size = 7")
    assert foreign_count(db) == 1
    db.execute("SET pm.writer = 'on'")
    db.execute("UPDATE public.positions SET size = 8")
    stale = db.execute("SELECT pm.own_writes(true)").fetchone()[0]    # its own transaction (autocommit)
    db.execute("SELECT set_config('pm.writer', %s, false)", (stale,))
    db.execute("UPDATE public.positions SET size = 9")
    assert foreign_count(db) == 3
    db.execute("RESET pm.writer")
    # an error inside one of ours rolls the marker back with its savepoint
    with db.transaction():
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            with db.transaction():
                db.execute("SELECT pm.own_writes(true)")
                db.execute("SELECT pm.bad_input('x', 'boom')")
        db.execute("UPDATE public.positions SET size = 10")
    assert foreign_count(db) == 4


def test_a_foreign_delete_is_recorded_and_counted(db):
    apply_order(db, exec_a("f1", "Buy", 1, 100))
    pos = position(db)
    events = len(outbox_rows(db))
    db.execute("DELETE FROM public.positions WHERE id = %s", (pos["id"],))
    (rec,) = foreign_rows(db)
    assert rec["position_id"] == pos["id"] and rec["row_after"] is None and rec["row_before"]["id"] == str(pos["id"])
    assert rec["expected_value"] == "1" and foreign_count(db) == 1
    assert len(outbox_rows(db)) == events      # nothing to publish for a row that is gone


def test_health_counts_foreign_writes_of_the_last_day(db):
    apply_order(db, exec_a("f1", "Buy", 1, 100))
    db.execute("UPDATE public.positions SET size = 3")
    db.execute("UPDATE public.positions SET size = 4")
    db.execute("UPDATE pm.discrepancies SET detected_at = now() - interval '25 hours' "
               "WHERE id = (SELECT min(id) FROM pm.discrepancies)")
    health = db.execute("SELECT pm.health()").fetchone()[0]
    assert health["foreign_writes_24h"] == 1 and health["counters"]["foreign_writes"] == 2


def test_every_statement_of_ours_that_writes_positions_is_marked():
    """A writer of positions added to sql/repeatable/ without pm.own_writes around it would be taken
    for a foreign writer (counted, recorded, version bumped twice): the code files say so here."""
    from pathlib import Path
    import re

    write = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+public\.positions\b", re.IGNORECASE)
    unmarked = []
    for path in sorted((Path(__file__).resolve().parents[2] / "sql" / "repeatable").glob("*.sql")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if write.search(line.split("--")[0]):
                start = max(j for j in range(i + 1) if lines[j].startswith("CREATE OR REPLACE FUNCTION"))
                end = min(j for j in range(i, len(lines)) if lines[j].startswith("$$"))
                before, after = "\n".join(lines[start:i]), "\n".join(lines[i:end])
                if "own_writes(true)" not in before or "own_writes(false)" not in after:
                    unmarked.append(f"{path.name}:{i + 1}")
    assert unmarked == []
