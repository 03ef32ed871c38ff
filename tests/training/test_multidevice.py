"""``jaxrnn train`` itself on 4 simulated CPU devices against 1 device: the same logged losses
and final parameters (1e-5) after 200 steps.

Each run is a subprocess, since the device count is fixed when JAX starts. Over thousands of
steps the toy task amplifies the reduction-order rounding of the gradient all-reduce, so the
comparison stops at 200.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrnn.training import optimizers, steps
from jaxrnn.training.checkpointing import Checkpointer
from jaxrnn.training.loop import build_model, init_state, load_run, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 200
SETTINGS = [
    "hidden_size=8",
    "batch_size=16",
    f"num_steps={STEPS}",
    "steps_per_call=20",
    "log_every=1",
    "eval_every=100",
    f"checkpoint_every={STEPS}",
    "train_examples=400",
    "test_examples=64",
    "eval_batch_size=32",
]


def _train(workdir, devices):
    cmd = [sys.executable, "-m", "jaxrnn", "train", "--config", "lstm_sequences"]
    cmd += ["--workdir", str(workdir)] + [a for s in SETTINGS for a in ("--set", s)]
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _final_params(workdir):
    _, config = load_run(str(workdir))
    model = build_model(config, {"labels": np.array([0, 1])})
    like = init_state(config, model, optimizers.from_config(config, STEPS), 1, steps.make_mesh())
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    state, _ = checkpointer.restore(like, STEPS)
    checkpointer.close()
    return state


@pytest.mark.slow
def test_four_devices_train_like_one(tmp_path):
    runs = {n: _train(tmp_path / f"devices{n}", n) for n in (1, 4)}
    for n, proc in runs.items():
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
        assert f"devices={n}" in out.strip().splitlines()[-1], out

    logs = {n: read_metrics(str(tmp_path / f"devices{n}")) for n in runs}
    for split in ("train", "test"):
        one, four = ([r for r in logs[n] if r["split"] == split] for n in (1, 4))
        assert [r["step"] for r in one] == [r["step"] for r in four]
        assert len(one) == (STEPS if split == "train" else 2)
        for key in ("loss", "accuracy"):
            np.testing.assert_allclose(
                [r[key] for r in four], [r[key] for r in one], rtol=1e-5, atol=1e-5, err_msg=key
            )
    one, four = (_final_params(tmp_path / f"devices{n}") for n in runs)
    assert int(one.step) == int(four.step) == STEPS
    moved = False
    for a, b, start in zip(
        jax.tree.leaves(four.params),
        jax.tree.leaves(one.params),
        jax.tree.leaves(_initial_params(tmp_path / "devices1")),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        moved |= not np.allclose(np.asarray(b), np.asarray(start), atol=1e-3)
    assert moved, "training did not change the parameters"


def _initial_params(workdir):
    _, config = load_run(str(workdir))
    model = build_model(config, {"labels": np.array([0, 1])})
    return init_state(
        config, model, optimizers.from_config(config, STEPS), 1, steps.make_mesh()
    ).params
