"""The documentation: a README that stays a front door, links that resolve, and nothing that cites a
document outside the repository (the repository states its contract in docs/, in its own words)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 15_000
# Written in two parts so that this file does not cite what it forbids.
OUTSIDE = ("SPEC" + " §", "SPEC" + ".md")
# Parts whose text must not cite an issue tracker or the background notes either.
OWN_DOCS = ("README.md", "docs/", "bench/", "grafana/", "docker-compose.yml", "env.example")
CITATION = re.compile(r"\bissues? ?(#?\d+|:)|\bseeds/", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [name for name in out.splitlines() if (ROOT / name).is_file()]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_is_a_front_door_not_the_house():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= README_LIMIT, f"README.md has {len(text)} characters; move detail to docs/"
    for must in ("bin/dev", "bin/test", "curl", "## Architecture", "## Layout", "## Errors", "## Performance"):
        assert must in text, must


def test_every_relative_link_in_the_documentation_resolves():
    broken = []
    for page in markdown_files():
        for target in LINK.findall(re.sub(r"```.*?```", "", page.read_text(), flags=re.S)):
            if re.match(r"[a-z]+:", target):            # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken


def released_migrations() -> set[str]:
    """The numbered migrations of every released commit (sql/releases.txt): frozen byte for byte, so
    the citations their comments carry stay; every other file, sql/repeatable included, is checked."""
    released = set()
    for line in (ROOT / "sql" / "releases.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            out = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", line.split()[0], "sql/"],
                                 capture_output=True, text=True, check=True).stdout
            released.update(n for n in out.splitlines() if re.fullmatch(r"sql/\d{4}_.*\.sql", n))
    return released


def test_no_tracked_file_cites_a_document_outside_the_repository():
    offenders = []
    frozen = released_migrations()
    assert "sql/0004_pm_accounting.sql" in frozen
    for name in tracked_files():
        if name in frozen:
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue                                        # images
        offenders += [f"{name}: {needle}" for needle in OUTSIDE if needle in text]
    assert not offenders, offenders


def test_the_documentation_cites_no_issue_and_no_background_notes():
    offenders = []
    for name in tracked_files():
        if name.startswith(OWN_DOCS) and not name.endswith(".png"):
            for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
                if CITATION.search(line):
                    offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not offenders, offenders
