"""Real short runs through the CLI: every config learns, resume after SIGKILL is exact,
non-finite losses stop the run, workdirs of other runs are refused, plots are written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _sigkill import kill_after_checkpoint

from jaxrnn import configs
from jaxrnn.cli import main
from jaxrnn.training.checkpointing import Checkpointer
from jaxrnn.training.loop import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _train_losses(workdir):
    return [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]


@pytest.mark.parametrize("name", configs.NAMES)
def test_every_config_runs_and_learns(name, tiny, tmp_path, capsys):
    workdir = str(tmp_path / name)
    overrides = tiny + ["num_steps=100", "learning_rate=0.01"]
    args = ["train", "--config", name, "--workdir", workdir]
    assert main(args + sum((["--set", o] for o in overrides), [])) == 0
    report = json.load(open(os.path.join(workdir, "report.json")))
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"test_accuracy={report['test_accuracy']:.4f}" in last_line
    assert report["device_count"] >= 1 and report["steps"] == 100
    losses = _train_losses(workdir)
    assert len(losses) == 5
    assert losses[-1] < 0.9 * losses[0], losses
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "80"]
    assert os.listdir(os.path.join(workdir, "tb"))


def _cli(workdir, *overrides):
    cmd = [sys.executable, "-m", "jaxrnn", "train", "--config", "lstm_sequences"]
    cmd += ["--workdir", str(workdir)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _final_params(workdir, steps):
    from jaxrnn.training import optimizers
    from jaxrnn.training import steps as steps_lib
    from jaxrnn.training.loop import build_model, init_state, load_run, load_split

    _, config = load_run(str(workdir))
    train = load_split(config, "train")
    model = build_model(config, train)
    tx = optimizers.from_config(config, steps)
    like = init_state(config, model, tx, 1, steps_lib.make_mesh())
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == steps
    state, data_state = ckpt.restore(like)
    ckpt.close()
    return state, data_state


# Two layers, so that every dropout acts (between layers too): each step draws its masks from
# fold_in(key, step), so a resumed run must draw exactly the masks of an uninterrupted one.
ALL_DROPOUTS = ["num_layers=2", "dropout=0.3", "input_dropout=0.2", "recurrent_dropout=0.2"]


BFLOAT16 = ["dtype=bfloat16", "param_dtype=bfloat16"]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    """Every dropout on and bfloat16 parameters and computation, in one run: the resumed run
    must draw the masks of an uninterrupted one and restore bfloat16 leaves bit for bit (a
    run without dropout in float32 resumes through the same path, less the keys and casts)."""
    settings = (
        ALL_DROPOUTS
        + BFLOAT16
        + [
            "hidden_size=8",
            "batch_size=8",
            "num_steps=1600",
            "steps_per_call=40",
            "checkpoint_every=80",
            "keep_checkpoints=3",
            "log_every=40",
            "train_examples=300",
            "test_examples=64",
            "eval_every=400",
        ]
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(killed, *settings),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    partial = kill_after_checkpoint(proc, killed / "checkpoints", 160)
    assert partial < 1600
    resumed = subprocess.run(
        _cli(killed, *settings), env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint at step" in resumed.stdout

    straight = tmp_path / "straight"
    done = subprocess.run(
        _cli(straight, *settings), env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr

    a, data_a = _final_params(killed, 1600)
    b, data_b = _final_params(straight, 1600)
    assert data_a == data_b
    assert {str(leaf.dtype) for leaf in __import__("jax").tree.leaves(a.params)} == {"bfloat16"}
    for x, y in zip(
        __import__("jax").tree.leaves(a), __import__("jax").tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps_logged = [r["step"] for r in read_metrics(str(killed)) if r["split"] == "train"]
    assert steps_logged == sorted(set(steps_logged))  # no duplicates after the resume


def test_non_finite_loss_stops_with_step_and_keeps_good_checkpoint(tiny, tmp_path, capsys):
    workdir = str(tmp_path / "nan")
    overrides = tiny + [
        "cell=rnn",
        "activation=relu",
        "optimizer=sgd",
        "learning_rate=1e30",
        "steps_per_call=1",
        "checkpoint_every=1",
        "num_steps=50",
    ]
    code = main(
        ["train", "--config", "lstm_sequences", "--workdir", workdir]
        + sum((["--set", o] for o in overrides), [])
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss or gradient at step" in err
    bad_step = int(err.split("at step ")[1].split()[0].rstrip(";"))
    kept = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    assert kept and max(kept) < bad_step


def test_workdir_of_another_run_is_refused_and_eval_plot_work(tiny, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    base = ["train", "--config", "lstm_sequences", "--workdir", workdir]
    sets = sum((["--set", o] for o in tiny), [])
    assert main(base + sets) == 0
    report = json.load(open(os.path.join(workdir, "report.json")))
    capsys.readouterr()
    assert main(base + sets) == 0  # a finished run: evaluated again, its times kept
    again = json.load(open(os.path.join(workdir, "report.json")))
    assert again["train_time_s"] == report["train_time_s"]
    assert again["test_accuracy"] == report["test_accuracy"]
    tests = [r for r in read_metrics(workdir) if r["split"] == "test"]
    assert [r["step"] for r in tests] == [60]
    capsys.readouterr()
    assert main(base + sets + ["--set", "hidden_size=4"]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert (
        main(["train", "--config", "lstm_sequences", "--workdir", workdir, "--set", "nonsense=1"])
        == 2
    )
    assert "unknown config key 'nonsense'" in capsys.readouterr().err
    assert main(["eval", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert f"test_accuracy={report['test_accuracy']:.4f}" in out
    assert main(["plot", "--workdir", workdir]) == 0
    png = os.path.join(workdir, "curves.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(base + sets + ["--set", "hidden_size=4", "--overwrite"]) == 0
