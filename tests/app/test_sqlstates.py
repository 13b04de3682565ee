"""app/sqlstates.py is the one classification of database errors: every SQLSTATE the SQL of sql/
raises is classified there (this fails when someone adds a RAISE with a new SQLSTATE and forgets
it), and the API takes its status and error_code from it."""
from __future__ import annotations

import re
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
from psycopg_pool import PoolTimeout

from app import sqlstates
from app.api import errors

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
_TOKEN = re.compile(r"(?P<comment>--[^\n]*|/\*.*?\*/)|(?P<string>'(?:[^']|'')*')|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<end>;)|(?P<other>\S)", re.S)
_QUIET_LEVELS = {"DEBUG", "LOG", "INFO", "NOTICE", "WARNING"}


def _tokens(text: str):
    """(kind, text, line) of the SQL, comments left out; a string literal is one token."""
    for match in _TOKEN.finditer(text):
        if match.lastgroup != "comment":
            yield match.lastgroup, match.group(), text.count("\n", 0, match.start()) + 1


def _sqlstate(token: tuple[str, str, int], where: str) -> str:
    kind, value, _ = token
    if kind == "string":
        value = value[1:-1]
    elif kind != "word":
        raise AssertionError(f"{where}: cannot read the SQLSTATE {value!r}")
    if re.fullmatch(r"[0-9A-Z]{5}", value):
        return value
    try:
        return psycopg.errors.lookup(value.upper()).sqlstate  # a condition name: unique_violation
    except KeyError:
        raise AssertionError(f"{where}: ERRCODE {value!r} is neither a SQLSTATE literal nor a condition name") from None


def raised_sqlstates(sql_dir: Path = SQL_DIR) -> dict[str, list[str]]:
    """{SQLSTATE: ["sql/file.sql:line", ...]} of every RAISE in sql/ that raises an error."""
    found: dict[str, list[str]] = {}
    for path in sorted(sql_dir.rglob("*.sql")):
        tokens = list(_tokens(path.read_text(encoding="utf-8")))
        for i, (kind, value, line) in enumerate(tokens):
            if kind != "word" or value.upper() != "RAISE":
                continue
            statement = []
            for token in tokens[i + 1:]:
                if token[0] == "end":
                    break
                statement.append(token)
            where = f"{path.relative_to(sql_dir.parent)}:{line}"
            words = [v.upper() if k == "word" else v for k, v, _ in statement]
            if not words or words[0] in _QUIET_LEVELS:
                continue  # RAISE; re-raises the error in hand / a message that is no error
            rest = statement[1:] if words[0] == "EXCEPTION" else statement
            rest_words = words[1:] if words[0] == "EXCEPTION" else words
            if rest_words and rest_words[0] == "SQLSTATE":                                 # RAISE SQLSTATE '22023'
                state = _sqlstate(rest[1], where)
            elif rest and rest[0][0] == "word" and rest_words[0] != "USING":               # RAISE unique_violation
                state = _sqlstate(rest[0], where)
            elif "ERRCODE" in rest_words:                                                  # USING ERRCODE = '...'
                at = rest_words.index("ERRCODE")
                assert rest_words[at + 1] == "=", f"{where}: ERRCODE without ="
                state = _sqlstate(rest[at + 2], where)
            else:
                state = "P0001"  # raise_exception: what a RAISE without a code raises
            found.setdefault(state, []).append(where)
    return found


def test_the_scan_reads_the_raises_of_sql():
    found = raised_sqlstates()
    # the SQL functions reject bad input with 22023 and name unknown positions with P0002
    assert "22023" in found and "P0002" in found, found


def test_every_sqlstate_raised_in_sql_is_classified():
    unclassified = {state: where for state, where in raised_sqlstates().items() if not sqlstates.is_classified(state)}
    assert unclassified == {}, ("SQLSTATEs raised in sql/ that app/sqlstates.py does not classify "
                                f"(add them to BY_SQLSTATE, or raise a classified one): {unclassified}")


