"""Data parallelism and multi-process runs (``jaxrnn.parallel``), proved on CPU.

* 4 simulated host devices (``--xla_force_host_platform_device_count=4``, in a subprocess: the
  flag must be set before JAX starts) give the same losses and parameters as 1 device, with
  the batch split 4 ways, and with a 2x2 ``data x model`` mesh that shards parameters.
* Two processes on localhost (``jax.distributed`` over the CPU gloo collectives, 2 devices
  each) end a short training with the parameters of a one-process run over the same global
  batches, and the checkpoint they write together restores in a one-process run; the same
  again through ``jaxrnn train`` itself (the CLI, with the ``JAXRNN_*`` coordinator variables),
  whose checkpoint ``evaluate_workdir`` then restores in one process.

The subprocesses run this file as a script (``python test_parallel.py MODE ...``); each one
has a timeout and is killed with its process group if it overruns.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

ROOT = Path(__file__).resolve().parents[1]

# The tiny problem every run trains: an LSTM over padded sequences, a linear readout of the
# final hidden state, mean squared error, Adam. GLOBAL_BATCH rows per step.
GLOBAL_BATCH = 8
TIME, FEATURES, HIDDEN = 5, 3, 8
STEPS = 4
TOL = 1e-5


# --------------------------------------------------------------------------- worker side


def _global_batch_numpy(step: int) -> dict[str, np.ndarray]:
    """The global batch of ``step``, identical in every run (data is a function of the step)."""
    rng = np.random.default_rng(1000 + step)
    return {
        "x": rng.normal(size=(GLOBAL_BATCH, TIME, FEATURES)).astype(np.float32),
        "lengths": rng.integers(1, TIME + 1, size=(GLOBAL_BATCH,)).astype(np.int32),
        "y": rng.normal(size=(GLOBAL_BATCH, 1)).astype(np.float32),
    }


def _problem():
    import jax
    import jax.numpy as jnp
    import optax

    import jaxrnn

    cell = jaxrnn.LSTM(HIDDEN)
    key_rnn, key_out = jax.random.split(jax.random.key(0))
    params = {
        "rnn": cell.init(key_rnn, FEATURES),
        "out": {"w": 0.3 * jax.random.normal(key_out, (HIDDEN, 1)), "b": jnp.zeros((1,))},
    }
    tx = optax.adam(1e-2)

    def loss_fn(params, batch):
        _, carry = jaxrnn.rnn(cell, params["rnn"], batch["x"], batch["lengths"])
        pred = cell.hidden(carry) @ params["out"]["w"] + params["out"]["b"]
        return jnp.mean((pred - batch["y"]) ** 2)

    def train_step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return params, tx, train_step


def _train(mesh, *, model_min_size=None, checkpoint_dir=None):
    """Train STEPS steps on ``mesh``; each process feeds only its rows of each global batch."""
    import jax

    from jaxrnn import parallel

    params, tx, train_step = _problem()
    local_batch = parallel.check_global_batch(GLOBAL_BATCH, mesh)
    if model_min_size is None:
        state = parallel.replicate((params, tx.init(params)), mesh)
    else:
        state = parallel.shard_params((params, tx.init(params)), mesh, min_size=model_min_size)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(
        train_step,
        in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    first = parallel.process_index() * local_batch
    losses = []
    for i in range(STEPS):
        rows = {k: v[first : first + local_batch] for k, v in _global_batch_numpy(i).items()}
        jax.tree.map(
            np.testing.assert_array_equal, rows, parallel.local_rows(_global_batch_numpy(i), mesh)
        )
        batch = parallel.global_batch(rows, mesh)
        assert batch["x"].shape == (GLOBAL_BATCH, TIME, FEATURES)
        state, loss = step(state, batch)
        losses.append(float(parallel.to_host(loss)))
    # Host-side reduction across processes: every process counts only its own rows.
    assert int(parallel.process_sum(np.int64(local_batch))) == GLOBAL_BATCH
    if checkpoint_dir is not None:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(Path(checkpoint_dir) / "final", {"params": state[0], "opt": state[1]})
            ckptr.wait_until_finished()
    return np.asarray(losses), parallel.to_host(state[0])


def _save(path, losses, params):
    import jax

    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(path, losses=losses, **flat)


def _toy_size(config, split, **_):
    return config.train_examples if split == "train" else config.test_examples


def _toy_split(config, split, rows=None, **_):
    """A small learnable sequence task (no tfds, no disk): is the sequence increasing?

    Generated whole, then cut to ``rows``: each process keeps only its shard, as the real
    loader does (it reads only those rows).
    """
    whole = _toy_whole(config, split)
    start, stop = rows if rows is not None else (0, _toy_size(config, split))
    if split == "train" and os.environ.get("TEST_ROWS_LOG"):  # which rows this process read
        import jax

        with open(f"{os.environ['TEST_ROWS_LOG']}.{jax.process_index()}", "a") as f:
            f.write(f"{start} {stop}\n")
    return {k: v[start:stop] for k, v in whole.items()}


def _toy_whole(config, split):
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = _toy_size(config, split)
    lengths = rng.integers(2, TIME + 1, size=n).astype(np.int32)
    inputs = rng.normal(size=(n, TIME, 1)).astype(np.float32)
    labels = rng.integers(0, 2, size=n).astype(np.int32)
    inputs[labels == 1] = np.sort(inputs[labels == 1], axis=1)
    inputs[np.arange(TIME)[None, :] >= lengths[:, None]] = -1.0
    return {"inputs": inputs, "lengths": lengths, "labels": labels}


def _run_cli(argv: list[str]) -> int:
    """``jaxrnn ARGS`` with data loading replaced by ``_toy_split`` (this file is about devices).

    ``eval-json WORKDIR OUT`` evaluates the run's latest checkpoint and writes the report.
    """
    from jaxrnn import cli
    from jaxrnn.training import loop

    loop.load_split = _toy_split
    loop.split_size = _toy_size
    if argv[0] == "eval-json":
        report = loop.evaluate_workdir(argv[1])
        Path(argv[2]).write_text(json.dumps(report))
        return 0
    return cli.main(argv)


def _worker(argv: list[str]) -> None:
    import jax

    if argv[0] == "cli":  # the real command line: jaxrnn ARGS
        raise SystemExit(_run_cli(argv[1:]))

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jaxrnn import parallel

    mode, out = argv[0], Path(argv[1])
    if mode == "devices":
        # 1 device and each mesh of this process's devices, with the same data.
        assert parallel.initialize() is False  # no coordinator: single-process, nothing to do
        n = jax.device_count()
        _save(out / "one_device.npz", *_train(parallel.make_mesh(devices=jax.devices()[:1])))
        if n > 1:
            _save(out / f"data{n}.npz", *_train(parallel.make_mesh()))
            mesh = parallel.make_mesh(model=2)
            _save(out / f"data{n // 2}_model2.npz", *_train(mesh, model_min_size=0))
    elif mode == "multi":
        assert parallel.initialize() is True  # from the JAXRNN_* variables
        assert parallel.process_count() == 2
        mesh = parallel.make_mesh()
        assert parallel.data_size(mesh) == jax.device_count() == 2 * jax.local_device_count()
        losses, params = _train(mesh, checkpoint_dir=out / "ckpt")
        if parallel.is_main_process():
            _save(out / "two_process.npz", losses, params)
        parallel.sync("done")
        jax.distributed.shutdown()
    elif mode == "restore":
        import orbax.checkpoint as ocp

        assert jax.process_count() == 1
        params, tx, _ = _problem()
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
            {"params": params, "opt": tx.init(params)},
        )
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(out / "ckpt" / "final", target)
        _save(out / "restored.npz", np.zeros(0), restored["params"])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


# --------------------------------------------------------------------------- test side


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for name in ("JAXRNN_COORDINATOR", "JAXRNN_NUM_PROCESSES", "JAXRNN_PROCESS_ID"):
        env.pop(name, None)
    env.update(extra)
    return env


def _run_workers(commands: list[tuple[list[str], dict[str, str]]], timeout: float) -> None:
    """Start every worker at once; wait for all; kill them all on timeout or any failure."""
    procs = []
    try:
        for args, env in commands:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), *args],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # its own process group, killed as one
                )
            )
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers {[c[0] for c in commands]} took more than {timeout}s")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    failed = [(p.returncode, out) for p, out in zip(procs, outputs, strict=True) if p.returncode]
    assert not failed, "\n\n".join(f"exit {rc}:\n{out[-4000:]}" for rc, out in failed)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=TOL, atol=TOL, err_msg=f"{what}: {k}")


def test_four_devices_match_one_device(tmp_path):
    _run_workers([(["devices", str(tmp_path)], _env(4))], timeout=120)
    one = _load(tmp_path / "one_device.npz")
    assert one["losses"].shape == (STEPS,) and np.all(np.isfinite(one["losses"]))
    _assert_same(_load(tmp_path / "data4.npz"), one, "data=4")
    _assert_same(_load(tmp_path / "data2_model2.npz"), one, "data=2 x model=2")


@pytest.mark.slow
def test_two_processes_match_one_process_and_checkpoint_restores(tmp_path):
    port = portpicker.pick_unused_port()
    workers = [
        (
            ["multi", str(tmp_path)],
            _env(
                2,
                JAXRNN_COORDINATOR=f"localhost:{port}",
                JAXRNN_NUM_PROCESSES="2",
                JAXRNN_PROCESS_ID=str(i),
            ),
        )
        for i in range(2)
    ]
    # The one-process reference (1 device, the same global batches) runs alongside.
    reference = tmp_path / "reference"
    reference.mkdir()
    _run_workers([*workers, (["devices", str(reference)], _env(1))], timeout=150)
    _run_workers([(["restore", str(tmp_path)], _env(1))], timeout=90)

    two = _load(tmp_path / "two_process.npz")
    one = _load(reference / "one_device.npz")
    _assert_same(two, one, "2 processes x 2 devices vs 1 device")
    restored = _load(tmp_path / "restored.npz")
    restored.pop("losses")
    two.pop("losses")
    for k in two:  # the checkpoint holds exactly the two-process run's final parameters
        np.testing.assert_array_equal(restored[k], two[k], err_msg=k)


@pytest.mark.slow
def test_cli_two_processes_train_like_one_and_restore_in_one(tmp_path):
    """``jaxrnn train`` itself: 2 processes x 2 devices, each reading only its half of the
    training examples, vs 1 device fed the same 2 data shards (``data_shards=2``); the
    checkpoint of the two-process run evaluated by a one-process run."""
    port = portpicker.pick_unused_port()
    sets = [
        "hidden_size=8",
        "batch_size=16",
        "num_steps=20",
        "steps_per_call=10",
        "log_every=10",
        "checkpoint_every=20",
        "train_examples=160",
        "test_examples=64",
        "eval_batch_size=32",
    ]
    sets = [a for kv in sets for a in ("--set", kv)]

    def train(workdir):
        return ["cli", "train", "--config", "lstm_sequences", "--workdir", str(workdir), *sets]

    coordinator = {"JAXRNN_COORDINATOR": f"localhost:{port}", "JAXRNN_NUM_PROCESSES": "2"}
    two, one = tmp_path / "two", tmp_path / "one"
    rows_two, rows_one = str(tmp_path / "rows_two"), str(tmp_path / "rows_one")
    _run_workers(
        [
            (train(two), _env(2, **coordinator, JAXRNN_PROCESS_ID=str(i), TEST_ROWS_LOG=rows_two))
            for i in range(2)
        ]
        + [(train(one) + ["--set", "data_shards=2"], _env(1, TEST_ROWS_LOG=rows_one))],
        timeout=240,
    )
    # Each of the two processes read only its half of the 160 training examples.
    assert Path(rows_two + ".0").read_text().split() == ["0", "80"]
    assert Path(rows_two + ".1").read_text().split() == ["80", "160"]
    assert Path(rows_one + ".0").read_text().split() == ["0", "160"]
    r2 = json.loads((two / "report.json").read_text())
    r1 = json.loads((one / "report.json").read_text())
    assert (r2["device_count"], r1["device_count"]) == (4, 1)
    for key in ("test_loss", "test_accuracy"):
        np.testing.assert_allclose(r2[key], r1[key], rtol=TOL, atol=TOL, err_msg=key)
    logs = [
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (two, one)
    ]
    assert len(logs[0]) == len(logs[1]) == 3  # train at 10 and 20, test at 20: process 0 only
    for a, b in zip(*logs, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=TOL, atol=TOL)

    _run_workers([(["cli", "eval-json", str(two), str(tmp_path / "eval.json")], _env(1))], 120)
    restored = json.loads((tmp_path / "eval.json").read_text())
    assert restored["steps"] == 20 and restored["device_count"] == 1
    np.testing.assert_allclose(restored["test_loss"], r2["test_loss"], rtol=TOL, atol=TOL)


# --------------------------------------------------------------------------- in-process


def test_check_global_batch_names_the_device_count():
    import jax

    from jaxrnn import parallel

    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    assert parallel.check_global_batch(6, mesh) == 6
    fake = type(mesh)(np.array(jax.devices()[:1] * 4).reshape(4, 1), mesh.axis_names)
    assert parallel.check_global_batch(12, fake) == 12
    with pytest.raises(ValueError, match=r"batch size 10 does not divide by the 4 .*8 or 12"):
        parallel.check_global_batch(10, fake)


def test_global_batch_and_replicate_single_process():
    import jax

    from jaxrnn import parallel

    mesh = parallel.make_mesh()
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    batch = parallel.global_batch({"x": x, "n": np.arange(4)}, mesh)
    assert batch["x"].sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(parallel.to_host(batch)["x"], x)
    block = parallel.global_batch({"x": np.stack([x, x + 1])}, mesh, axis=1)  # [steps, b, ...]
    assert block["x"].shape == (2, 4, 3) and block["x"].sharding.spec[1] == "data"
    np.testing.assert_array_equal(parallel.local_rows(np.stack([x, x]), mesh, axis=1)[1], x)
    with pytest.raises(ValueError, match="same batch size on axis 0"):
        parallel.global_batch({"x": x, "n": np.arange(3)}, mesh)
    tree = parallel.replicate({"w": jax.numpy.ones((2, 2))}, mesh)
    assert tree["w"].sharding.is_fully_replicated
    assert parallel.process_sum({"a": 3})["a"] == 3 and parallel.is_main_process()


def test_initialize_is_a_no_op_or_a_clear_error_without_a_cluster(monkeypatch):
    from jaxrnn import parallel

    for name in ("JAXRNN_COORDINATOR", "JAXRNN_NUM_PROCESSES", "JAXRNN_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JAXRNN_DISTRIBUTED", raising=False)
    assert parallel.initialize() is False
    assert parallel.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="number of processes"):
        parallel.initialize("localhost:1234")
    monkeypatch.setenv("JAXRNN_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="coordinator address"):
        parallel.initialize()
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        parallel.initialize("localhost:1234", process_id=2)
    monkeypatch.setenv("JAXRNN_DISTRIBUTED", "off")
    assert parallel.initialize() is False


if __name__ == "__main__":
    _worker(sys.argv[1:])
    print(json.dumps({"ok": True}))
