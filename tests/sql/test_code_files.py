"""The repeatable code files read as one style: every function, procedure and view has a two-line
header comment (its signature, then what it does) right above it, and every function and procedure
its contract in COMMENT ON, so `\\df+ pm.*` documents the schema. No document outside the
repository is cited."""
from __future__ import annotations

import re

import pytest

from app import schema

CREATE = re.compile(r"^CREATE OR REPLACE (FUNCTION|PROCEDURE|VIEW) (pm\.\w+)", re.MULTILINE)


def definitions():
    for code in schema.code_files():
        lines = code.text.split("\n")
        for number, line in enumerate(lines):
            match = CREATE.match(line)
            if match:
                yield code.name, number, match.group(1), match.group(2), lines


@pytest.mark.parametrize("file, number, kind, name, lines",
                         list(definitions()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_definition_has_the_two_line_header(file, number, kind, name, lines):
    header = []
    for line in reversed(lines[:number]):
        if not line.startswith("--"):
            break
        header.insert(0, line)
    assert len(header) >= 2, f"{file}:{number + 1}: {name} needs a two-line header comment right above it"
    first = header[0]
    assert first.startswith((f"-- {name}", f"-- CALL {name}")), (
        f"{file}:{number + 1}: the header of {name} starts with its signature, got {first!r}")


def test_every_function_has_its_contract_in_a_comment(db):
    missing = db.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'pm' AND coalesce(obj_description(p.oid, 'pg_proc'), '') = ''""").fetchall()
    assert missing == []


def test_no_file_cites_a_document_outside_the_repository():
    for code in schema.code_files():
        assert not re.search(r"SPEC|§|issue \d", code.text), code.name
