"""pm.position_text, THE Position as JSON text (concatenated, not built by a JSON function): every
value is valid JSON whatever the operator's strings hold, the list is the same Positions, and
pm.api_list_positions renders a page only when the positions fingerprint moved."""
from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg.types.json import Jsonb

from tests.sql.helpers import apply_order, exec_a, hedge_a

ADMIN = dict(key_hash="k" * 64, scope="admin", limit=None, default_limit=100, needed="read", tokens=1)
FILTERS = dict(asset=None, mode=None, size_min=None, size_max=None, status="all", page_limit=1000, offset=0)
LIST = """SELECT outcome, remaining, fingerprint, body
            FROM pm.api_list_positions(%(key_hash)s, %(scope)s, %(limit)s, %(default_limit)s, %(needed)s, %(tokens)s,
                                       %(asset)s, %(mode)s, %(size_min)s, %(size_max)s, %(status)s, %(page_limit)s,
                                       %(offset)s, %(known)s)"""


def book(db):
    apply_order(db, exec_a("b1", "Buy", 2, 100, "0.1", 0, asset="BTCUSDT"))
    apply_order(db, exec_a("x1", "Buy", 10, 1, "0", 0, asset="XRPUSDT"))
    apply_order(db, exec_a("x2", "Sell", 10, "1.5", "0", 90, asset="XRPUSDT"))       # closed
    apply_order(db, hedge_a("s1", 1, "Buy", 3, 20, "0", 0, asset="SOLUSDT"))
    apply_order(db, hedge_a("s2", 2, "Sell", 1, 25, "0", 1, asset="SOLUSDT"))
    db.execute("SELECT pm.set_prices(%s)", (Jsonb({"BTCUSDT": "110.50", "SOLUSDT": "22"}),))


def rendered(db):
    """Every position as pm.position_text renders it (parsed) and as the view holds it."""
    rows = db.execute("SELECT pm.position_text(v), to_jsonb(v) FROM pm.v_positions v ORDER BY v.asset, v.mode").fetchall()
    return [(json.loads(text), row) for text, row in rows]


def test_every_field_is_the_views_value_in_the_contracts_form(db):
    book(db)
    for position, row in rendered(db):
        assert set(position) == set(row), "one field per column of pm.v_positions"
        for name, value in row.items():
            if value is None:
                assert position[name] is None, name
            elif isinstance(value, bool) or name in ("version", "time_held_minutes"):
                assert position[name] == value, name
            elif isinstance(value, (int, float)):   # numeric columns: strings without trailing zeros
                assert isinstance(position[name], str) and Decimal(position[name]) == Decimal(str(value)), name
                assert position[name] == format(Decimal(position[name]).normalize(), "f"), name
            elif name.endswith("_at") or name == "last_updated":
                assert position[name] == value[:19] + "." + (value[20:26] if len(value) > 19 else "").ljust(6, "0") + "Z", name
            else:
                assert position[name] == value, name
    # pm.position_json is the same Position as jsonb
    assert db.execute("SELECT bool_and(pm.position_json(v) = pm.position_text(v)::jsonb) FROM pm.v_positions v").fetchone()[0]


# any text PostgreSQL can hold: quotes, backslashes, control characters, non-BMP characters
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategy=TEXT, notes=TEXT)
def test_operator_strings_of_any_content_stay_valid_json(db, strategy, notes):
    if db.execute("SELECT count(*) FROM public.positions").fetchone()[0] == 0:
        apply_order(db, exec_a("b1", "Buy", 2, 100, "0", 0, asset="BTCUSDT"))
    result = db.execute("SELECT pm.update_position_meta('BTCUSDT', 'one-way', %s)",
                        (Jsonb({"strategy": strategy or None, "notes": notes or None}),)).fetchone()[0]
    assert "position" in result, result
    text = db.execute("SELECT pm.position_text(v) FROM pm.v_positions v WHERE v.asset = 'BTCUSDT'").fetchone()[0]
    position = json.loads(text)
    # (a strategy is stored without surrounding blanks, pm.meta_patch)
    assert position["strategy"] == (strategy.strip(" ") or None) and position["notes"] == (notes or None)
    page = json.loads(db.execute("SELECT pm.list_positions_text('BTCUSDT')").fetchone()[0])
    assert page["positions"] == [position]


