"""The figures quoted in README.md, docs/ and the config docstrings agree with the results.

Tables come from ``benchmarks/results/*.json`` through ``scripts/render_figures.py``; running it
must leave the committed pages unchanged. Each tutorial config's "Expected" accuracy must be
the committed runs' mean and range.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _render_module():
    spec = importlib.util.spec_from_file_location(
        "render_figures", ROOT / "scripts/render_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rendering_leaves_pages_unchanged():
    render = _render_module()
    for page in render.PAGES:
        text = (ROOT / page).read_text()
        assert render.render(text) == text, f"{page} is stale: run python scripts/render_figures.py"


def test_every_table_is_placed_and_filled():
    render = _render_module()
    placed = {}
    for page in render.PAGES:
        for match in render.MARKER.finditer((ROOT / page).read_text()):
            placed[match["name"]] = match["body"]
    assert set(placed) == set(render.TABLES), "a table is not placed on any page, or unknown"
    for name, body in placed.items():
        assert "Machine:" in body or "Command" in body or name == "long_sequences_big", name


def test_render_replaces_a_stale_table():
    render = _render_module()
    stale = "before\n<!-- figures: tutorials -->\n| old |\n<!-- /figures -->\nafter\n"
    fresh = render.render(stale)
    assert "| old |" not in fresh and "`lstm_sequences`" in fresh
    assert fresh.startswith("before\n") and fresh.endswith("<!-- /figures -->\nafter\n")
    with pytest.raises(KeyError, match="unknown figures block"):
        render.render("<!-- figures: nonsense -->\n<!-- /figures -->")


EXPECTED = re.compile(
    r"Expected: test accuracy (\d\.\d{3}) mean over (\d+) seeds \((\d\.\d{3})-(\d\.\d{3})\)"
)


@pytest.mark.parametrize(
    "name", ["lstm_sequences", "birnn_mnist", "lstm_mnist", "rnn_mnist", "simplernn_mnist"]
)
def test_config_docstring_matches_results(name):
    doc = importlib.import_module(f"jaxrnn.configs.{name}").__doc__
    match = EXPECTED.search(" ".join(doc.split()))
    assert match, f"jaxrnn/configs/{name}.py states no 'Expected: test accuracy ...' line"
    summary = json.loads((ROOT / "benchmarks/results/tutorials.json").read_text())[name]["summary"]
    mean, seeds, low, high = match.groups()
    assert mean == f"{summary['accuracy_mean']:.3f}"
    assert int(seeds) == len(summary["seeds"])
    assert (low, high) == (f"{summary['accuracy_min']:.3f}", f"{summary['accuracy_max']:.3f}")
    keras = re.search(r"Keras 3[^0-9]*(\d\.\d{3}) \((\d\.\d{3}-\d\.\d{3})\)", " ".join(doc.split()))
    assert keras, f"jaxrnn/configs/{name}.py states no Keras 3 figure"
    assert float(keras[1]) == summary["keras_mean"] and keras[2] == summary["keras_range"]
