"""The non-finite guard with several steps per compiled call.

One training example is poisoned with NaN: over its valid steps (a NaN loss) or only past its
length (the loss stays finite, the weight gradient is NaN). The feed's order, replayed through
``TrainFeed``, says at which step it is first drawn; the run must stop there, name that step
although it lies inside a block, and keep only checkpoints from before it.
"""

import os
import re

import jax
import numpy as np
import pytest

from jaxrnn.cli import main
from jaxrnn.configs import apply_overrides, get_config
from jaxrnn.training import feed as feed_lib
from jaxrnn.training import loop
from jaxrnn.training.checkpointing import Checkpointer

EXAMPLES, BATCH, BLOCK = 1000, 16, 10  # an epoch of 62 steps: each row first drawn in it
SETTINGS = [
    "hidden_size=8",
    f"batch_size={BATCH}",
    "num_steps=60",
    f"steps_per_call={BLOCK}",
    "log_every=10",
    "eval_every=0",
    "checkpoint_every=20",
    "keep_checkpoints=5",
    f"train_examples={EXAMPLES}",
    "test_examples=64",
    "eval_batch_size=64",
]


def _first_draws(seed=0):
    """``{row: the first step (1-based) whose batch holds it}`` over the run's 60 steps."""
    index = {"index": np.arange(EXAMPLES)}
    feed = feed_lib.TrainFeed(index, num_examples=EXAMPLES, batch_size=BATCH, shards=1, seed=seed)
    first = {}
    for step in range(1, 61):
        for row in feed.next_local(1)["index"][0]:
            first.setdefault(int(row), step)
    return first


def _poison(monkeypatch, row, where):
    real = loop.load_split

    def load_split(config, split, *, rows=None, **kwargs):
        arrays = real(config, split, rows=rows, **kwargs)
        start = 0 if rows is None else rows[0]
        if split == "train" and 0 <= row - start < len(arrays["inputs"]):
            inputs = np.array(arrays["inputs"])
            length = arrays["lengths"][row - start]
            steps = slice(0, length) if where == "valid" else slice(length, None)
            inputs[row - start, steps] = np.nan
            arrays = {**arrays, "inputs": inputs}
        return arrays

    monkeypatch.setattr(loop, "load_split", load_split)


@pytest.mark.parametrize(
    "where, block",
    [("valid", 3), ("padding", 5)],
    ids=["nan_loss_in_block_3", "nan_gradient_finite_loss_in_block_5"],
)
def test_guard_names_the_step_inside_a_block_and_keeps_a_finite_checkpoint(
    where, block, tmp_path, monkeypatch, capsys
):
    """Block 3 (steps 21-30) is checked while block 4 runs, block 5 while the last one does:
    neither may let a checkpoint at 40 or 60 be written."""
    lo, hi = (block - 1) * BLOCK + 2, block * BLOCK - 1  # strictly inside the block
    config = apply_overrides(get_config("lstm_sequences"), SETTINGS)
    lengths = loop.load_split(config, "train")["lengths"]
    candidates = [
        (s, r)
        for r, s in _first_draws().items()
        if lo <= s <= hi and (where == "valid" or lengths[r] < lengths.max())
    ]
    bad_step, row = min(candidates)
    _poison(monkeypatch, row, where)
    workdir = tmp_path / "run"
    args = ["train", "--config", "lstm_sequences", "--workdir", str(workdir)]
    assert main(args + [a for s in SETTINGS for a in ("--set", s)]) == 1
    err = capsys.readouterr().err
    match = re.search(r"non-finite loss or gradient at step (\d+) \(loss (\S+)\);", err)
    assert match, err
    assert int(match.group(1)) == bad_step
    loss = float(match.group(2))
    assert np.isnan(loss) if where == "valid" else np.isfinite(loss)
    good = (block - 1) * BLOCK // 20 * 20  # the last checkpoint boundary before the block
    assert f"The last good checkpoint is step {good}." in err
    kept = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert kept[-1] == good, kept

    from jaxrnn.training import optimizers, steps
    from jaxrnn.training.loop import build_model, init_state, load_run

    _, config = load_run(str(workdir))
    model = build_model(config, {"labels": np.array([0, 1])})
    like = init_state(config, model, optimizers.from_config(config, 60), 1, steps.make_mesh())
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    state, data_state = checkpointer.restore(like, good)
    checkpointer.close()
    assert int(state.step) == good and data_state["batches"] == good
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        assert np.isfinite(np.asarray(leaf)).all()
