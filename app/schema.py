"""The schema this code expects, read from the files under sql/ (docs/migrations.md).

- Numbered migrations `sql/NNNN_name.sql`: tables, columns, indexes, data changes. Applied once
  each (yoyo keeps the ids it applied), never edited after release.
- Repeatable files `sql/repeatable/NN_concern.sql`: every function and view, one file per concern.
  Applied after the numbered migrations, in name order, again whenever a file's content changes
  (its SHA-256 is kept in pm.schema_code).

The schema version is "<newest numbered migration id>+<code version>", the code version being
the first 16 hex digits of the SHA-256 over "name:sha256\\n" of every repeatable file in name
order. pm.schema_version() computes the same from what a database applied, so /health and
`bin/migrate --check` can compare the two.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
REPEATABLE_DIR = SQL_DIR / "repeatable"


@dataclass(frozen=True)
class CodeFile:
    name: str
    path: Path
    checksum: str

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")


def migration_ids(sql_dir: Path = SQL_DIR) -> list[str]:
    """Ids of the numbered migrations on disk (file names without .sql), in order."""
    return sorted(p.stem for p in sql_dir.glob("[0-9][0-9][0-9][0-9]_*.sql")
                  if not p.name.endswith(".rollback.sql"))


def code_files(repeatable_dir: Path = REPEATABLE_DIR) -> list[CodeFile]:
    """The repeatable files on disk, in the order they are applied."""
    return [CodeFile(p.name, p, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(repeatable_dir.glob("*.sql"))]


def code_version(checksums: dict[str, str]) -> str | None:
    """The code version of {file name: SHA-256}; None when there are none."""
    if not checksums:
        return None
    listing = "".join(f"{name}:{checksums[name]}\n" for name in sorted(checksums))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()[:16]


def version(migration: str | None, code: str | None) -> str | None:
    return f"{migration}+{code}" if migration and code else migration


def expected() -> dict[str, str | None]:
    """What this code expects: {"migration", "code", "version"}; all None without sql/ on disk."""
    ids = migration_ids() if SQL_DIR.is_dir() else []
    code = code_version({f.name: f.checksum for f in code_files()}) if REPEATABLE_DIR.is_dir() else None
    migration = ids[-1] if ids else None
    return {"migration": migration, "code": code, "version": version(migration, code)}