def test_the_list_is_the_positions_in_order_with_count_and_total(db):
    book(db)
    singles = [p for p, _ in rendered(db)]
    page = json.loads(db.execute("SELECT pm.list_positions_text()").fetchone()[0])
    assert page == {"positions": singles, "count": 3, "total": 3}
    second = json.loads(db.execute("SELECT pm.list_positions_text(NULL, NULL, NULL, NULL, 'all', 1, 1)").fetchone()[0])
    assert second == {"positions": singles[1:2], "count": 1, "total": 3}
    open_only = json.loads(db.execute("SELECT pm.list_positions_text(NULL, NULL, NULL, NULL, 'open')").fetchone()[0])
    assert [p["asset"] for p in open_only["positions"]] == ["BTCUSDT", "SOLUSDT"] and open_only["total"] == 2
    empty = db.execute("SELECT pm.list_positions_text('NOSUCHUSDT')").fetchone()[0]
    assert json.loads(empty) == {"positions": [], "count": 0, "total": 0}
    assert db.execute("SELECT pm.list_positions() = pm.list_positions_text()::jsonb").fetchone()[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.one_of(st.none(), st.integers(0, 5)), offset=st.integers(0, 5), status=st.sampled_from(["all", "open"]),
       mode=st.sampled_from([None, "one-way", "hedge"]))
def test_every_page_is_its_slice_of_the_ordered_positions_as_valid_json(db, limit, offset, status, mode):
    """The page is one statement of pieces, each with its own separator: whatever the page (first,
    middle, past the end, empty, unlimited from an offset), it is valid JSON and exactly its slice."""
    if not db.execute("SELECT count(*) FROM public.positions").fetchone()[0]:
        book(db)
    matching = [p for p, _ in rendered(db)
                if (mode is None or p["mode"] == mode) and (status == "all" or p["is_open"])]
    text = db.execute("SELECT pm.list_positions_text(NULL, %s, NULL, NULL, %s, %s, %s)",
                      (mode, status, limit, offset)).fetchone()[0]
    expected = matching[offset:] if limit is None else matching[offset:offset + limit]
    assert json.loads(text) == {"positions": expected, "count": len(expected), "total": len(matching)}


def test_api_list_positions_renders_only_when_the_fingerprint_moved(db):
    book(db)
    outcome, remaining, fingerprint, body = db.execute(LIST, {**ADMIN, **FILTERS, "known": None}).fetchone()
    assert outcome == "ok" and remaining == 99 and json.loads(body)["total"] == 3
    # the caller holds this fingerprint's page: nothing rendered, a token still taken
    outcome, remaining, same, body = db.execute(LIST, {**ADMIN, **FILTERS, "known": fingerprint}).fetchone()
    assert (outcome, same, body) == ("ok", fingerprint, None) and remaining == 98
    # any committed change moves it: a fill, a price, the operator's metadata
    for change in (lambda: apply_order(db, exec_a("b2", "Buy", 1, 101, "0", 5, asset="BTCUSDT")),
                   lambda: db.execute("SELECT pm.set_prices(%s)", (Jsonb({"SOLUSDT": "23"}),)),
                   lambda: db.execute("SELECT pm.update_position_meta('SOLUSDT', 'hedge', %s)", (Jsonb({"notes": "x"}),))):
        change()
        outcome, _, moved, body = db.execute(LIST, {**ADMIN, **FILTERS, "known": fingerprint}).fetchone()
        assert outcome == "ok" and moved != fingerprint and body is not None
        fingerprint = moved
    assert json.loads(body)["positions"][1]["notes"] == "x"


def test_api_list_positions_admits_before_it_reads(db):
    book(db)
    unknown = db.execute(LIST, {**ADMIN, **FILTERS, "scope": None, "known": None}).fetchone()
    assert unknown == ("unknown_key", None, None, None)
    limited = {**ADMIN, "default_limit": 1}
    assert db.execute(LIST, {**limited, **FILTERS, "known": None}).fetchone()[0] == "ok"
    outcome, remaining, fingerprint, body = db.execute(LIST, {**limited, **FILTERS, "known": None}).fetchone()
    assert (outcome, remaining, fingerprint, body) == ("rate_limited", 0, None, None)
