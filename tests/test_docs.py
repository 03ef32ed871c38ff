"""Every ```python block of README.md and docs/**/*.md runs as written.

A page's blocks run in order in one namespace (a later block may use an earlier one's names),
in a fresh temporary directory, so that files a block writes stay out of the checkout. A
block that raises fails the page's test with the block's location.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda p: str(p.relative_to(ROOT)),
)
# An opening fence "```python" (nothing else on the line), its body, the closing fence.
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number of the opening fence, code)`` of each ```python block of ``text``."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (9, "y = x + 1\n")]


def test_pages_have_code():
    """The README and the getting-started page must keep code that this test runs."""
    for name in ("README.md", "docs/getting-started.md"):
        assert python_blocks((ROOT / name).read_text()), f"{name} has no ```python block"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """One tfds data directory for every page, so a dataset is prepared once."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p.read_text())],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_page_runs(page: pathlib.Path, tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXRNN_DATA_DIR", str(data_dir))
    namespace: dict = {"__name__": "__docs__"}
    relative = page.relative_to(ROOT)
    for line, code in python_blocks(page.read_text()):
        compiled = compile(code, f"{relative}:{line}", "exec")
        try:
            exec(compiled, namespace)
        except Exception as error:
            raise AssertionError(f"the block at {relative}:{line} failed: {error!r}") from error