def test_the_scan_understands_every_form_of_raise(tmp_path):
    (tmp_path / "x.sql").write_text("""
        -- RAISE EXCEPTION 'commented out' USING ERRCODE = 'ZZ001';
        /* RAISE EXCEPTION 'commented out' USING ERRCODE = 'ZZ002'; */
        RAISE NOTICE 'not an error; really' USING ERRCODE = 'ZZ003';
        COMMENT ON FUNCTION f() IS 'the functions raise ZZ004; see above';
        RAISE EXCEPTION 'it''s; bad %', 'x' USING ERRCODE = '22023', COLUMN = 'x';
        RAISE EXCEPTION 'no code';
        RAISE 'no level either %', x;
        RAISE unique_violation USING MESSAGE = 'dup';
        RAISE EXCEPTION SQLSTATE 'PM412';
        RAISE EXCEPTION 'named' USING ERRCODE = 'lock_not_available';
        RAISE USING MESSAGE = 'only options', ERRCODE = 'P0002';
        RAISE;
    """)
    found = raised_sqlstates(tmp_path)
    assert sorted(found) == ["22023", "23505", "55P03", "P0001", "P0002", "PM412"]
    assert found["P0001"] == [f"{tmp_path.name}/x.sql:7", f"{tmp_path.name}/x.sql:8"]


@pytest.mark.parametrize("state, name", [
    ("22023", "invalid_input"), ("22P02", "invalid_input"), ("P0002", "not_found"), ("PM412", "precondition_failed"),
    ("23505", "conflict"), ("55000", "conflict"), ("40001", "serialization"), ("40P01", "serialization"),
    ("55P03", "lock_not_available"), ("57014", "timeout"), ("08006", "unavailable"), ("57P01", "unavailable"),
    ("53300", "unavailable"), ("42883", "environment"), ("3F000", "environment"), ("P0001", "unknown"),
    ("XX000", "unknown"), ("23514", "unknown"),
])
def test_sqlstate_classes(state, name):
    assert sqlstates.classify_sqlstate(state).name == name


def test_errors_without_a_sqlstate():
    assert sqlstates.classify(psycopg.OperationalError("connection refused")) is sqlstates.UNAVAILABLE
    assert sqlstates.classify(psycopg.InterfaceError("the connection is closed")) is sqlstates.UNAVAILABLE
    assert sqlstates.classify(PoolTimeout("no connection in 3 s")) is sqlstates.UNAVAILABLE
    assert sqlstates.classify(psycopg.ProgrammingError("query has 2 placeholders")) is sqlstates.UNKNOWN
    assert sqlstates.classify(ValueError("a bug")) is sqlstates.UNKNOWN


def database_error(state: str, message: str) -> psycopg.Error:
    """The exception psycopg raises for that SQLSTATE (our own codes get a generic one)."""
    try:
        return psycopg.errors.lookup(state)(message)
    except KeyError:
        return type("Raised", (psycopg.errors.DatabaseError,), {"sqlstate": state})(message)


def _example(error_class: sqlstates.ErrorClass) -> psycopg.Error:
    states = [s for s, c in sqlstates.BY_SQLSTATE.items() if c is error_class]
    states += [p + "000" for p, c in sqlstates.BY_SQLSTATE_CLASS.items() if c is error_class]
    if error_class is sqlstates.UNKNOWN:
        states = ["XX000"]
    return database_error(states[0], "the message")


@pytest.mark.parametrize("error_class", sqlstates.CLASSES, ids=lambda c: c.name)
def test_the_api_answers_with_the_status_and_code_of_the_class(error_class):
    answer = errors.classify(_example(error_class))
    assert (answer.status, answer.error_code) == (error_class.http_status, error_class.error_code)
    if answer.status >= 500:
        assert "the message" not in answer.message  # internals do not leak
    else:
        assert answer.message.startswith("the message")


def test_the_table_for_the_documentation_names_every_sqlstate_and_class():
    table = sqlstates.markdown_table()
    for state in sqlstates.BY_SQLSTATE:
        assert f"`{state}`" in table
    for prefix in sqlstates.BY_SQLSTATE_CLASS:
        assert f"`{prefix}xxx`" in table
    for error_class in sqlstates.CLASSES:
        assert f"| {error_class.name} |" in table
