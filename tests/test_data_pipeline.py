"""Batch iterators: seeded reshuffling, epoch coverage, shards, exact resume, eval padding."""

import json

import numpy as np
import pytest

from jaxrnn.data import BatchIterator, eval_batches, shard_bounds


def make_arrays(n=103, t=4):
    ids = np.arange(n)
    return {
        "inputs": np.broadcast_to(ids[:, None, None], (n, t, 2)).astype(np.float32),
        "lengths": (ids % t + 1).astype(np.int32),
        "labels": ids.astype(np.int32),
    }


def ids_of(batches):
    return [b["labels"].tolist() for b in batches]


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_are_consistent_rows_of_every_key():
    arrays = make_arrays()
    batch = next(BatchIterator(arrays, 16, seed=1))
    assert set(batch) == {"inputs", "lengths", "labels"}
    assert batch["inputs"].shape == (16, 4, 2) and batch["inputs"].dtype == np.float32
    np.testing.assert_array_equal(batch["inputs"][:, 0, 0], batch["labels"])
    np.testing.assert_array_equal(batch["lengths"], batch["labels"] % 4 + 1)


def test_epochs_cover_each_example_once_and_reshuffle():
    arrays = make_arrays()
    it = BatchIterator(arrays, 10, seed=0)
    assert it.steps_per_epoch == 10  # 103 // 10, the remainder is dropped
    epochs = [np.concatenate(ids_of(take(it, 10))) for _ in range(3)]
    for ids in epochs:
        assert len(set(ids.tolist())) == 100 and ids.min() >= 0 and ids.max() < 103
    assert not np.array_equal(epochs[0], epochs[1])
    assert it.epoch == 3


def test_same_seed_same_batches_other_seed_other_batches():
    arrays = make_arrays()
    a = ids_of(take(BatchIterator(arrays, 8, seed=5), 30))
    b = ids_of(take(BatchIterator(arrays, 8, seed=5), 30))
    c = ids_of(take(BatchIterator(arrays, 8, seed=6), 30))
    assert a == b and a != c


def test_no_shuffle_is_in_order_and_keeps_remainder_when_asked():
    arrays = make_arrays(n=10)
    it = BatchIterator(arrays, 4, shuffle=False, drop_remainder=False, num_epochs=2)
    assert it.steps_per_epoch == 3
    assert ids_of(it) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2  # stops after num_epochs


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover(count):
    n = 103
    bounds = [shard_bounds(n, i, count) for i in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1

    arrays = make_arrays(n)
    seen = []
    for i in range(count):
        it = BatchIterator(arrays, 2, seed=0, process_index=i, process_count=count)
        ids = np.concatenate(ids_of(take(it, 3 * it.steps_per_epoch)))
        start, stop = bounds[i]
        assert ids.min() >= start and ids.max() < stop  # reads only its own block
        seen.append(set(ids.tolist()))
    for i in range(count):
        for j in range(i + 1, count):
            assert not seen[i] & seen[j]
    # Each shard drops at most batch_size - 1 examples per epoch; over 3 reshuffled epochs
    # every example of this size is seen.
    assert set().union(*seen) == set(range(n))


@pytest.mark.parametrize("stop_at", [0, 7, 10, 23])
def test_resume_is_exact(stop_at):
    arrays = make_arrays()
    it = BatchIterator(arrays, 10, seed=3, process_index=1, process_count=2)
    take(it, stop_at)
    state = json.loads(json.dumps(it.get_state()))
    expected = ids_of(take(it, 25))
    resumed = BatchIterator(arrays, 10, seed=3, process_index=1, process_count=2)
    resumed.set_state(state)
    assert ids_of(take(resumed, 25)) == expected


def test_state_from_another_setup_is_refused():
    arrays = make_arrays()
    state = BatchIterator(arrays, 10, seed=3).get_state()
    with pytest.raises(ValueError, match="different setup.*seed"):
        BatchIterator(arrays, 10, seed=4).set_state(state)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(arrays, 8, seed=3).set_state(state)
    with pytest.raises(ValueError, match="invalid iterator position"):
        BatchIterator(arrays, 10, seed=3).set_state({**state, "step": 99})


def test_bad_arguments():
    arrays = make_arrays(n=10)
    with pytest.raises(ValueError, match="batch_size 11 is larger than the 10 examples"):
        BatchIterator(arrays, 11)
    with pytest.raises(ValueError, match="larger than the 5 examples of process 1"):
        BatchIterator(arrays, 6, process_index=1, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        BatchIterator(arrays, 2, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="leading dimension"):
        BatchIterator({"a": np.zeros(3), "b": np.zeros(4)}, 1)
    with pytest.raises(ValueError, match="positive"):
        next(eval_batches(arrays, 0))


@pytest.mark.parametrize("n, batch, count", [(10, 4, 1), (12, 4, 1), (103, 8, 3), (5, 4, 7)])
def test_eval_batches_count_each_example_once(n, batch, count):
    arrays = make_arrays(n)
    per_process = [
        list(eval_batches(arrays, batch, process_index=i, process_count=count))
        for i in range(count)
    ]
    assert len({len(bs) for bs in per_process}) == 1  # collective steps line up
    weight_of = np.zeros(n)
    for bs in per_process:
        for b in bs:
            assert b["inputs"].shape == (batch, 4, 2) and b["weights"].dtype == np.float32
            assert set(b) == {"inputs", "lengths", "labels", "weights"}
            assert np.all(b["lengths"] >= 1)  # padding rows are real examples, weight 0
            np.add.at(weight_of, b["labels"], b["weights"])
    np.testing.assert_array_equal(weight_of, 1.0)


def test_eval_batches_are_in_order():
    batches = list(eval_batches(make_arrays(10), 4))
    assert ids_of(batches) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    np.testing.assert_array_equal(batches[-1]["weights"], [1, 1, 0, 0])
