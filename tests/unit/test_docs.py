"""The README is the front door: short, and linking every page of the manual in docs/;
every relative link of README.md and docs/*.md leads to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
README_MAX_LINES = 150
# [text](target) and ![alt](target); not http(s) or mailto links, anchors stripped.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    targets = [t.split("#")[0] for t in LINK.findall(path.read_text())]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the manual goes in docs/"


def test_the_readme_links_every_page_of_the_manual():
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md links no docs/ page {missing}"


@pytest.mark.parametrize("doc", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(doc):
    broken = [t for t in relative_links(doc) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(REPO)}: links to missing {broken}"
