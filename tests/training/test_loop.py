"""The train loop's steps: an ordinary exception mid-run releases every resource and leaves a
run that resumes exactly; a run checks its config once and encodes its text once."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import pytest

from jaxrnn.configs import apply_overrides, get_config
from jaxrnn.data import text
from jaxrnn.training import lock, loop, optimizers, runlog, steps, streams
from jaxrnn.training.checkpointing import Checkpointer


def _quiet(*args, **kwargs) -> None:
    pass


def _state_like(config):
    """A train state of ``config``'s layout, to restore checkpoints into."""
    mesh = steps.make_mesh()
    task = loop.make_task(config, mesh, shards=1, with_feed=False)
    tx = optimizers.from_config(config, loop.total_steps(config, task.num_train))
    return loop.init_state(config, task.model, tx, task.input_size, mesh)


def _latest_checkpoint(run: str, like):
    """``(state, data_state)`` of the latest checkpoint in ``run``."""
    checkpointer = Checkpointer(os.path.join(run, "checkpoints"), read_only=True)
    state, data_state = checkpointer.restore(like)
    checkpointer.close()
    return state, data_state


def _opened(monkeypatch) -> dict[str, Any]:
    """The run logs, checkpointers and progress bars the loop opens, each recorded; while
    ``opened["fail_after_save"]`` is ``n``, a checkpointer raises ``RuntimeError`` once its
    ``n``-th save is under way (orbax writes it in the background)."""
    opened: dict[str, Any] = {"log": [], "checkpointer": [], "bar": [], "fail_after_save": 0}

    class Log(runlog.RunLog):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened["log"].append(self)

    class Failing(Checkpointer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.saves = 0
            opened["checkpointer"].append(self)

        def save(self, state, data_state) -> None:
            super().save(state, data_state)
            self.saves += 1
            if self.saves == opened["fail_after_save"]:
                raise RuntimeError("the disk is full")

    class Bar(loop.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.was_closed = False
            opened["bar"].append(self)

        def close(self):
            self.was_closed = True
            super().close()

    monkeypatch.setattr(runlog, "RunLog", Log)
    monkeypatch.setattr(loop, "Checkpointer", Failing)
    monkeypatch.setattr(loop, "tqdm", Bar)
    return opened


def _count_calls(monkeypatch, owner, name: str, counts: dict) -> None:
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def test_an_exception_mid_run_releases_everything_and_the_run_resumes_exactly(
    tiny, tmp_path, monkeypatch, event_files
):
    """The run raises just after handing its checkpoint at step 40 to orbax: the error
    propagates; the log, the checkpointer and the bar are closed, the directory is free, the
    checkpoint complete; a rerun resumes from it and ends as an uninterrupted run."""
    config = apply_overrides(get_config("lstm_sequences"), tiny + ["checkpoint_every=20"])
    failed, straight = str(tmp_path / "failed"), str(tmp_path / "straight")
    opened = _opened(monkeypatch)
    opened["fail_after_save"] = 2
    counts: dict[str, int] = {}
    _count_calls(monkeypatch, streams, "check_config", counts)
    with pytest.raises(RuntimeError, match="the disk is full"):
        loop.train(config, failed, name="lstm_sequences", print_fn=_quiet)

    assert counts["check_config"] == 1
    (log,), (checkpointer,), (bar,) = opened["log"], opened["checkpointer"], opened["bar"]
    assert log.closed and checkpointer.closed and bar.was_closed
    assert [(r["step"], r["split"]) for r in loop.read_metrics(failed)] == [
        (20, "train"),
        (40, "train"),
    ]
    (events,) = event_files(failed)  # written out by the log's close
    assert (40, "train/loss") in [(e.step, v.tag) for e in events for v in e.summary.value]
    assert sorted(os.listdir(os.path.join(failed, "checkpoints"))) == ["20", "40"]
    like = _state_like(config)
    state, data_state = _latest_checkpoint(failed, like)  # the save under way, completed
    assert int(state.step) == 40 and data_state["batches"] == 40
    held = lock.acquire(failed, "train")  # the directory is free
    assert held is not None
    held.release()

    opened["fail_after_save"] = 0
    resumed = loop.train(config, failed, name="lstm_sequences", print_fn=_quiet)
    alone = loop.train(config, straight, name="lstm_sequences", print_fn=_quiet)
    assert resumed["resumed_from"] == 40 and alone["resumed_from"] == 0
    assert resumed["test_loss"] == alone["test_loss"]
    (a, data_a), (b, data_b) = _latest_checkpoint(failed, like), _latest_checkpoint(straight, like)
    assert data_a == data_b and data_a["batches"] == 60
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert loop.read_metrics(failed) == loop.read_metrics(straight)
    assert all(log.closed for log in opened["log"])
    assert all(c.closed for c in opened["checkpointer"])


def test_a_text_run_checks_its_config_once_and_encodes_its_corpus_once(tmp_path, monkeypatch):
    counts: dict[str, int] = {}
    _count_calls(monkeypatch, streams, "check_config", counts)
    _count_calls(monkeypatch, text.Vocabulary, "encode", counts)
    settings = [
        "hidden_size=8",
        "batch_size=8",
        "window=10",
        "train_examples=248",
        "test_examples=20",
        "eval_batch_size=2",
        "num_steps=20",
        "steps_per_call=20",
        "checkpoint_every=20",
        "log_every=20",
    ]
    config = apply_overrides(get_config("char_lm"), settings)
    report = loop.train(config, str(tmp_path / "run"), name="char_lm", print_fn=_quiet)
    assert report["steps"] == 20 and report["test_examples"] == 200
    assert counts == {"check_config": 1, "encode": 2}  # the train part and the held-out part
