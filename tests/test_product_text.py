"""The product's text speaks to users: the README, the changelog, the documentation site,
the results files under ``benchmarks/results/``, the package, the examples, scripts and
benchmarks name no work items, sessions, targets or floors of how they were produced."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = sorted(
    {
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "benchmarks" / "results").glob("*.md"),
        *(ROOT / "jaxrnn").rglob("*.py"),
        *(ROOT / "examples").rglob("*.py"),
        *(ROOT / "scripts").rglob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    }
)
PATTERNS = [
    re.compile(r"\b[Ii]ssues? #?\d+"),
    re.compile(r"\b[Ss]essions? \d+"),
    re.compile(r"\bwork items?\b"),
    re.compile(r"\b(over|under) (the )?bar\b|\bbelow (the )?floor\b"),
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_work_items_in_product_text(path):
    text = path.read_text(encoding="utf-8")
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
        for pattern in PATTERNS
        for m in pattern.finditer(text)
    ]
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_should():
    samples = ["issue 7's floor", "(session 4)", "the work item", "(over bar)", "below floor"]
    for sample in samples:
        assert any(p.search(sample) for p in PATTERNS), sample
