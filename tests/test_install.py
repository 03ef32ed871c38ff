"""The light core and its extras: what ``import jaxrnn`` imports, the ImportError that names
the ``pip install`` of a missing extra, ``jaxrnn info`` and why the CPU kernels are missing."""

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

from jaxrnn import _extras, _native, cli

# The extras' packages (pyproject.toml), none of which the core may import.
EXTRA_MODULES = [
    "flax",
    "optax",
    "orbax",
    "tensorflow_datasets",
    "array_record",
    "matplotlib",
    "tensorboardX",
    "tqdm",
    "etils",
    "gcsfs",
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> dict:
    """Runs ``code`` in a fresh interpreter; returns the JSON that it prints last."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_core_imports_no_extra():
    """jax itself may import etils; jaxrnn's core and CLI module add none of the extras."""
    result = _run(
        """
        import json, sys
        import jax, jax.numpy as jnp, numpy
        before = set(sys.modules)
        import jaxrnn
        from jaxrnn import cells, cli, drivers, interop, layers, masking
        cell = jaxrnn.LSTM(4)
        ys, _ = jaxrnn.rnn(cell, cell.init(jax.random.key(0), 3), jnp.ones((2, 5, 3)))
        jax.grad(lambda x: jaxrnn.rnn(cell, cell.init(jax.random.key(0), 3), x)[0].sum())(
            jnp.ones((2, 5, 3)))
        new = sorted({m.partition(".")[0] for m in set(sys.modules) - before})
        print(json.dumps({"new": new, "ys": float(ys.sum())}))
        """
    )
    assert "jaxrnn" in result["new"]
    assert not set(result["new"]) & set(EXTRA_MODULES), result["new"]


def test_pieces_without_their_extra_name_the_pip_install():
    """With every extra's package hidden (``sys.modules[name] = None``, as if not installed),
    the core still runs and each optional piece raises an ImportError naming its extra."""
    result = _run(
        f"""
        import contextlib, io, json, sys
        for name in {EXTRA_MODULES!r}:
            sys.modules[name] = None
        import jax, jax.numpy as jnp
        import jaxrnn
        from jaxrnn import cli
        cell = jaxrnn.GRU(4)
        ys, _ = jaxrnn.rnn(cell, cell.init(jax.random.key(0), 3), jnp.ones((2, 5, 3)))
        out = {{"ys_finite": bool(jnp.isfinite(ys).all())}}
        for module in ("jaxrnn.nn", "jaxrnn.data", "jaxrnn.training", "jaxrnn.data.pipeline"):
            try:
                __import__(module)
                out[module] = None
            except ImportError as error:
                out[module] = [type(error).__name__, str(error)]
        for argv in (["train", "--config", "adding"], ["plot", "--workdir", "w"], ["info"]):
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = cli.main(argv)
            out[argv[0]] = [code, stdout.getvalue(), stderr.getvalue()]
        print(json.dumps(out))
        """
    )
    assert result["ys_finite"]
    for module, user, extra, needs in (
        ("jaxrnn.nn", "jaxrnn.nn", "nn", "flax"),
        ("jaxrnn.data", "jaxrnn.data", "data", "tensorflow_datasets, etils.epath"),
        ("jaxrnn.data.pipeline", "jaxrnn.data", "data", "tensorflow_datasets, etils.epath"),
        ("jaxrnn.training", "jaxrnn.training", "train", "tensorflow_datasets, etils.epath, optax"),
    ):
        kind, message = result[module]
        assert kind == "MissingExtraError"
        assert message.startswith(f"{user} needs {needs}")
        assert message.endswith(f'pip install "jaxrnn[{extra}]"')
    for command in ("train", "plot"):
        code, stdout, stderr = result[command]
        assert code == 2 and not stdout
        assert stderr.startswith(f"jaxrnn {command}: error: jaxrnn.training needs")
        assert 'pip install "jaxrnn[train]"' in stderr
    code, stdout, _ = result["info"]
    assert code == 0
    assert "extra nn: missing flax" in stdout.splitlines()
    assert "extra data: missing tensorflow_datasets, etils.epath" in stdout.splitlines()
    assert stdout.splitlines()[-1].startswith("cpu kernels: ")


def test_requires_wraps_only_the_extras_modules(monkeypatch):
    monkeypatch.setitem(_extras.EXTRAS, "fake", ("jaxrnn_fake_dependency.sub",))
    monkeypatch.setitem(sys.modules, "jaxrnn_fake_dependency", None)
    # Found missing before the imports run: nothing inside the block is reached.
    with pytest.raises(_extras.MissingExtraError) as info:
        with _extras.requires("fake", "jaxrnn.fake"):
            raise AssertionError("not reached")
    assert str(info.value) == (
        "jaxrnn.fake needs jaxrnn_fake_dependency.sub, not installed; "
        'install with: pip install "jaxrnn[fake]"'
    )
    assert isinstance(info.value, ImportError)

    monkeypatch.setitem(_extras.EXTRAS, "fake", ("json",))  # installed
    with pytest.raises(_extras.MissingExtraError, match=r'json, which did not import .*"jaxrnn'):
        with _extras.requires("fake", "jaxrnn.fake"):
            raise ImportError("cannot import name 'nope' from 'json'", name="json")
    with pytest.raises(ModuleNotFoundError) as unrelated:  # another package's: unchanged
        with _extras.requires("fake", "jaxrnn.fake"):
            import jaxrnn_no_such_module  # noqa: F401
    assert type(unrelated.value) is ModuleNotFoundError
    with pytest.raises(ValueError, match="extra must be one of"):
        _extras.install_command("flax")


def test_the_core_and_the_extras_in_pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project["optional-dependencies"]
    assert set(_extras.EXTRAS) | {"gcs", "all", "test"} <= set(extras)
    names = {re.match(r"[\w.-]+", r).group(): r for r in project["dependencies"]}
    assert sorted(names) == ["jax", "numpy", "scipy-openblas32"]
    assert "==" in names["scipy-openblas32"]  # pinned exactly: see the comment beside it


def test_info_reports_versions_devices_and_the_kernels(capsys, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    import jax

    assert f"jax: {jax.__version__}" in lines
    assert any(line.startswith("numpy: ") for line in lines)
    assert any(line.startswith(f"devices: {jax.device_count()} cpu") for line in lines)
    assert lines[-1] == "cpu kernels: loaded"  # CI builds them (tests/test_native.py)
    pages = [line for line in lines if line.startswith("huge pages: transparent ")]
    assert len(pages) == 1 and pages[0].endswith(", glibc.malloc.hugetlb=unset")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0:glibc.malloc.hugetlb=1")
    assert cli.huge_pages().endswith(", glibc.malloc.hugetlb=1")

    monkeypatch.setattr(_native, "kernel_status", lambda: (False, "not built: a reason"))
    assert cli.main(["info"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "cpu kernels: not available (not built: a reason)"
    )


def test_kernel_status_says_why_not(monkeypatch):
    """Each early return of the loader (the loaded kernels stay registered)."""
    load = _native.kernel_status.__wrapped__
    monkeypatch.setenv(_native.ENV_NATIVE, "0")
    assert load() == (False, "turned off by JAXRNN_NATIVE=0")
    monkeypatch.delenv(_native.ENV_NATIVE)
    monkeypatch.setitem(sys.modules, "scipy_openblas32", None)
    loaded, reason = load()
    assert not loaded and reason.startswith("their BLAS is not installed: pip install")
    assert "'scipy-openblas32" in reason  # the requirement that jaxrnn was installed with
    real_find_spec = _native.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "jaxrnn._recurrence" else real_find_spec(name, *args)

    monkeypatch.setattr(_native.importlib.util, "find_spec", find_spec)
    loaded, reason = load()
    assert not loaded and reason.startswith("not built: ")


def test_missing_kernels_warn_once_where_they_would_run(caplog):
    report = _native._report.__wrapped__
    with caplog.at_level(logging.INFO, logger="jaxrnn._native"):
        report("not built: a reason")
        report("turned off by JAXRNN_NATIVE=0")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [
        (
            logging.WARNING,
            "jaxrnn's CPU kernels are not available (not built: a reason); the XLA loops run",
        ),
        (
            logging.INFO,
            "jaxrnn's CPU kernels are not available (turned off by JAXRNN_NATIVE=0); "
            "the XLA loops run",
        ),
    ]
