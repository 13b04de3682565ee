"""Upgrades: a database migrated by a released commit (sql/releases.txt), holding data, upgraded by
this code's bin/migrate, equals a fresh database; released migrations never change; one upgrade is
one transaction behind the upgrade gate.

The released migrations come from git history (`git show <commit>:sql/...`), not from a copy, and
are applied the way bin/migrate applied them then (yoyo, one transaction per migration)."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from yoyo import get_backend, read_migrations

from app import db as appdb
from app import schema
from jobs import migrate
from tests.sql.conftest import assert_same_schema, schema_definition, scratch_database
from tests.sql.helpers import apply_order, apply_position, bybit_c, bybit_message, exec_a, hedge_a, order_b

REPO = Path(__file__).resolve().parents[2]
RELEASES = [line.split()[0] for line in (REPO / "sql" / "releases.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr} (the upgrade tests need the git history)"
    return done.stdout


def release_sql(commit: str, target: Path) -> Path:
    """sql/ exactly as it was at a released commit, written under target."""
    names = [n for n in git("ls-tree", "--name-only", f"{commit}:sql").split() if n.endswith(".sql")]
    assert names, f"no migrations at {commit}"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).write_text(git("show", f"{commit}:sql/{name}"), encoding="utf-8")
    return target


def migrate_as_released(settings, sql_dir: Path) -> None:
    """What bin/migrate did at the release: yoyo applies each pending migration in its own transaction."""
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pm")
    backend = get_backend(migrate.yoyo_url(settings))
    migrations = read_migrations(str(sql_dir))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))


def populate(conn) -> None:
    """Traffic of every kind, through the released functions: fills of the three shapes (late,
    duplicate, hedge, funding), exchange reports (price, average adoption, creation, size
    discrepancy), a position that existed before its ledger, prices, metadata, a manual close,
    validation with fix, snapshots, published and unpublished outbox rows, an API key, a dead letter."""
    conn.execute("""INSERT INTO public.positions (asset, size, average_entry_price, realized_pnl, unrealized_pnl, mode,
                                                  version, created_at, last_updated, current_price)
                    VALUES ('OLDUSDT', 3, 10, 1.5, 0, 'one-way', 4, '2026-01-01', '2026-01-01', 11)""")
    for event in (
            exec_a("u-1", "Buy", "10", "100", "0.1", 1), exec_a("u-2", "Buy", "10", "110", "0.11", 2),
            exec_a("u-3", "Sell", "5", "120", "0.06", 3), exec_a("u-0", "Buy", "1", "90", "0", 0.5),   # late
            exec_a("u-2", "Buy", "10", "110", "0.11", 2),                                              # duplicate
            hedge_a("h-1", 1, "Buy", "2", "50", "0", 1, asset="ETHUSDT"),
            hedge_a("h-2", 2, "Sell", "1", "55", "0", 2, asset="ETHUSDT"),
            order_b("ob-1", "partially_filled", "Buy", "1", "100", "0.01", 4, asset="SOLUSDT", quantity="3"),
            order_b("ob-1", "partially_filled", "Buy", "2", "101", "0.02", 5, asset="SOLUSDT", quantity="3"),
            bybit_message(bybit_c("c-1", "Sell", "1", "30", "0", 6, symbol="XRPUSDT"),
                          bybit_c("c-2", "Sell", "1", "30", "0.5", 7, symbol="XRPUSDT", exec_type="Funding", seq=2)),
            exec_a("o-1", "Buy", "1", "12", "0", 8, asset="OLDUSDT")):
        apply_order(conn, event)
    envelope = {"event_id": "wg-1", "event_type": "position", "topic": "position.position",
                "timestamp": "2026-01-01T00:10:00Z", "trace_id": "wg",
                "payload": {"symbol": "BTCUSDT", "size": "16", "side": "Buy", "avg_price": None, "mode": 0,
                            "raw": {"positionIdx": 0, "side": "Buy", "size": "16", "entryPrice": "104", "markPrice": "125",
                                    "unrealisedPnl": "330", "cumRealisedPnl": "70", "updatedTime": "1767225600000",
                                    "seq": 9}}}
    apply_position(conn, envelope)
    apply_position(conn, {"topic": "position", "creationTime": 1767225660000, "data": [
        {"symbol": "ADAUSDT", "positionIdx": 0, "side": "Sell", "size": "100", "avgPrice": "0.5", "markPrice": "0.49",
         "unrealisedPnl": "1", "cumRealisedPnl": "0", "updatedTime": "1767225660000", "seq": 1}]})
    conn.execute("SELECT pm.set_prices('{\"SOLUSDT\": \"102\", \"ETHUSDT\": \"52\"}'::jsonb, 'exchange', 'px', 'test')")
    conn.execute("SELECT pm.update_position_meta('SOLUSDT', 'one-way', %s, NULL, 't', 'tester')",
                 (Jsonb({"stop_loss": "90", "notes": "kept"}),))
    conn.execute("SELECT pm.close_position('XRPUSDT', 'one-way', 29, NULL, 't', 'tester')")
    conn.execute("SELECT pm.validate_position('BTCUSDT', 'one-way', true, 'v', 'tester')")
    conn.execute("SELECT pm.snapshot_all('snap')")
    conn.execute("SELECT pm.outbox_mark_published(ARRAY(SELECT id FROM pm.outbox ORDER BY id LIMIT 5))")
    conn.execute("SELECT pm.api_key_create('old-key', repeat('a', 64), 'read', 50)")
    conn.execute("SELECT pm.record_dead_letter('q', 'bad', '22023', 'm-1', '{}', '{}'::jsonb)")


DATA_QUERIES = {
    "positions": "SELECT * FROM public.positions ORDER BY asset, mode",
    "ledger": "SELECT * FROM pm.executions ORDER BY exec_key",
    "order_progress": "SELECT * FROM pm.order_progress ORDER BY order_id",
    "exchange_state": "SELECT * FROM pm.exchange_state ORDER BY position_id, leg",
    "snapshots": "SELECT * FROM public.position_snapshots ORDER BY id",
    "outbox": "SELECT * FROM pm.outbox ORDER BY id",
    "meta": "SELECT * FROM pm.position_meta ORDER BY position_id",
    "api_keys": "SELECT * FROM pm.api_keys ORDER BY id",
    "dead_letters": "SELECT * FROM pm.dead_letters ORDER BY id",
    "counters": "SELECT name, value FROM pm.counters ORDER BY name",
}


def data(conn, like: dict[str, list] | None = None) -> dict[str, list]:
    """Every row of every table of ours, as JSON text (the ledger holds -infinity, which Python cannot).
    With `like` (an earlier result), each row keeps only the columns that `like`'s rows of its table
    have: a column that an upgrade adds did not exist before, and every column that did must be
    untouched."""
    out = {}
    for name, sql in DATA_QUERIES.items():
        rows = [json.loads(r) for (r,) in conn.execute(f"SELECT to_jsonb(x)::text FROM ({sql}) x").fetchall()]
        if like is not None and like[name]:
            columns = set(json.loads(like[name][0]))
            rows = [{k: v for k, v in r.items() if k in columns} for r in rows]
        out[name] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    return out


def assert_positions_equal_their_ledger(conn, at_least: int) -> None:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("""
            SELECT p.asset, p.mode, p.size, p.average_entry_price, p.long_size, p.long_avg_price, p.short_size,
                   p.short_avg_price, p.realized_pnl, f.size AS f_size, f.avg_price AS f_avg, f.long_size AS f_long,
                   f.long_avg AS f_long_avg, f.short_size AS f_short, f.short_avg AS f_short_avg, f.realized AS f_realized
              FROM public.positions p CROSS JOIN LATERAL pm.fold_ledger(p.id) f
             WHERE EXISTS (SELECT 1 FROM pm.executions x WHERE x.position_id = p.id)""").fetchall()
    assert len(rows) >= at_least
    for r in rows:
        stored = (r["size"], r["average_entry_price"], r["long_size"], r["long_avg_price"], r["short_size"],
                  r["short_avg_price"], r["realized_pnl"])
        folded = (r["f_size"], r["f_avg"], r["f_long"], r["f_long_avg"], r["f_short"], r["f_short_avg"], r["f_realized"])
        assert stored == folded, (r["asset"], r["mode"], stored, folded)


@pytest.fixture(params=RELEASES)
def released_database(request, tmp_path):
    """A database migrated by a released commit and holding data of every kind."""
    old_sql = release_sql(request.param, tmp_path / "released-sql")
    with scratch_database("pm_upg") as settings:
        migrate_as_released(settings, old_sql)
        with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
            populate(conn)
        yield settings


def test_an_upgraded_database_equals_a_fresh_one_and_keeps_its_data(released_database):
    with psycopg.connect(**released_database.conninfo(), autocommit=True) as conn:
        before = data(conn)
    applied = migrate.apply(released_database)
    assert "0050_pm_code_layer" in applied
    assert [a for a in applied if a.startswith("repeatable/")] == [f"repeatable/{f.name}" for f in schema.code_files()]

    with scratch_database("pm_fresh") as fresh_settings:
        migrate.apply(fresh_settings)
        with psycopg.connect(**released_database.conninfo(), autocommit=True) as upgraded, \
                psycopg.connect(**fresh_settings.conninfo(), autocommit=True) as fresh:
            assert_same_schema(upgraded, fresh)
            assert (upgraded.execute("SELECT pm.schema_version() ->> 'version'").fetchone()[0]
                    == fresh.execute("SELECT pm.schema_version() ->> 'version'").fetchone()[0]
                    == schema.expected()["version"])

    with psycopg.connect(**released_database.conninfo(), autocommit=True) as conn:
        assert data(conn, like=before) == before    # nothing written by the upgrade
        assert_positions_equal_their_ledger(conn, 6)
        # and it goes on from where it was: a duplicate stays a duplicate, an order's cumulative
        # figures continue from what was applied before the upgrade, a new fill applies
        assert apply_order(conn, exec_a("u-2", "Buy", "10", "110", "0.11", 2))["status"] == "duplicate"
        result = apply_order(conn, order_b("ob-1", "filled", "Buy", "3", "101", "0.03", 9, asset="SOLUSDT", quantity="3"))
        assert result["status"] == "applied"
        assert conn.execute("SELECT qty, price FROM pm.executions WHERE exec_key = 'order:ob-1:3'").fetchone() == (1, 101)
        assert apply_order(conn, exec_a("after-1", "Sell", "1", "130", "0", 20))["status"] == "applied"
        assert_positions_equal_their_ledger(conn, 6)
        assert conn.execute("SELECT pm.get_position('SOLUSDT')").fetchone()[0]["stop_loss"] == "90"
    assert migrate.apply(released_database) == []   # and a second run has nothing to do


@pytest.mark.parametrize("commit", RELEASES)
def test_released_migrations_are_never_edited(commit):
    """A database that applied a migration never sees a later edit of it (yoyo keeps ids, not
    contents): every numbered migration of a release must stay byte for byte as released."""
    released = [n for n in git("ls-tree", "--name-only", f"{commit}:sql").split()
                if n.endswith(".sql") and n[:4].isdigit()]
    assert released
    for name in released:
        path = REPO / "sql" / name
        assert path.exists(), f"sql/{name} was released in {commit} and must not be removed or renamed"
        assert path.read_text(encoding="utf-8") == git("show", f"{commit}:sql/{name}"), (
            f"sql/{name} differs from its release in {commit}: put the change in a new migration "
            f"or in sql/repeatable/ (docs/migrations.md)")


# ---------------------------------------------------------------------------------------------
# One transaction, behind the gate
# ---------------------------------------------------------------------------------------------

def changed_copy(tmp_path: Path, edits: dict[str, str]) -> Path:
    """A copy of sql/ with text appended to some repeatable files (a new version of the code)."""
    copy = tmp_path / "sql"
    shutil.copytree(schema.SQL_DIR, copy)
    for name, text in edits.items():
        path = copy / "repeatable" / name
        path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    return copy


def probe(version: int) -> str:
    return (f"\nCREATE OR REPLACE FUNCTION pm.upgrade_probe() RETURNS integer LANGUAGE sql AS $$ SELECT {version} $$;\n")


def waiting_on_lock(conn, query_part: str) -> bool:
    """Whether a session of this database waits for a lock in a statement containing query_part."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND strpos(query, %s) > 0)", (query_part,)).fetchone()[0]


