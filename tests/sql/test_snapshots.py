"""Snapshots and retention at the SQL level."""
from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.sql.helpers import apply_order, exec_a, position


def snap_all(db) -> int:
    return db.execute("SELECT pm.snapshot_all('tr-snap')").fetchone()[0]["snapshots"]


def snapshot_count(db, asset="BTCUSDT") -> int:
    return db.execute("SELECT count(*) FROM public.position_snapshots WHERE asset = %s", (asset,)).fetchone()[0]


def iso(ts) -> str:
    return ts.isoformat() + "Z"


def test_snapshot_position(db):
    apply_order(db, exec_a("f1", "Buy", 2, 100, "0", 0))
    snap = db.execute("SELECT pm.snapshot_position('btcusdt', 'one-way', 'tr-1')").fetchone()[0]
    assert (snap["asset"], snap["size"], snap["average_entry_price"]) == ("BTCUSDT", "2", "100")
    assert snap["snapshot_data"]["version"] == 1 and snap["snapshot_data"]["size"] == "2"
    row = position(db)
    assert row["last_snapshot_at"] is not None
    assert row["version"] == 1                                   # a snapshot is not a position change
    (event_type, payload) = db.execute("SELECT event_type, payload FROM pm.outbox WHERE event_type = "
                                       "'position_snapshot_created'").fetchone()
    assert payload["id"] == snap["id"] and payload["trace_id"] == "tr-1"
    with pytest.raises(psycopg.errors.NoDataFound):
        db.execute("SELECT pm.snapshot_position('ETHUSDT')")


def test_snapshot_all_takes_open_and_newly_closed_positions(db):
    apply_order(db, exec_a("o1", "Buy", 1, 100, "0", 0))                      # open
    apply_order(db, exec_a("c1", "Buy", 1, 100, "0", 0, asset="ETHUSDT"))
    apply_order(db, exec_a("c2", "Sell", 1, 100, "0", 1, asset="ETHUSDT"))    # closed, never snapshotted
    assert snap_all(db) == 2
    assert snap_all(db) == 1                                  # the closed one is not taken again
    assert (snapshot_count(db), snapshot_count(db, "ETHUSDT")) == (2, 1)


def test_snapshot_all_after_a_close_delivered_late(db):
    """The closing fill executed before the last snapshot ran but arrived after it: the position
    changed since that snapshot, so the next run must still record the closed state."""
    now = db.execute("SELECT pm.now_utc()").fetchone()[0]
    apply_order(db, exec_a("o1", "Buy", 1, 100, "0", 0) | {"executed_at": iso(now - timedelta(minutes=5))})
    assert snap_all(db) == 1
    last = position(db)["last_snapshot_at"]
    apply_order(db, exec_a("o2", "Sell", 1, 101, "0", 0) | {"executed_at": iso(last - timedelta(seconds=30))})
    assert position(db)["size"] == 0
    assert snap_all(db) == 1, "the closed state was never snapshotted"


def test_list_snapshots_newest_first_with_paging_and_range(db):
    apply_order(db, exec_a("f1", "Buy", 1, 100, "0", 0))
    pid = position(db)["id"]
    db.execute("INSERT INTO public.position_snapshots (position_id, asset, size, mode, snapshot_timestamp) "
               "SELECT %s, 'BTCUSDT', g, 'one-way', timestamp '2026-01-01' + g * interval '1 day' "
               "FROM generate_series(1, 5) g", (pid,))
    page = db.execute("SELECT pm.list_snapshots('BTCUSDT', 'one-way', 2, 1)").fetchone()[0]
    assert page["count"] == 2
    assert [s["size"] for s in page["snapshots"]] == ["4", "3"]
    ranged = db.execute("SELECT pm.list_snapshots('BTCUSDT', 'one-way', 100, 0, '2026-01-02T00:00:00Z', "
                        "'2026-01-04T00:00:00Z')").fetchone()[0]
    assert [s["snapshot_timestamp"] for s in ranged["snapshots"]] == [
        "2026-01-04T00:00:00.000000Z", "2026-01-03T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z"]
    for limit, offset, field in [(0, 0, "limit"), (1001, 0, "limit"), (10, -1, "offset")]:
        with pytest.raises(psycopg.Error) as err:
            db.execute("SELECT pm.list_snapshots('BTCUSDT', 'one-way', %s, %s)", (limit, offset))
        assert err.value.sqlstate == "22023" and field in err.value.diag.message_primary
    with pytest.raises(psycopg.errors.NoDataFound):
        db.execute("SELECT pm.list_snapshots('ETHUSDT')")


def test_cleanup_deletes_one_batch_of_the_oldest_expired(db):
    apply_order(db, exec_a("f1", "Buy", 1, 100, "0", 0))
    pid = position(db)["id"]
    db.execute("INSERT INTO public.position_snapshots (position_id, asset, size, mode, snapshot_timestamp) "
               "SELECT %s, 'BTCUSDT', g, 'one-way', pm.now_utc() - g * interval '10 days' "
               "FROM generate_series(1, 6) g", (pid,))                   # 10 .. 60 days old
    deleted = [db.execute("SELECT pm.cleanup_snapshots(25, 2)").fetchone()[0] for _ in range(4)]
    assert deleted == [2, 2, 0, 0]                                      # 30..60 days old: 4 rows
    left = [r[0] for r in db.execute("SELECT size FROM public.position_snapshots ORDER BY size").fetchall()]
    assert left == [1, 2]
    for args, field in [((0, 10), "retention_days"), ((30, 0), "batch_size")]:
        with pytest.raises(psycopg.Error) as err:
            db.execute("SELECT pm.cleanup_snapshots(%s, %s)", args)
        assert err.value.sqlstate == "22023" and field in err.value.diag.message_primary
