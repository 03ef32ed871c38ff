"""The char_lm config and stateful training over text streams: the batches hand their carry
on in order (one long run cut into windows, gradients truncated at the windows), a tiny model
learns below the unigram model, a run killed mid-stream resumes bitwise, ``jaxrnn sample``
and the errors of bad settings and options."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _sigkill import kill_after_checkpoint

from jaxrnn import configs
from jaxrnn.cli import main
from jaxrnn.configs import char_lm as char_lm_config
from jaxrnn.data import text
from jaxrnn.models import Model
from jaxrnn.training import optimizers, steps, streams
from jaxrnn.training import state as state_lib
from jaxrnn.training import workdir as workdir_lib
from jaxrnn.training.checkpointing import Checkpointer
from jaxrnn.training.loop import init_state, load_run, make_task, read_metrics, total_steps
from jaxrnn.training.sampling import sample_workdir

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Seconds on a 2-core CPU: 300 steps of an LSTM 32, scored on the first 5,000 held-out
# characters read as one stream.
TINY = [
    "hidden_size=32",
    "batch_size=16",
    "window=50",
    "num_steps=300",
    "steps_per_call=50",
    "log_every=50",
    "eval_every=150",
    "checkpoint_every=300",
    "test_examples=100",
    "learning_rate=0.01",
    "schedule=constant",
]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def test_stateful_steps_continue_one_long_run():
    """Window after window with the carry handed on equals one run over each whole stream;
    the second pass starts from zeros again; each step's gradient stops at its window."""
    train, _ = text.load_text("shakespeare")
    vocab = text.Vocabulary.from_text(train)
    streams_, window, per = 4, 5, 3
    ids = vocab.encode(train[1000 : 1000 + streams_ * per * window + 1])
    feed = streams.StreamFeed(ids, batch_size=streams_, window=window)
    assert feed.batches_per_pass == per

    model = Model("lstm", 6, vocab.size, readout="sequence", masked=False, vocab_size=vocab.size)
    params = model.init(jax.random.key(0), vocab.size)
    tx = optax.sgd(0.0)  # the parameters stay put: every step sees the same model
    start = jax.tree.map(jnp.copy, params)  # the train block donates its state
    state = state_lib.create(start, tx, jax.random.key(1), carry=model.initial_carry(streams_))
    mesh = steps.make_mesh()
    state, metrics = steps.make_train_block(model, tx)(state, feed.next_block(2 * per, mesh))

    inputs, targets = text.streams(ids, streams_, window)
    logits, carries = model.apply(params, inputs, return_carry=True)
    ce = _cross_entropy(logits, targets)
    want = [float(ce[:, w * window : (w + 1) * window].mean()) for w in range(per)] * 2
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    for got, ref in zip(jax.tree.leaves(state.carry), jax.tree.leaves(carries), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

    # Step 1 differentiates its own window only, from the carry after window 0 as a constant.
    _, carry0 = model.apply(params, inputs[:, :window], return_carry=True)

    def window_loss(p, carry):
        out = model.apply(p, inputs[:, window : 2 * window], initial_carry=carry)
        return _cross_entropy(out, targets[:, window : 2 * window]).mean()

    truncated = optax.tree.norm(jax.grad(window_loss)(params, carry0))
    np.testing.assert_allclose(metrics["grad_norm"][1], truncated, rtol=1e-5)

    def through(p):  # the same loss with the gradient flowing back into window 0
        return window_loss(p, model.apply(p, inputs[:, :window], return_carry=True)[1])

    full = optax.tree.norm(jax.grad(through)(params))
    assert abs(float(full) - float(truncated)) > 1e-4 * float(truncated)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny char_lm run, trained once for the tests that read it."""
    workdir = str(tmp_path_factory.mktemp("char_lm") / "run")
    code = main(["train", "--config", "char_lm", "--workdir", workdir] + _sets(TINY))
    assert code == 0
    return workdir


def test_char_lm_learns_below_the_unigram_model(tiny_run):
    report = json.load(open(os.path.join(tiny_run, "report.json")))
    assert report["vocab_size"] == 65 and report["test_examples"] == 5000
    train, held_out = text.load_text("shakespeare")
    vocab = text.Vocabulary.from_text(train)
    unigram = text.unigram_bits(vocab.encode(train), vocab.encode(held_out[:5001]), vocab.size)
    assert report["unigram_bpc"] == pytest.approx(unigram, rel=1e-12)
    assert report["test_bpc"] == pytest.approx(report["test_loss"] / np.log(2), rel=1e-9)
    # Measured 3.49 bits against the unigram model's 4.82 (2-core x86-64).
    assert report["test_bpc"] < report["unigram_bpc"] - 0.8
    rows = read_metrics(tiny_run)
    train_loss = [r["loss"] for r in rows if r["split"] == "train"]
    assert train_loss[-1] / np.log(2) < report["unigram_bpc"] - 0.8 < train_loss[0] / np.log(2)
    tests = [r for r in rows if r["split"] == "test"]
    assert [r["step"] for r in tests] == [150, 300]
    assert tests[-1]["bpc"] == pytest.approx(report["test_bpc"])
    # The carry is checkpointed, as an item of its own.
    items = os.listdir(os.path.join(tiny_run, "checkpoints", "300"))
    assert {"state", "data", "carry"} <= set(items)


def test_held_out_score_is_one_run_over_the_text(tiny_run):
    """eval's bits per character: the held-out text read in windows with the carry kept
    equals one run over it (one stream), and two streams score their halves apart."""
    _, config = load_run(tiny_run)
    mesh = steps.make_mesh()
    task = make_task(config, mesh, shards=1, with_feed=False)
    like = init_state(config, task.model, optimizers.from_config(config, 300), 65, mesh)
    checkpointer = Checkpointer(os.path.join(tiny_run, "checkpoints"), read_only=True)
    state, _ = checkpointer.restore(like)
    checkpointer.close()
    ids = streams.load(config).held_out_ids[:1201]
    for count in (1, 2):
        windows = text.held_out_windows(ids, count, config.window)
        loss_sum, _, total = steps.make_stream_eval(task.model)(state.params, windows)
        assert total == 1200
        half = 1200 // count
        ce = [
            _cross_entropy(
                task.model.apply(state.params, ids[None, s * half : (s + 1) * half]),
                ids[None, s * half + 1 : (s + 1) * half + 1],
            ).sum()
            for s in range(count)
        ]
        np.testing.assert_allclose(loss_sum, sum(ce), rtol=1e-5)
    # Without the carry (a model trained with stateful=false) each window starts from zeros.
    windows = text.held_out_windows(ids, 1, config.window)
    loss_sum, _, _ = steps.make_stream_eval(task.model, stateful=False)(state.params, windows)
    k = config.window
    ce = [
        _cross_entropy(
            task.model.apply(state.params, ids[None, i : i + k]), ids[None, i + 1 : i + k + 1]
        ).sum()
        for i in range(0, 1200, k)
    ]
    np.testing.assert_allclose(loss_sum, sum(ce), rtol=1e-5)


def test_a_run_without_the_carry_keeps_the_old_checkpoint_layout(tmp_path, capsys):
    workdir = str(tmp_path / "stateless")
    overrides = TINY + ["stateful=false", "num_steps=100", "checkpoint_every=100"]
    assert main(["train", "--config", "char_lm", "--workdir", workdir] + _sets(overrides)) == 0
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["test_bpc"] < report["unigram_bpc"]
    items = set(os.listdir(os.path.join(workdir, "checkpoints", "100")))
    assert {"state", "data"} <= items and "carry" not in items
    capsys.readouterr()
    assert main(["eval", "--workdir", workdir]) == 0
    assert f"test_bpc={report['test_bpc']:.4f}" in capsys.readouterr().out


def test_sample_draws_text_of_the_vocabulary_and_repeats_for_a_seed(tiny_run, capsys):
    train, _ = text.load_text("shakespeare")
    chars = set(train)
    first = sample_workdir(tiny_run, length=300, seed=0)
    assert len(first) == 300 and set(first) <= chars
    assert sample_workdir(tiny_run, length=300, seed=0) == first
    assert sample_workdir(tiny_run, length=300, seed=1) != first
    greedy = sample_workdir(tiny_run, length=80, temperature=0.0, seed=0, prompt="MACBETH:")
    assert sample_workdir(tiny_run, length=80, temperature=0.0, seed=5, prompt="MACBETH:") == (
        greedy
    )
    cooler = sample_workdir(tiny_run, length=80, temperature=0.5, seed=0, prompt="MACBETH:")
    assert cooler != greedy and len(cooler) == 80

    capsys.readouterr()
    args = ["sample", "--workdir", tiny_run, "--length", "40", "--seed", "3", "--prompt", "KING:"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out == "KING:" + sample_workdir(tiny_run, length=40, seed=3, prompt="KING:") + "\n"


@pytest.mark.parametrize(
    "options,message",
    [
        (["--length", "0"], "--length must be >= 1, got 0"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0, got -1.0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
    ],
)
def test_sample_refuses_bad_options(options, message, tiny_run, capsys):
    assert main(["sample", "--workdir", tiny_run] + options) == 2
    assert message in capsys.readouterr().err


def test_sample_refuses_other_runs_and_empty_directories(tmp_path, capsys):
    run = str(tmp_path / "seq")
    workdir_lib.prepare(run, "lstm_sequences", configs.get_config("lstm_sequences"), False, True)
    assert main(["sample", "--workdir", run]) == 2
    err = capsys.readouterr().err
    assert "config 'lstm_sequences' on dataset 'linear_vs_random'" in err
    assert "needs one on a text dataset (shakespeare)" in err
    assert main(["sample", "--workdir", str(tmp_path / "nothing")]) == 2
    assert "holds no run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config,override,message",
    [
        ("char_lm", "readout=last", "set readout=sequence, got 'last'"),
        ("char_lm", "bidirectional=true", "bidirectional must be false"),
        ("char_lm", "window=0", "window must be >= 1, got 0"),
        ("char_lm", "train_examples=10", "batch_size 32 exceeds the 10 examples"),
        ("lstm_sequences", "stateful=true", "dataset 'linear_vs_random' has none"),
        ("lstm_sequences", "readout=sequence", "readout='sequence' needs a label per step"),
    ],
)
def test_settings_a_text_run_cannot_take_are_errors(config, override, message, tmp_path, capsys):
    args = ["train", "--config", config, "--workdir", str(tmp_path / "run"), "--set", override]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    if "train_examples" not in override:  # refused before the work directory is touched
        assert not os.path.exists(tmp_path / "run")


# 31 windows per stream: no checkpoint before step 1240 falls on a pass's end, so the kill
# lands mid-stream, with a carry that the resumed run must take from the checkpoint.
RESUME = [
    "hidden_size=8",
    "batch_size=8",
    "window=10",
    "train_examples=248",
    "test_examples=20",
    "eval_batch_size=2",
    "num_steps=1200",
    "steps_per_call=20",
    "checkpoint_every=40",
    "keep_checkpoints=3",
    "log_every=40",
    "eval_every=400",
]


def _train_cli(workdir):
    cmd = [sys.executable, "-m", "jaxrnn", "train", "--config", "char_lm"]
    return cmd + ["--workdir", str(workdir)] + _sets(RESUME)


def _final_state(workdir):
    _, config = load_run(str(workdir))
    mesh = steps.make_mesh()
    task = make_task(config, mesh, shards=1, with_feed=False)
    tx = optimizers.from_config(config, total_steps(config, task.num_train))
    like = init_state(config, task.model, tx, task.input_size, mesh)
    checkpointer = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    assert checkpointer.latest_step() == 1200
    state, data_state = checkpointer.restore(like)
    checkpointer.close()
    return state, data_state


@pytest.mark.slow
def test_resume_after_sigkill_mid_stream_is_exact(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    quiet = {"env": env, "cwd": ROOT, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(_train_cli(killed), **quiet)
    other = subprocess.Popen(_train_cli(straight), **quiet)
    partial = kill_after_checkpoint(proc, killed / "checkpoints", 120)
    assert 0 < partial < 1200 and partial % 31
    resumed = subprocess.run(_train_cli(killed), env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from the checkpoint at step {partial}" in resumed.stdout
    assert other.wait() == 0, other.stderr.read()

    a, data_a = _final_state(killed)
    b, data_b = _final_state(straight)
    assert (
        data_a
        == data_b
        == {
            "batches": 1200,
            "streams": 8,
            "num_examples": 248,
            "batch_size": 8,
            "window": 10,
        }
    )
    assert a.carry is not None
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    logged = [r["step"] for r in read_metrics(str(killed)) if r["split"] == "train"]
    assert logged == sorted(set(logged))
    assert json.load(open(killed / "report.json"))["resumed_from"] == partial


def test_config_docstring_states_the_committed_figures():
    doc = " ".join(char_lm_config.__doc__.split())
    results = json.load(open(os.path.join(ROOT, "benchmarks", "results", "char_lm.json")))
    report = results["report"]
    assert f"held-out (Macbeth) {report['test_bpc']:.3f} bits per character" in doc
    assert f"accuracy {report['test_accuracy']:.3f}" in doc
    assert f"scores {report['unigram_bpc']:.3f} on the same play" in doc
    assert f"{report['steps']} steps took {report['train_time_s'] / 60:.1f} minutes" in doc
    assert results["config"] == configs.get_config("char_lm").to_dict()
