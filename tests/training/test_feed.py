"""Training input: per-process shards, the batch order of (seed, shards), exact positions.

The one-shard order must stay ``BatchIterator(range(N), B, seed=seed)``'s (what jaxrnn 0.1
trained with, and what the tutorials' published accuracies come from): checked batch by batch
here and, through a real ``train`` run, parameter by parameter.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxrnn import parallel
from jaxrnn.configs import get_config
from jaxrnn.data import BatchIterator, load
from jaxrnn.training import feed as feed_lib
from jaxrnn.training import loop, optimizers, steps
from jaxrnn.training.checkpointing import Checkpointer


def _arrays(n=103):
    ids = np.arange(n)
    return {
        "inputs": np.stack([ids, -ids], axis=-1)[:, None, :].repeat(3, axis=1).astype(np.float32),
        "labels": ids.astype(np.int32),
    }


def _feed(arrays, n, batch, shards, seed=3, p=0, count=1):
    lo, hi = feed_lib.process_rows(n, shards, p, count)
    return feed_lib.TrainFeed(
        {k: v[lo:hi] for k, v in arrays.items()},
        num_examples=n,
        batch_size=batch,
        shards=shards,
        seed=seed,
        process_index=p,
        process_count=count,
    )


def _draw(feed, sizes):
    return [feed.next_local(k) for k in sizes]


def test_one_shard_is_the_old_single_iterator_order():
    arrays, n, batch = _arrays(), 103, 8  # 12 steps per epoch: 25 steps cross two epochs
    old = BatchIterator({"index": np.arange(n, dtype=np.int32)}, batch, seed=3)
    feed = _feed(arrays, n, batch, shards=1)
    for block in _draw(feed, [5, 7, 13]):
        want = np.stack([next(old)["index"] for _ in range(len(block["labels"]))])
        np.testing.assert_array_equal(block["labels"], want)
        np.testing.assert_array_equal(block["inputs"], arrays["inputs"][want])


@pytest.mark.parametrize(("shards", "processes"), [(2, 2), (4, 2), (4, 4)])
def test_processes_split_the_batches_of_one_process(shards, processes):
    """P processes feeding S shards give, side by side, the batches one process feeds."""
    arrays, n, batch = _arrays(), 103, 8
    whole = _draw(_feed(arrays, n, batch, shards), [4, 9])
    parts = [
        _draw(_feed(arrays, n, batch, shards, p=p, count=processes), [4, 9])
        for p in range(processes)
    ]
    for i, block in enumerate(whole):
        for key in arrays:
            joined = np.concatenate([part[i][key] for part in parts], axis=1)
            np.testing.assert_array_equal(block[key], joined)
    # Shard s is BatchIterator(process_index=s, process_count=S) over the whole split.
    per = batch // shards
    labels = np.concatenate([b["labels"] for b in whole])  # [13, batch]
    for s in range(shards):
        it = BatchIterator(
            {"index": np.arange(n)}, per, seed=3, process_index=s, process_count=shards
        )
        want = np.stack([next(it)["index"] for _ in range(13)])
        np.testing.assert_array_equal(labels[:, s * per : (s + 1) * per], want)
    # Each process holds only its rows.
    for p in range(processes):
        lo, hi = feed_lib.process_rows(n, shards, p, processes)
        rows = np.concatenate([b["labels"].ravel() for b in parts[p]])
        assert rows.min() >= lo and rows.max() < hi


def test_state_restores_the_position_and_checks_the_setup():
    arrays, n, batch = _arrays(), 103, 8
    feed = _feed(arrays, n, batch, shards=2)
    _draw(feed, [17])
    state = feed.state(17)
    following = _draw(feed, [11])
    again = _draw(_feed(arrays, n, batch, shards=2), [0])
    fresh = _feed(arrays, n, batch, shards=2)
    assert fresh.restore(state) == (17, 2)
    np.testing.assert_array_equal(_draw(fresh, [11])[0]["labels"], following[0]["labels"])
    assert again[0]["labels"].shape == (0, 8)
    # The state of jaxrnn 0.1's single iterator, after 17 batches.
    old = BatchIterator({"index": np.arange(n, dtype=np.int32)}, batch, seed=3)
    for _ in range(17):
        next(old)
    one = _feed(arrays, n, batch, shards=1)
    assert one.restore(old.get_state()) == (17, 1)
    np.testing.assert_array_equal(_draw(one, [1])[0]["labels"][0], next(old)["index"])
    # Another shard count continues from the same position; another seed is an error.
    assert _feed(arrays, n, batch, shards=1).restore(state) == (17, 2)
    with pytest.raises(ValueError, match="different setup.*seed"):
        _feed(arrays, n, batch, shards=2, seed=4).restore(state)


def test_blocks_are_prefetched_in_order_and_host_memory_is_recycled():
    arrays, n, batch = _arrays(), 103, 8
    mesh = steps.make_mesh()
    sequential = [parallel.to_host(b) for b in _feed(arrays, n, batch, 1).blocks([5, 5, 3], mesh)]
    reference = _draw(_feed(arrays, n, batch, 1), [5, 5, 3])
    for got, want in zip(sequential, reference, strict=True):
        jax.tree.map(np.testing.assert_array_equal, got, want)
    feed = _feed(arrays, n, batch, 1)
    first = feed.next_block(5, mesh)
    host = feed._lent[id(first)]
    jax.tree.map(np.testing.assert_array_equal, parallel.to_host(first), reference[0])
    feed.recycle(first)
    second = feed.next_block(5, mesh)
    assert feed._lent[id(second)] is host  # the same host memory, filled again
    jax.tree.map(np.testing.assert_array_equal, parallel.to_host(second), reference[1])
    for x in jax.tree.leaves(host):
        assert x.ctypes.data % 64 == 0


def test_shard_counts_that_do_not_fit_are_errors():
    assert feed_lib.num_shards(0, 4) == 4 and feed_lib.num_shards(8, 4) == 8
    with pytest.raises(ValueError, match="multiple of the 4 processes"):
        feed_lib.num_shards(6, 4)
    with pytest.raises(ValueError, match="multiple of the 3 data shards"):
        _feed(_arrays(), 103, 8, shards=3)
    assert feed_lib.process_rows(103, 4, 1, 2) == (52, 103)  # shards 2 and 3: 26 + 25 rows


@pytest.mark.slow
def test_load_reads_only_the_rows_asked_for(tmp_path):
    whole = load("linear_vs_random", "train")
    part = load("linear_vs_random", "train", rows=(100, 250))
    for key, value in whole.items():
        np.testing.assert_array_equal(part[key], value[100:250])
    # Without the .npy cache the rows come straight from the tfds data source.
    from jaxrnn.data import pipeline

    builder = pipeline.prepare("linear_vs_random")
    direct = pipeline._read_split(builder, "train", (100, 250))
    cache = tmp_path / "nothing"  # a cache folder that does not exist
    original = pipeline._CACHE_DIR
    try:
        pipeline._CACHE_DIR = str(cache)
        uncached = pipeline._read_split(builder, "train", (100, 250))
        empty = pipeline._read_split(builder, "train", (7, 7))
    finally:
        pipeline._CACHE_DIR = original
    assert not cache.exists()  # a partial read writes no cache
    for key in direct:
        np.testing.assert_array_equal(uncached[key], direct[key])
        assert len(empty[key]) == 0 and empty[key].shape[1:] == direct[key].shape[1:]


def test_training_on_one_process_feeds_the_old_batches(tmp_path):
    """``train`` ends with the parameters of the same blocks built from the old iterator."""
    config = get_config("lstm_sequences").replace(
        hidden_size=8,
        batch_size=16,
        num_steps=30,
        steps_per_call=10,
        checkpoint_every=30,
        train_examples=200,  # 12 steps per epoch: the run crosses two epochs
        test_examples=50,
    )
    loop.train(config, str(tmp_path / "run"), print_fn=lambda *a, **k: None)
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"))

    train, test = loop.load_split(config, "train"), loop.load_split(config, "test")
    model = loop.build_model(config, train, test)
    mesh = steps.make_mesh()
    tx = optimizers.from_config(config, 30)
    state = loop.init_state(config, model, tx, train["inputs"].shape[-1], mesh)
    trained, data_state = ckpt.restore(state)
    ckpt.close()
    assert data_state["batches"] == 30 and data_state["shards"] == 1

    old = BatchIterator({"index": np.arange(200, dtype=np.int32)}, 16, seed=config.seed)
    block = steps.make_train_block(model, tx)
    keys = ["inputs", "labels", "lengths"]
    for _ in range(3):
        idx = np.stack([next(old)["index"] for _ in range(10)])
        batch = parallel.global_batch({k: train[k][idx] for k in keys}, mesh, axis=1)
        state, _ = block(state, batch)
    for got, want in zip(jax.tree.leaves(trained), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