def wait_for(predicate, what: str, seconds: float = 30.0, outcome: dict | None = None) -> None:
    """Poll until predicate(); a thread's outcome given here ends the wait with its error."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert not (outcome or {}).get("error"), f"while waiting for {what}: {outcome['error']!r}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)



def in_thread(fn, *args, **kwargs):
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_the_upgrade_waits_for_write_transactions_and_they_wait_for_it(settings, tmp_path, connect):
    migrate.apply(settings, sql_dir=changed_copy(tmp_path / "v1", {"00_common.sql": probe(1)}))
    v2 = changed_copy(tmp_path / "v2", {"00_common.sql": probe(2), "10_views.sql": "\n-- v2\n"})
    watcher = connect(autocommit=True)

    # (1) a write transaction in flight: the upgrade waits for it; it runs wholly on the old code
    writer = connect(autocommit=True)
    with appdb.write_transaction(writer):
        assert writer.execute("SELECT pm.upgrade_probe()").fetchone()[0] == 1
        thread, outcome = in_thread(migrate.apply, settings, sql_dir=v2)
        wait_for(lambda: waiting_on_lock(watcher, "LOCK TABLE pm.upgrade_gate IN ACCESS EXCLUSIVE"), "the upgrade to wait",
                 outcome=outcome)
        assert writer.execute("SELECT pm.upgrade_probe()").fetchone()[0] == 1
    thread.join(30)
    assert "error" not in outcome, outcome
    assert "repeatable/00_common.sql" in outcome["result"]
    with appdb.write_transaction(writer):
        assert writer.execute("SELECT pm.upgrade_probe()").fetchone()[0] == 2

    # (2) an upgrade in progress (held up here by a reader of a view it replaces): a write
    # transaction that starts meanwhile waits at the gate, then runs wholly on the new code
    v3 = changed_copy(tmp_path / "v3", {"00_common.sql": probe(3), "10_views.sql": "\n-- v3\n"})
    reader = connect(autocommit=False)
    reader.execute("SELECT count(*) FROM pm.v_portfolio")          # holds ACCESS SHARE on the view
    upgrade, upgraded = in_thread(migrate.apply, settings, sql_dir=v3)
    wait_for(lambda: waiting_on_lock(watcher, "-- The read contract"), "the upgrade to wait for the reader",
             outcome=upgraded)

    def gated_write():
        conn = connect(autocommit=True)
        with appdb.write_transaction(conn):
            return conn.execute("SELECT pm.upgrade_probe()").fetchone()[0]
    write, written = in_thread(gated_write)
    wait_for(lambda: waiting_on_lock(watcher, "LOCK TABLE pm.upgrade_gate IN ACCESS SHARE"), "the write to wait",
             outcome=written)
    reader.rollback()
    upgrade.join(30)
    write.join(30)
    assert "error" not in upgraded and "error" not in written, (upgraded, written)
    assert written["result"] == 3


def test_a_failing_upgrade_changes_nothing(settings, tmp_path, connect):
    conn = connect(autocommit=True)
    before = schema_definition(conn), conn.execute("SELECT * FROM pm.schema_code ORDER BY file").fetchall()
    broken = changed_copy(tmp_path / "broken", {"00_common.sql": probe(7), "50_fills.sql": "\nSELECT 1/0;\n"})
    (broken / "0099_test_table.sql").write_text("CREATE TABLE pm.upgrade_test_table (x int);\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.apply(settings, sql_dir=broken)
    assert (schema_definition(conn), conn.execute("SELECT * FROM pm.schema_code ORDER BY file").fetchall()) == before
    assert conn.execute("SELECT to_regclass('pm.upgrade_test_table')").fetchone()[0] is None
    assert migrate.plan(settings, sql_dir=broken).pending == ["0099_test_table"]


def test_fills_keep_applying_while_the_code_is_upgraded(settings, tmp_path, connect):
    """Every file changed, so the whole code layer is replaced while a writer applies fills
    through the gate: no fill fails and the positions equal their ledger afterwards."""
    every_file = {f.name: "\n-- changed\n" for f in schema.code_files()}
    stop = threading.Event()
    errors: list[BaseException] = []
    applied = []

    def traffic():
        conn = connect(autocommit=True)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                with appdb.write_transaction(conn):
                    event = exec_a(f"live-{n}", "Buy" if n % 3 else "Sell", "1", str(100 + n % 7), "0.01", n / 60,
                                   asset=f"L{n % 4}USDT")
                    result = conn.execute(appdb.q("apply_order_event"), {"event": json.dumps(event)}).fetchone()[0]
                applied.append(result["status"])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    wait_for(lambda: len(applied) >= 20, "traffic to start")
    for round_ in range(3):
        copy = changed_copy(tmp_path / f"round{round_}", {k: v * (round_ + 1) for k, v in every_file.items()})
        assert len(migrate.apply(settings, sql_dir=copy)) == len(every_file)
    count = len(applied)
    wait_for(lambda: len(applied) >= count + 20, "traffic after the upgrades")
    stop.set()
    thread.join(30)
    assert not errors, errors
    assert set(applied) == {"applied"}
    assert_positions_equal_their_ledger(connect(autocommit=True), 4)


def test_check_tells_whether_the_database_is_behind(settings, tmp_path, capsys):
    assert migrate.check(settings) == 0
    assert "up to date" in capsys.readouterr().out
    changed = changed_copy(tmp_path / "next", {"60_exchange.sql": "\n-- next\n"})
    result = migrate.plan(settings, sql_dir=changed)
    assert result.behind and not result.pending and [f.name for f in result.code] == ["60_exchange.sql"]
