"""The benchmark documentation reads as results by topic, not as a work log.

``docs/benchmarks.md`` and the module docstrings of ``benchmarks/*.py`` hold no issue
numbers, no talk of sessions and no commit hashes (history belongs in ``CHANGELOG.md``);
its contents list points at headings that exist; every benchmark script is listed; and
every place that cites a section of ``docs/benchmarks.md`` by its title names a heading
that exists (no "section 9": numbers break when the document is reordered).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))

ISSUE = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)
SESSION = re.compile(r"\bsessions?\b", re.IGNORECASE)
# a commit hash: 7-40 hex digits with at least one letter and one digit (plain numbers are not)
HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
# a citation of docs/benchmarks.md by section: ``benchmarks.md``, "Title" [and "Title"]
CITE = re.compile(r'benchmarks\.md`{0,2},?\s*((?:"[^"]+"(?:\s*(?:,|and)\s*)?)+)')
BY_NUMBER = re.compile(r"benchmarks\.md`{0,2},?\s*(?:\(|\bsection\b)\s*\d|benchmarks\.md`{0,2},?\s*§", re.IGNORECASE)


def work_log_words(text: str) -> list[str]:
    """The issue numbers, session words and commit hashes in ``text``."""
    return [m.group(0) for pat in (ISSUE, SESSION, HASH) for m in pat.finditer(text)]


def headings(markdown: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", markdown, re.M)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def citing_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")), *SCRIPTS]
    return [f for f in files + sorted((ROOT / "src").rglob("*.py")) if f.exists()]


def test_work_log_words_are_found():
    """The patterns catch what they are for and pass plain figures."""
    assert work_log_words("Benchmarks (issues 5 and 10)") == ["issues 5"]
    assert work_log_words("as measured in this session") == ["session"]
    assert work_log_words("before = `279fe07`, after a2238b6") == ["279fe07", "a2238b6"]
    assert work_log_words("10,000 rows, 1000000 draws, 0.9995 AUROC, deadbeef, 1e-3") == []


def test_benchmarks_doc_is_not_a_work_log():
    assert work_log_words(DOC.read_text()) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_docstring_is_not_a_work_log(script):
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc, f"{script.name} has no module docstring"
    assert work_log_words(doc) == [], script.name


def test_contents_links_resolve():
    text = DOC.read_text()
    anchors = {slug(h) for h in headings(text)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 10
    assert sorted(set(links) - anchors) == []


def test_every_benchmark_script_is_listed():
    text = DOC.read_text()
    missing = [s.name for s in SCRIPTS if not s.name.startswith("_") and s.name != "render_md.py"
               and f"`{s.name}`" not in text]
    assert missing == []


def test_citations_of_the_benchmarks_doc_name_existing_headings():
    titles = set(headings(DOC.read_text()))
    anchors = {slug(t) for t in titles}
    bad = []
    for f in citing_files():
        text = f.read_text()
        flat = re.sub(r"\s+", " ", text)
        bad += [f"{f.name}: by number: {m.group(0)!r}" for m in BY_NUMBER.finditer(flat)]
        for m in CITE.finditer(flat):
            bad += [f"{f.name}: {t!r}" for t in re.findall(r'"([^"]+)"', m.group(1)) if t not in titles]
        bad += [f"{f.name}: #{a}" for a in re.findall(r"benchmarks\.md#([\w-]+)", text) if a not in anchors]
    assert bad == []


def test_citation_check_catches_numbers_and_unknown_titles():
    assert BY_NUMBER.search('see `docs/benchmarks.md` section 9;')
    assert BY_NUMBER.search("(docs/benchmarks.md, section 7)")
    m = CITE.search('(`docs/benchmarks.md`, "Known density" and "Trust")')
    assert re.findall(r'"([^"]+)"', m.group(1)) == ["Known density", "Trust"]
    assert "Trust" not in headings(DOC.read_text())
