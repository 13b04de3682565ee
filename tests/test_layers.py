"""The layers point one way: app/ (the adapters' common ground) imports none of the others,
consumers/ and jobs/ import app/ but not each other (what both need, like the broker helpers,
lives in app/), and none of them imports bench/ or tests/; bench/ may use the service but never
tests/ (tests import bench/: the private servers, the reference fold)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"app", "consumers", "jobs", "bench", "tests"}
MAY_IMPORT = {"app": {"app"}, "consumers": {"app", "consumers"}, "jobs": {"app", "jobs"},
              "bench": {"app", "consumers", "jobs", "bench"}}


def imported_packages(path: Path) -> dict[str, int]:
    """{our top-level package: first line importing it} of one module (relative imports stay inside)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in OURS:
                found.setdefault(top, node.lineno)
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_layer_imports_only_what_lies_below_it(package):
    wrong = {f"{path.relative_to(ROOT)}:{line}": top
             for path in sorted((ROOT / package).rglob("*.py"))
             for top, line in imported_packages(path).items() if top not in MAY_IMPORT[package]}
    assert wrong == {}, f"{package}/ may import only {sorted(MAY_IMPORT[package])}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from consumers.relay import run\n    import jobs.common as c\n")
    assert imported_packages(module) == {"consumers": 4, "jobs": 5}
