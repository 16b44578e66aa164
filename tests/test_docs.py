"""The docs point only at what the repository holds: relative links reach a file, `#anchors` a
heading, and no module, test or doc cites a design file that is not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Written in two parts, so that this file does not name them itself.
ABSENT = ("DESIGN" + ".md", "LEGACY_API" + ".md", "../" + "shared/")
SOURCES = [
    path
    for folder in ("runvisor", "tests", "bench", "docs")
    for path in sorted((ROOT / folder).rglob("*"))
    if path.suffix in {".py", ".md", ".sh", ".sql"} and path.is_file()
]

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _CODE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def links(path: Path) -> list[str]:
    text = _CODE.sub("", path.read_text(encoding="utf-8"))
    return [m.group(1) for m in _LINK.finditer(text) if "://" not in m.group(1)]


def test_the_slug_is_githubs() -> None:
    assert slug("Isolation: what a run can reach") == "isolation-what-a-run-can-reach"
    assert slug("A run's variables") == "a-runs-variables"
    assert slug("Takeover of a dead node's runs") == "takeover-of-a-dead-nodes-runs"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(doc: Path) -> None:
    assert doc.is_file()
    broken: list[str] = []
    for link in links(doc):
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(link)
    assert broken == []


def test_the_architecture_document_has_its_diagrams() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    kinds = re.findall(r"^```mermaid\n(\S+)", text, re.MULTILINE)
    assert "sequenceDiagram" in kinds and "flowchart" in kinds


def test_nothing_cites_a_file_the_repository_lacks() -> None:
    assert len(SOURCES) > 50  # the walk found the tree
    cited = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in [*SOURCES, ROOT / "README.md"]
        for name in ABSENT
        if name in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert cited == []
