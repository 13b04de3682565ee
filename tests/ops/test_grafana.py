"""The Grafana dashboard: every panel's SQL, with Grafana's macros expanded the way its PostgreSQL
datasource expands them, runs as a login role granted the read-only role pm_grafana against a
migrated database with data; that role can read the pm views and nothing else; pm_grafana itself
logs in only with a password given at migrate time."""
from __future__ import annotations

import contextlib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
import yaml

from app.figures import Figures
from tests.ops.conftest import fill, set_price

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "position-manager.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards"
GRAFANA_ROLE = "pm_grafana"

_INTERVAL_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def interval_seconds(text: str) -> int:
    match = re.fullmatch(r"\s*'?(\d+)(ms|s|m|h|d|w)'?\s*", text)
    assert match, f"unparsable interval {text!r}"
    return max(1, int(int(match.group(1)) * _INTERVAL_UNITS[match.group(2)]))


def _args(raw: str) -> list[str]:
    return [a.strip() for a in raw.split(",")]


def expand(sql: str, t_from: datetime, t_to: datetime, interval: str, variables: dict[str, list[str]]) -> str:
    """Grafana's PostgreSQL macros and template variables, as the datasource expands them."""
    iso = lambda t: "'" + t.strftime("%Y-%m-%dT%H:%M:%SZ") + "'"  # noqa: E731
    sql = sql.replace("$__interval_ms", str(interval_seconds(interval) * 1000)).replace("$__interval", interval)
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        sql = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}|\$" + name + r"\b", quoted, sql)

    def group(m: re.Match, alias: bool) -> str:
        args = _args(m.group(1))
        n = interval_seconds(args[1])
        return f"floor(extract(epoch from {args[0]})/{n})*{n}" + (' AS "time"' if alias else "")

    rules = [
        (r"\$__timeGroupAlias\(([^()]*)\)", lambda m: group(m, True)),
        (r"\$__timeGroup\(([^()]*)\)", lambda m: group(m, False)),
        (r"\$__timeFilter\(([^()]*)\)", lambda m: f"{m.group(1).strip()} BETWEEN {iso(t_from)} AND {iso(t_to)}"),
        (r"\$__timeFrom\(\)", lambda m: iso(t_from)),
        (r"\$__timeTo\(\)", lambda m: iso(t_to)),
        (r"\$__timeEpoch\(([^()]*)\)", lambda m: f'extract(epoch from {m.group(1).strip()}) as "time"'),
        (r"\$__time\(([^()]*)\)", lambda m: f'{m.group(1).strip()} AS "time"'),
        (r"\$__unixEpochFilter\(([^()]*)\)",
         lambda m: f"{m.group(1)} >= {int(t_from.timestamp())} AND {m.group(1)} <= {int(t_to.timestamp())}"),
    ]
    for pattern, replace in rules:
        sql = re.sub(pattern, replace, sql)
    assert "$" not in sql, f"unexpanded macro or variable left in: {sql}"
    return sql


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    return [(p["title"], t["rawSql"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


@pytest.fixture
def grafana_db(db, settings):
    """A migrated database with fills, prices, snapshots over hours, a discrepancy, a foreign write, a
    dead letter and heartbeats of the consumer roles and the relay, and a connection to it as the
    read-only role."""
    fill(db, "BTCUSDT", "Buy", "0.5", "60000", "1.2")
    fill(db, "ETHUSDT", "Sell", "4", "3100", "0.5")
    fill(db, "SOLUSDT", "Buy", "50", "140", "0.3")
    fill(db, "SOLUSDT", "Sell", "20", "150", "0.1")
    fill(db, "XRPUSDT", "Buy", "100", "0.5", at="2026-01-01T00:00:00Z")
    fill(db, "XRPUSDT", "Sell", "100", "0.6", at="2026-01-01T01:00:00Z")  # closed
    for asset, price in [("BTCUSDT", "61000"), ("ETHUSDT", "3050"), ("SOLUSDT", "145")]:
        set_price(db, asset, price)
    for hours_ago in (3, 2, 1):
        db.execute("SELECT pm.snapshot_all('test')")
        db.execute("UPDATE public.position_snapshots SET snapshot_timestamp = snapshot_timestamp - make_interval(hours => %s) "
                   "WHERE snapshot_timestamp > (now() AT TIME ZONE 'UTC') - interval '1 minute'", (hours_ago,))
    db.execute("SELECT pm.snapshot_all('test')")
    db.execute("UPDATE public.positions SET size = 0.6 WHERE asset = 'BTCUSDT'")   # a foreign write
    db.execute("SELECT pm.validate_all(false, 'test')")
    db.execute("SELECT pm.record_dead_letter('order-manager.order_executed', 'invalid json', '22P02', 'm-1', "
               "'{not json', '{\"x-source-queue\": \"order-manager.order_executed\"}'::jsonb)")
    for role, figures in role_figures().items():
        db.execute("SELECT pm.heartbeat(%s, %s, now(), %s::jsonb)", (role, f"test:{role}", figures.as_json()))
    with grafana_login(db, settings) as conn:
        yield conn


@contextlib.contextmanager
def grafana_login(db, settings):
    """A connection as a login role of the operator's that bin/migrate granted pm_grafana (the
    ytrader way: POSITION_MANAGER_GRAFANA_LOGIN_ROLE=grafana_monitor), made for this test and
    dropped afterwards (roles are cluster-wide)."""
    role = f"pm_test_grafana_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        db.execute("SELECT pm.grafana_access(%s, NULL)", (role,))
        conn = psycopg.connect(**{**settings.conninfo(), "user": role}, autocommit=True)
        try:
            yield conn
        finally:
            conn.close()
    finally:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def role_figures() -> dict[str, Figures]:
    """What the consumer roles and the relay write with their heartbeats (app/figures.py)."""
    order, position, relay = Figures(), Figures(), Figures()
    for status, n in (("applied", 40), ("duplicate", 2), ("invalid", 1)):
        order.inc("messages", status, n)
    for seconds in (0.004, 0.006):
        order.observe("batch_seconds", seconds)
        order.observe("message_seconds", seconds * 2)
    order.gauge("lag_seconds", 1.5)
    order.gauge("oldest_unprocessed_seconds", 0.0)
    order.gauge("queue_depth", 7)
    position.inc("messages", "ignored", 3)
    position.observe("batch_seconds", 0.002)
    position.gauge("lag_seconds", None)   # no event time in the messages: not measurable
    position.gauge("queue_depth", 0)
    relay.inc("published", "position_updated", 42)
    relay.observe("publish_seconds", 0.02)
    return {"order": order, "position": position, "relay": relay}


def _variables(conn) -> dict[str, list[str]]:
    values = {}
    for var in dashboard()["templating"]["list"]:
        rows = conn.execute(var["query"]).fetchall()
        assert rows, f"template variable {var['name']} has no values"
        values[var["name"]] = [r[0] for r in rows]   # "All" = every value, quoted and joined
    return values


@pytest.mark.parametrize("interval", ["1m", "1h"])
def test_every_panel_query_runs_as_the_read_only_role(grafana_db, interval):
    now = datetime.now(timezone.utc)
    variables = _variables(grafana_db)
    assert set(variables["asset"]) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"}
    empty = []
    for title, raw in panel_queries():
        sql = expand(raw, now - timedelta(days=1), now + timedelta(minutes=5), interval, variables)
        rows = grafana_db.execute(sql).fetchall()
        if not rows:
            empty.append(title)
    assert empty == [], f"panels without rows on a database with data: {empty}"


def test_main_panels_show_the_expected_figures(grafana_db):
    now = datetime.now(timezone.utc)
    queries = dict(panel_queries())
    exposure = grafana_db.execute(queries["Total exposure"]).fetchone()[0]
    # 0.6 (the size edited behind the ledger's back) * 61000 + 4 * 3050 + 30 * 145
    assert exposure == 36600 + 12200 + 4350
    history = grafana_db.execute(expand(queries["Portfolio history (snapshots)"], now - timedelta(hours=6),
                                        now + timedelta(minutes=5), "1h", _variables(grafana_db))).fetchall()
    assert len(history) == 4  # four snapshot runs, one per hour
    by_asset = grafana_db.execute(queries["Exposure by asset"]).fetchall()
    assert [r[0] for r in by_asset] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    discrepancies = grafana_db.execute(expand(queries["Validation discrepancies"], now - timedelta(hours=1),
                                              now + timedelta(minutes=5), "1m", {})).fetchall()
    assert any(r[1] == "BTCUSDT" and r[3] == "size" for r in discrepancies)
    assert all(r[3] != "foreign_write" for r in discrepancies)   # they have panels of their own


def test_operations_panels_show_consumers_outbox_and_foreign_writes(grafana_db, db):
    now = datetime.now(timezone.utc)
    queries = dict(panel_queries())
    pending = db.execute("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL").fetchone()[0]
    backlog = grafana_db.execute(queries["Outbox backlog"]).fetchone()
    assert backlog[0] == pending > 0 and backlog[1] > 0
    lag = {r[0]: r[1:] for r in grafana_db.execute(queries["Consumer lag"]).fetchall()}
    assert lag == {"order": (Decimal("1.5"), Decimal("0"), 7), "position": (None, None, 0)}
    times = {r[0]: r[1:] for r in grafana_db.execute(queries["Processing time"]).fetchall()}
    assert times["order"][:2] == (Decimal("0.005"), Decimal("0.01")) and times["relay"][2] == Decimal("0.02")
    consumers = {r[0]: r for r in grafana_db.execute(queries["Consumers"]).fetchall()}
    assert consumers["order"][1] is True and consumers["order"][4:10] == (40, 2, 0, 0, 1, 0)
    assert consumers["relay"][10] == 42
    writes = grafana_db.execute(expand(queries["Foreign writes"], now - timedelta(hours=1),
                                       now + timedelta(minutes=5), "1m", {})).fetchall()
    (write,) = [w for w in writes if w[1] == "BTCUSDT"]
    assert write[3:5] == ("update", db.info.user) and (write[6], write[7]) == (Decimal("0.5"), Decimal("0.6"))
    assert write[10] == "size"
    # a role that stops beating is shown as not alive
    db.execute("UPDATE pm.heartbeats SET beat_at = now() - interval '1 hour' WHERE role = 'position'")
    consumers = {r[0]: r for r in grafana_db.execute(queries["Consumers"]).fetchall()}
    assert consumers["position"][1] is False and consumers["order"][1] is True


def test_time_filter_excludes_rows_outside_the_range(grafana_db):
    queries = dict(panel_queries())
    long_ago = datetime(2020, 1, 1, tzinfo=timezone.utc)
    rows = grafana_db.execute(expand(queries["Portfolio history (snapshots)"], long_ago, long_ago + timedelta(days=1),
                                     "1h", {})).fetchall()
    assert rows == []


@pytest.mark.parametrize("statement", [
    "SELECT * FROM public.positions",
    "SELECT * FROM public.position_snapshots",
    "SELECT * FROM pm.executions",
    "SELECT * FROM pm.outbox",
    "SELECT * FROM pm.counters",
    "SELECT * FROM pm.dead_letters",
    "UPDATE pm.portfolio_event_state SET last_change_id = 0",
    "SELECT pm.set_prices('{\"BTCUSDT\": \"1\"}'::jsonb)",
    "SELECT pm.snapshot_all()",
    "CREATE TABLE pm.grafana_was_here (x int)",
])
def test_read_only_role_cannot_touch_tables_or_write(grafana_db, db, statement):
    with pytest.raises(psycopg.Error) as exc:
        grafana_db.execute(statement)
    # 42501 insufficient privilege; 25006 read-only transaction
    assert exc.value.sqlstate in ("42501", "25006"), exc.value
    assert db.execute("SELECT current_price FROM public.positions WHERE asset='BTCUSDT'").fetchone()[0] == 61000


def test_pm_grafana_itself_logs_in_only_with_the_password_given_at_migrate_time(db, settings):
    """NOLOGIN by default (no known password opens it); bin/migrate with
    POSITION_MANAGER_GRAFANA_PASSWORD lets it log in, with its read-only guards."""
    assert db.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pm_grafana'").fetchone() == (False,)
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(**{**settings.conninfo(), "user": GRAFANA_ROLE, "password": "pm_grafana"})
    try:
        (access,) = db.execute("SELECT pm.grafana_access(NULL, %s)", ("a-password-of-the-operator-7",)).fetchone()
        assert access == {"login_role": None, "pm_grafana_can_login": True}
        with psycopg.connect(**{**settings.conninfo(), "user": GRAFANA_ROLE}, autocommit=True) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "30s"
            assert conn.execute("SELECT count(*) FROM pm.v_positions").fetchone()[0] >= 0
    finally:
        db.execute("ALTER ROLE pm_grafana NOLOGIN PASSWORD NULL")  # cluster-wide: back to the default


@pytest.mark.parametrize("role, problem", [("pm_grafana", "not pm_grafana itself"), ("no_such_role_here", "no role named")])
def test_grafana_access_names_a_bad_login_role(db, role, problem):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=problem):
        db.execute("SELECT pm.grafana_access(%s, NULL)", (role,))


def test_dashboard_shape():
    dash = dashboard()
    assert dash["title"] == "Position Manager" and dash["uid"] == "position-manager"
    titles = {p["title"] for p in dash["panels"]}
    for required in ["Total exposure", "Net exposure", "Unrealized PnL", "Realized PnL", "Exposure by asset",
                     "PnL by asset", "Position size distribution", "Time held", "Portfolio history (snapshots)",
                     "Validation discrepancies", "Dead letters", "Dead letters over time", "Outbox backlog",
                     "Consumer lag", "Processing time", "Consumers", "Foreign writes over time", "Foreign writes"]:
        assert required in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "pm-postgres", p["title"]
        for t in p["targets"]:
            assert t["rawQuery"] and t["format"] in ("table", "time_series")
            # every table it reads is a view of the read contract
            for name in re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]\w*(?:\.[a-z_]\w*)?)(?![\w.]|\s*\()", t["rawSql"], re.IGNORECASE):
                assert name.startswith("pm.v_"), (p["title"], name)


def test_provisioning_files_point_at_the_dashboard_and_role():
    sources = [yaml.safe_load(f.read_text()) for f in DATASOURCES.glob("*.yaml")]
    (source,) = [d for s in sources for d in s["datasources"]]
    assert source["uid"] == "pm-postgres" and source["type"] == "grafana-postgresql-datasource"
    assert source["user"] == "${PM_GRAFANA_DB_USER}"
    assert source["secureJsonData"]["password"] == "${PM_GRAFANA_DB_PASSWORD}"  # never a value in the file
    providers = [p for f in PROVIDERS.glob("*.yaml") for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers and all(p["type"] == "file" for p in providers)


def test_macro_expansion_matches_grafana():
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    t1 = t0 + timedelta(hours=1)
    sql = ("SELECT $__timeGroupAlias(ts, $__interval), $__timeGroup(ts, '5m'), $__time(ts), $__timeEpoch(ts) "
           "WHERE $__timeFilter(ts) AND x > $__timeFrom() AND x < $__timeTo() AND a IN ($asset) "
           "AND b = ${asset} AND $__unixEpochFilter(e) AND ms = $__interval_ms")
    out = expand(sql, t0, t1, "1h", {"asset": ["BTC", "O'X"]})
    assert out == ('SELECT floor(extract(epoch from ts)/3600)*3600 AS "time", floor(extract(epoch from ts)/300)*300, '
                   'ts AS "time", extract(epoch from ts) as "time" '
                   "WHERE ts BETWEEN '2026-01-02T03:04:05Z' AND '2026-01-02T04:04:05Z' "
                   "AND x > '2026-01-02T03:04:05Z' AND x < '2026-01-02T04:04:05Z' AND a IN ('BTC','O''X') "
                   "AND b = 'BTC','O''X' AND e >= 1767323045 AND e <= 1767326645 AND ms = 3600000")
    with pytest.raises(AssertionError, match="unexpanded"):
        expand("SELECT $__unknownMacro(x)", t0, t1, "1m", {})
