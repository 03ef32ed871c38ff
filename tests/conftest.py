"""Shared fixtures: every cell variant with parameters that exercise every bias; hermetic
tests (datasets prepared in a temporary directory, no network beyond this machine)."""

import ipaddress
import os
import pathlib
import shutil
import socket
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

import jaxrnn


def pytest_configure(config):
    """One JAX compilation cache for the whole run, shared by the xdist workers (which inherit
    this process's environment) and the processes the tests start (the CLI, the examples):
    a program that several tests compile, such as a config's train step, is compiled once.
    The directory is removed at the end; a cache the user set up is used as it is."""
    if hasattr(config, "workerinput"):
        return
    _compile_for_tests()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = tempfile.mkdtemp(prefix="jaxrnn-tests-jax-cache-")
    config._jaxrnn_cache = directory
    # (environment variable, jax option, value): every compilation is cached
    for name, option, value in [
        ("JAX_COMPILATION_CACHE_DIR", "jax_compilation_cache_dir", directory),
        (
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "jax_persistent_cache_min_compile_time_secs",
            0.0,
        ),
        (
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
            "jax_persistent_cache_min_entry_size_bytes",
            -1,
        ),
    ]:
        os.environ[name] = str(value)
        jax.config.update(option, value)


def _compile_for_tests():
    """XLA:CPU compiles the tests' programs quickly: LLVM at `-O0` and the elemental emitters
    rather than the fusion emitters. The suite's time is mostly the compilation of small
    programs, and this takes more than a third of it; the HLO (what each program computes)
    and the HLO passes are the same as by default, and jaxrnn's own CPU kernels are built
    ahead of time and unaffected. Flags the user set for these are kept. Only with the jaxlib
    that constraints.txt pins: XLA stops at a flag it does not know, and another jaxlib (a
    GPU machine's) may not know these."""
    pinned = (pathlib.Path(__file__).parent.parent / "constraints.txt").read_text()
    if f"jaxlib=={jaxlib.__version__}\n" not in pinned:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        if flag.partition("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags


def pytest_collection_modifyitems(items):
    """The tests marked slow run first, so that the workers share them from the start and the
    run does not end on one of them left alone on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config):
    directory = getattr(config, "_jaxrnn_cache", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


# (id, cell, reference kind, reference hyperparameters)
CELL_CASES = [
    ("rnn_tanh", jaxrnn.SimpleRNN(5), "rnn", {"activation": "tanh"}),
    ("rnn_relu", jaxrnn.SimpleRNN(5, activation="relu"), "rnn", {"activation": "relu"}),
    ("lstm", jaxrnn.LSTM(5), "lstm", {}),
    ("lstm_fb1", jaxrnn.LSTM(5, forget_bias=1.0), "lstm", {"forget_bias": 1.0}),
    ("gru", jaxrnn.GRU(5), "gru", {"reset_after": True}),
    ("gru_cho", jaxrnn.GRU(5, reset_after=False), "gru", {"reset_after": False}),
]


def random_params(cell, input_size, seed=0, dtype=jnp.float32, second_bias=False):
    """``cell.init`` params with every bias made non-zero (init leaves them zero)."""
    params = cell.init(jax.random.key(seed), input_size, dtype)
    rng = np.random.default_rng(seed + 100)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    for name in ("b", "b_h"):
        if name in params:
            params[name] = params[name] + jnp.asarray(rng.normal(0, 0.5, params[name].shape), dtype)
    if second_bias and "b_h" not in params:
        params["b_h"] = jnp.asarray(rng.normal(0, 0.5, params["b"].shape), dtype)
    return params


@pytest.fixture(params=CELL_CASES, ids=[c[0] for c in CELL_CASES])
def cell_case(request):
    name, cell, kind, hyper = request.param
    return cell, kind, {"hidden": cell.hidden_size, **hyper}


@pytest.fixture(autouse=True, scope="session")
def _datasets_in_a_temporary_directory(tmp_path_factory):
    """Every dataset is prepared under this run's temporary directory, never in the user's
    (``~/tensorflow_datasets``). The directory is shared by the run's xdist workers (the
    preparation lock keeps two from writing one dataset) and inherited by subprocesses; a
    test may still pass its own ``data_dir``."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    with pytest.MonkeyPatch.context() as patch:
        # jaxrnn.data.pipeline.DATA_DIR_ENV, not imported here: that would load tfds first.
        patch.setenv("JAXRNN_DATA_DIR", str(shared / "tensorflow_datasets"))
        yield


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name: only resolved names reach connect()
        return False


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """A test that connects anywhere but this machine fails, naming the address."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address):
        if not _is_local(address):
            raise OSError(f"tests must not reach the network: connect to {address!r}")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
