"""Orbax checkpoints of the train state and the data iterator, keeping the last ``K``.

Each checkpoint is a step directory under ``checkpoints/`` with two items: ``state`` (the
:class:`TrainState` arrays but the carry) and ``data`` (the iterator's JSON state); a stateful
run's checkpoints have a third, ``carry`` (``TrainState.carry``), so that the checkpoints of
other runs keep the layout they have always had. Orbax writes into a
temporary directory and renames it when complete, so a run killed mid-save leaves the previous
checkpoints intact and the partial one is never restored.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from jaxrnn.training.state import TrainState

_ITEMS = ("state", "data", "carry")


class _Saved(NamedTuple):
    """The ``state`` item: :class:`TrainState` without its carry."""

    step: Any
    params: Any
    opt_state: Any
    key: Any


def _saved(state: TrainState) -> _Saved:
    return _Saved(state.step, state.params, state.opt_state, state.key)


class Checkpointer:
    """Save and restore ``(TrainState, data_state)`` pairs in ``directory``."""

    def __init__(self, directory: str, keep: int = 2, *, read_only: bool = False):
        """``keep`` checkpoints are kept; ``read_only`` only restores (creates, saves, cleans
        up and removes nothing: a reader beside a writer leaves its half-written saves alone)."""
        # Orbax writes URIs (gs://bucket/run) itself; only local paths are made absolute.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max(int(keep), 1), create=True, cleanup_tmp_directories=True
            )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
        self._closed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState, data_state: dict) -> None:
        """Save at ``state.step`` (asynchronously; :meth:`wait` or :meth:`close` to finish)."""
        step = int(jax.device_get(state.step))
        items = {
            "state": ocp.args.StandardSave(_saved(state)),
            "data": ocp.args.JsonSave(data_state),
        }
        if state.carry is not None:
            items["carry"] = ocp.args.StandardSave(state.carry)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """The checkpoint at ``step`` (default: latest), laid out like ``like`` (its carry
        too, unless ``like.carry`` is ``None``)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")

        def abstract(tree):
            return ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, tree))

        items = {"state": abstract(_saved(like)), "data": ocp.args.JsonRestore()}
        if like.carry is not None:
            items["carry"] = abstract(like.carry)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        carry = restored["carry"] if like.carry is not None else None
        step_, params, opt_state, key = restored["state"]
        return TrainState(step_, params, opt_state, key, carry), restored["data"]

    def wait(self) -> None:
        """Return once every save has been written."""
        self._manager.wait_until_finished()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Finish every save, then release the manager; closing again does nothing."""
        if self._closed:
            return
        self._manager.wait_until_finished()
        self._manager.close()
        self._closed = True
