"""Training: train state, optimizers, jitted steps, checkpoints, the loop, sampling and plots.

Needs the ``train`` extra: ``pip install "jaxrnn[train]"``.
"""

from jaxrnn import _extras

with _extras.requires("train", __name__):
    from jaxrnn.training.loop import NonFiniteError, WorkdirError, evaluate_workdir, train
    from jaxrnn.training.optimizers import make_optimizer
    from jaxrnn.training.sampling import sample_workdir
    from jaxrnn.training.state import TrainState

__all__ = [
    "NonFiniteError",
    "TrainState",
    "WorkdirError",
    "evaluate_workdir",
    "make_optimizer",
    "sample_workdir",
    "train",
]
