import os

import pytest

_SHARED_MNIST = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "shared", "data", "mnist"
)


@pytest.fixture(autouse=True)
def _offline_mnist(monkeypatch):
    """The offline copy next to the repository (../shared/data/mnist), else tfds downloads.

    Set per test (and so inherited by the runs' subprocesses), never for the whole session:
    the data tests check how the MNIST source is chosen and must not see it.
    """
    if "JAXRNN_MNIST_DIR" not in os.environ and os.path.isdir(_SHARED_MNIST):
        monkeypatch.setenv("JAXRNN_MNIST_DIR", os.path.abspath(_SHARED_MNIST))


@pytest.fixture
def tiny():
    """Overrides that make any config a seconds-long run."""
    return [
        "hidden_size=8",
        "batch_size=16",
        "num_steps=60",
        "num_epochs=0",
        "steps_per_call=20",
        "log_every=20",
        "eval_every=0",
        "checkpoint_every=40",
        "train_examples=400",
        "test_examples=100",
        "eval_batch_size=64",
    ]
