"""The model and the train state that a config describes.

:func:`build_model` reads the class count off the labels (a regression has one output);
:func:`model_of` maps the config's fields onto :class:`jaxrnn.models.Model`; :func:`init_state`
makes the state at step 0 from the config's seed, laid out over the mesh.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxrnn import parallel
from jaxrnn.cells import check_floating
from jaxrnn.configs.base import Config
from jaxrnn.models import CELL_OPTIONS, Model
from jaxrnn.options import IMPLEMENTATIONS
from jaxrnn.training import state as state_lib


def build_model(config: Config, train: dict, test: dict | None = None) -> Model:
    """The :class:`Model` of ``config``; the class count comes from the labels.

    ``train`` may be this process's shard only: the largest label is taken over every process.
    """
    if "labels" in train:
        seen = [train["labels"]] + ([test["labels"]] if test is not None else [])
        largest = max(int(a.max()) if a.size else -1 for a in seen)
        task, outputs = "classification", int(parallel.process_max(np.int64(largest))) + 1
    else:
        task, outputs = "regression", 1
    return model_of(config, task, outputs)


def model_of(config: Config, task: str, outputs: int, vocab_size: int = 0) -> Model:
    """The :class:`Model` of ``config`` for ``task`` with ``outputs`` outputs (``vocab_size``:
    int token inputs, one-hot encoded). ``config.cell`` is a registered cell's name
    (:mod:`jaxrnn.cells.registry`), whose module must have been imported."""
    return Model(
        cell=config.cell,
        hidden_size=config.hidden_size,
        num_outputs=outputs,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        readout=config.readout,
        task=task,
        masked=config.masked and not vocab_size,
        vocab_size=vocab_size,
        dropout=config.dropout,
        input_dropout=config.input_dropout,
        recurrent_dropout=config.recurrent_dropout,
        head_init=config.head_init,
        unroll=config.unroll,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        implementation=implementation_of(config),
        **{name: getattr(config, name) for name in CELL_OPTIONS},
    )


def check_dtypes(config: Config) -> None:
    for name in ("dtype", "param_dtype"):
        value = getattr(config, name)
        try:
            check_floating(value, name)
        except TypeError as error:
            raise ValueError(f"--set {name}={value}: {error}") from None


def implementation_of(config: Config) -> str | None:
    choices = ("auto", *(name for name in IMPLEMENTATIONS if name is not None))
    if config.implementation not in choices:
        raise ValueError(f"implementation must be one of {choices}, got {config.implementation!r}")
    return None if config.implementation == "auto" else config.implementation


def total_steps(config: Config, num_train: int) -> int:
    if config.num_steps > 0:
        return config.num_steps
    if config.num_epochs <= 0:
        raise ValueError("set num_steps or num_epochs to a positive number")
    return config.num_epochs * (num_train // config.batch_size)


def init_state(config: Config, model: Model, tx, input_size: int, mesh):
    """The state at step 0: parameters and optimizer state replicated over ``mesh``; with
    ``config.stateful`` a zero carry of ``batch_size`` rows, split over ``data`` as a batch."""
    key = jax.random.key(config.seed)
    k_params, k_train = jax.random.split(key)
    state = parallel.replicate(
        state_lib.create(model.init(k_params, input_size), tx, k_train), mesh
    )
    if config.stateful:
        carry = jax.tree.map(np.asarray, model.initial_carry(config.batch_size))
        state = state._replace(carry=parallel.global_batch(parallel.local_rows(carry, mesh), mesh))
    return state
