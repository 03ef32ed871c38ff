"""Every script in examples/ runs, small, and what it reports is right."""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str):
        return importlib.import_module(name)

    return load


def test_every_example_is_tested():
    tested = {
        "train_variable_length",
        "nnx_model",
        "torch_lstm",
        "bidirectional_tagging",
        "recurrent_policy",
    }
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == tested


def test_train_variable_length(example):
    result = example("train_variable_length").main(small=True)
    assert result["last_loss"] < 0.85 * result["first_loss"]
    assert result["test_accuracy"] > 0.65  # chance is 0.5


def test_nnx_model(example):
    result = example("nnx_model").main(small=True)
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["test_accuracy"] > 0.8


def test_bidirectional_tagging(example):
    result = example("bidirectional_tagging").main(small=True)["bidirectional"]
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["test_accuracy"] > 0.85


def test_recurrent_policy(example):
    result = example("recurrent_policy").main(small=True)
    # One rnn call with resets gives the log-probs of the step-by-step rollout, in every update
    # of training and for the trained policy...
    assert result["train_logp_gap"] < 1e-4
    assert result["logp_gap_with_resets"] < 1e-4
    # ...and without resets it agrees only until the first episode ends.
    assert result["no_resets_gap_before_end"] < 1e-4
    assert result["no_resets_gap_after_end"] > 0.5
    assert result["no_resets_steps_off"] > 0.3
    # The memory task is learnt: chance is 0.5, which is where the policy starts.
    assert result["first_success"] < 0.65
    assert result["last_success"] > 0.85
    assert result["greedy_success"] > 0.9


def test_torch_lstm_against_stored_pytorch_outputs(example):
    result = example("torch_lstm").main(use_torch=False)
    assert not result["used_torch"]
    assert max(result["ys"], result["h_n"], result["c_n"]) < 1e-5


def test_examples_run_as_scripts():
    """The command line entry and the small-size switch (the fastest example)."""
    env = {**os.environ, "JAXRNN_EXAMPLE_SMALL": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "torch_lstm.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "jaxrnn computes the PyTorch LSTM's outputs" in done.stdout
