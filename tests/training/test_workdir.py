"""The work directory on an object store: every file goes through etils.epath, none is appended.

A fake ``gs://`` bucket (fsspec's in-memory file system behind epath's ``gs`` backend, refusing
to append as GCS does) stands in for Cloud Storage; an audit hook records every write-like
file operation Python makes on the local disk meanwhile, and a real training, its resume, a
replacing run, ``eval`` and ``plot`` must make none.
"""

from __future__ import annotations

import io
import json
import os
import sys

import jax
import numpy as np
import pytest
from etils import epath

from jaxrnn.configs import get_config
from jaxrnn.training import loop, workdir
from jaxrnn.training.plotting import plot_run

TIME = 6


class _BucketCheckpointer:
    """``Checkpointer``'s interface with its files in the bucket, through epath.

    Orbax writes arrays through tensorstore's own GCS driver, which needs the network; the
    real ``Checkpointer`` is tested on local disk by the other tests. This records the
    directory the loop hands it, which is what orbax would get.
    """

    given: list[str] = []

    def __init__(self, directory: str, keep: int = 2, *, read_only: bool = False):
        _BucketCheckpointer.given.append(directory)
        self.dir, self.keep = epath.Path(directory), keep

    def all_steps(self) -> list[int]:
        if not self.dir.exists():
            return []
        return sorted(int(p.name) for p in self.dir.iterdir() if p.name.isdigit())

    def latest_step(self):
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, state, data_state) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, *[np.asarray(x) for x in jax.tree.leaves(state)])
        step = self.dir / str(int(state.step))
        step.mkdir(parents=True, exist_ok=True)
        (step / "state.npz").write_bytes(buffer.getvalue())
        (step / "data.json").write_text(json.dumps(data_state))
        for old in self.all_steps()[: -self.keep]:
            (self.dir / str(old)).rmtree()

    def restore(self, like, step=None):
        step_dir = self.dir / str(self.latest_step() if step is None else step)
        with np.load(io.BytesIO((step_dir / "state.npz").read_bytes())) as f:
            leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
        targets = jax.tree.leaves(like)
        state = jax.tree.unflatten(
            jax.tree.structure(like),
            [jax.device_put(x, t.sharding) for x, t in zip(leaves, targets, strict=True)],
        )
        return state, json.loads((step_dir / "data.json").read_text())

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


def _toy_size(config, split, **_):
    return config.train_examples if split == "train" else config.test_examples


def _toy_split(config, split, rows=None, **_):
    """Is the sequence increasing? In memory, so that loading data writes nothing either."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = _toy_size(config, split)
    lengths = rng.integers(2, TIME + 1, size=n).astype(np.int32)
    inputs = rng.normal(size=(n, TIME, 1)).astype(np.float32)
    labels = rng.integers(0, 2, size=n).astype(np.int32)
    inputs[labels == 1] = np.sort(inputs[labels == 1], axis=1)
    start, stop = rows if rows is not None else (0, n)
    arrays = {"inputs": inputs, "lengths": lengths, "labels": labels}
    return {k: v[start:stop] for k, v in arrays.items()}


_RECORDING: list | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITE_EVENTS = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree"}


def _audit(event: str, args: tuple) -> None:
    if _RECORDING is None:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else False
        if writes or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            _RECORDING.append((event, os.fsdecode(path)))
    elif event in _WRITE_EVENTS:
        _RECORDING.append((event, args[0]))


sys.addaudithook(_audit)  # audit hooks stay for the process: inert unless _RECORDING is a list


@pytest.fixture
def local_writes():
    """The local file writes (path, event) made while the test body runs."""
    global _RECORDING
    import matplotlib.pyplot  # noqa: F401  # its font cache is written on first import

    # The test session's JAX compilation cache (conftest) is a local directory that a user's
    # run would not have: off while recording (reset_cache: JAX decides once per process
    # whether to use it).
    from jax._src import compilation_cache

    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    _RECORDING = []
    try:
        yield _RECORDING
    finally:
        _RECORDING = None
        jax.config.update("jax_enable_compilation_cache", cache)
        compilation_cache.reset_cache()


def test_a_gs_workdir_gets_every_file_and_the_local_disk_none(
    bucket, local_writes, monkeypatch, event_files
):
    monkeypatch.setattr(loop, "load_split", _toy_split)
    monkeypatch.setattr(loop, "split_size", _toy_size)
    monkeypatch.setattr(loop, "Checkpointer", _BucketCheckpointer)
    _BucketCheckpointer.given.clear()
    config = get_config("lstm_sequences").replace(
        hidden_size=8,
        batch_size=16,
        num_steps=60,
        steps_per_call=20,
        log_every=20,
        eval_every=20,
        checkpoint_every=40,
        train_examples=320,
        test_examples=64,
        eval_batch_size=32,
    )
    run = "gs://bucket/runs/toy"
    quiet = dict(print_fn=lambda *a, **k: None)
    first = loop.train(config, run, name="toy", **quiet)
    assert _BucketCheckpointer.given == ["gs://bucket/runs/toy/checkpoints"]  # orbax's path
    names = {p.name for p in epath.Path(run).iterdir()}
    assert names == {"config.json", "metrics", "report.json", "tb", "checkpoints"}
    rows = loop.read_metrics(run)
    assert [(r["step"], r["split"]) for r in rows] == [
        (20, "train"),
        (20, "test"),
        (40, "train"),
        (40, "test"),
        (60, "train"),
        (60, "test"),
    ]
    assert json.loads(epath.Path(run, "report.json").read_text())["steps"] == 60
    (events,) = event_files(run)
    scalars = [(e.step, v.tag) for e in events for v in e.summary.value]
    assert (60, "train/loss") in scalars and (60, "test/accuracy") in scalars

    # Killed after the checkpoint at 40: the rows past it are dropped, then written again.
    epath.Path(run, "checkpoints", "60").rmtree()
    resumed = loop.train(config, run, name="toy", **quiet)
    assert resumed["resumed_from"] == 40
    assert loop.read_metrics(run) == rows  # truncated exactly, rewritten, bitwise the same
    assert resumed["test_loss"] == first["test_loss"]
    assert len(event_files(run)) == 2  # one event file per invocation

    assert loop.evaluate_workdir(run, **quiet)["test_loss"] == first["test_loss"]
    assert plot_run(run) == f"{run}/curves.png"
    assert epath.Path(run, "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    replaced = loop.train(config.replace(hidden_size=4), run, name="toy", overwrite=True, **quiet)
    assert replaced["resumed_from"] == 0
    assert loop.load_run(run)[1].hidden_size == 4
    assert len(loop.read_metrics(run)) == 6

    assert not [m for p, m in bucket.opened if "a" in m]
    assert local_writes == []


def test_config_json_of_an_older_version_is_the_same_run(tmp_path):
    config = get_config("lstm_sequences")
    run = str(tmp_path / "run")
    workdir.prepare(run, "lstm_sequences", config, overwrite=False, main=True)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    del record["config"]["data_shards"]  # a field added after this workdir was made
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    workdir.prepare(run, "lstm_sequences", config, overwrite=False, main=True)
    with pytest.raises(workdir.WorkdirError, match="holds another run"):
        workdir.prepare(run, "lstm_sequences", config.replace(seed=1), overwrite=False, main=True)
