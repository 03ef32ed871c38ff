"""One command per work directory (``jaxrnn.training.lock``), with real processes.

A run is paused with SIGSTOP while it holds its directory, so that the commands tried against it
meanwhile meet a live holder however fast the machine is; SIGCONT lets it finish.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest

from jaxrnn.cli import main
from jaxrnn.training import lock, loop, workdir
from jaxrnn.training.checkpointing import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = [
    "hidden_size=8",
    "batch_size=8",
    "num_steps=400",
    "steps_per_call=20",
    "checkpoint_every=100",
    "log_every=20",
    "eval_every=0",
    "train_examples=300",
    "test_examples=64",
]


def _train_args(workdir, *settings) -> list[str]:
    args = ["train", "--config", "lstm_sequences", "--workdir", str(workdir)]
    return args + [a for kv in settings for a in ("--set", kv)]


def _start(workdir, *settings) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxrnn", *_train_args(workdir, *settings)],
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(proc: subprocess.Popen, workdir) -> None:
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory)):
            return
        time.sleep(0.02)
    pytest.fail(
        f"no checkpoint appeared (exit {proc.poll()}): {proc.stderr and proc.stderr.read()}"
    )


def _snapshot(workdir) -> dict[str, tuple[int, int]]:
    """Every file under ``workdir`` with its size and modification time."""
    out = {}
    for parent, _, names in os.walk(workdir):
        for name in names:
            st = os.stat(os.path.join(parent, name))
            out[os.path.relpath(os.path.join(parent, name), workdir)] = (st.st_size, st.st_mtime_ns)
    return out


def _final_state(workdir):
    _, config = loop.load_run(str(workdir))
    train = loop.load_split(config, "train")
    model = loop.build_model(config, train)
    from jaxrnn.training import optimizers
    from jaxrnn.training import steps as steps_lib

    tx = optimizers.from_config(config, config.num_steps)
    like = loop.init_state(config, model, tx, train["inputs"].shape[-1], steps_lib.make_mesh())
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    assert ckpt.latest_step() == config.num_steps
    state, _ = ckpt.restore(like)
    ckpt.close()
    return state


@pytest.mark.slow
def test_a_second_run_is_refused_while_the_first_trains_which_ends_as_if_alone(tmp_path, capsys):
    held, alone = tmp_path / "held", tmp_path / "alone"
    first = _start(held, *SETTINGS)
    uninterrupted = _start(alone, *SETTINGS)
    try:
        _wait_for_checkpoint(first, held)
        os.kill(first.pid, signal.SIGSTOP)  # it holds the directory, mid-run
        before = _snapshot(held)
        note = json.loads(open(held / "jaxrnn.lock").read())
        assert (note["pid"], note["command"]) == (first.pid, "train")

        # Another config with --overwrite: had it not stopped first, it would wipe the run.
        other = _train_args(held, *SETTINGS, "hidden_size=4") + ["--overwrite"]
        second = subprocess.run(
            [sys.executable, "-m", "jaxrnn", *other],
            env=dict(os.environ, PYTHONPATH=ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        message = second.stderr
        assert str(held) in message and "is in use" in message
        assert f"process {first.pid} on host {socket.gethostname()}" in message
        assert "`jaxrnn train`" in message and "another --workdir" in message

        capsys.readouterr()
        assert main(["eval", "--workdir", str(held)]) == 2  # in this process: refused too
        assert f"process {first.pid}" in capsys.readouterr().err
        assert main(["plot", "--workdir", str(held)]) == 2
        assert "plot --out FILE" in capsys.readouterr().err
        outside = tmp_path / "progress.png"
        assert main(["plot", "--workdir", str(held), "--out", str(outside)]) == 0  # reads only
        assert outside.read_bytes()[:4] == b"\x89PNG"
        assert _snapshot(held) == before  # nothing in the directory was touched
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert uninterrupted.wait(timeout=300) == 0

    a, b = _final_state(held), _final_state(alone)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert loop.read_metrics(str(held)) == loop.read_metrics(str(alone))


@pytest.mark.slow
def test_a_run_after_a_sigkilled_one_starts_without_help(tmp_path, capsys):
    run = tmp_path / "run"
    killed = _start(run, *SETTINGS)
    _wait_for_checkpoint(killed, run)
    killed.kill()
    killed.communicate()
    assert json.loads(open(run / "jaxrnn.lock").read())["pid"] == killed.pid  # its note stays
    capsys.readouterr()
    assert main(_train_args(run, *SETTINGS)) == 0
    assert "resuming from the checkpoint at step" in capsys.readouterr().out
    assert json.loads(open(run / "jaxrnn.lock").read())["pid"] == os.getpid()


def test_a_held_directory_refuses_every_command_and_is_free_after(tmp_path, capsys):
    run = str(tmp_path / "run")
    holder = lock.acquire(run, "train")
    assert holder is not None
    with pytest.raises(lock.WorkdirBusyError, match=rf"process {os.getpid()} on host"):
        lock.acquire(run, "eval")  # a second descriptor in this very process is refused too
    assert os.listdir(run) == ["jaxrnn.lock"]
    capsys.readouterr()
    assert main(_train_args(run, *SETTINGS)) == 2
    assert "is in use" in capsys.readouterr().err
    assert os.listdir(run) == ["jaxrnn.lock"]  # no config.json, no checkpoints, no log
    holder.release()
    assert main(_train_args(run, *SETTINGS)) == 0


def test_overwrite_keeps_the_lock_file_it_holds(tmp_path):
    from jaxrnn.configs import get_config

    run = str(tmp_path / "run")
    config = get_config("lstm_sequences")
    workdir.prepare(run, "lstm_sequences", config, overwrite=False, main=True)
    os.makedirs(os.path.join(run, "checkpoints", "100"))
    held = lock.acquire(run, "train")
    workdir.prepare(run, "lstm_sequences", config.replace(seed=1), overwrite=True, main=True)
    assert sorted(os.listdir(run)) == ["config.json", "jaxrnn.lock"]
    with pytest.raises(lock.WorkdirBusyError):  # still held: the file was not replaced
        lock.acquire(run, "train")
    assert held is not None
    held.release()


def test_commands_on_missing_or_remote_directories_take_no_lock(tmp_path, bucket):
    assert lock.acquire(str(tmp_path / "missing"), "eval", create=False) is None
    assert not (tmp_path / "missing").exists()
    assert lock.acquire("gs://bucket/run", "train") is None
    assert bucket.opened == []


def test_every_process_of_a_refused_multi_process_run_stops(tmp_path):
    """Process 0 alone locks; the others learn that it could not and stop too (no hang)."""
    run = str(tmp_path / "run")
    holder = lock.acquire(run, "train")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env["JAXRNN_COORDINATOR"] = f"localhost:{portpicker.pick_unused_port()}"
    env["JAXRNN_NUM_PROCESSES"] = "2"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxrnn", *_train_args(run, *SETTINGS)],
            env=dict(env, JAXRNN_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        assert holder is not None
        holder.release()
    assert [p.returncode for p in procs] == [2, 2], errors
    assert f"process {os.getpid()} on host" in errors[0]
    assert "process 0 could not lock it" in errors[1]
    assert os.listdir(run) == ["jaxrnn.lock"]
