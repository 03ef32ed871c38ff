"""The tfds builders: tiny MNIST idx files written here (gzipped and raw) through every source
(mnist_dir, $JAXRNN_MNIST_DIR, manual_dir, the download manager), the generated tasks, bad
input, no TensorFlow anywhere, and the real MNIST from ``../shared/data/mnist`` when present."""

import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from test_data_idx import idx_bytes

from jaxrnn.data import mnist, pipeline, sequences
from jaxrnn.data.idx import IdxError, IdxSpec
from jaxrnn.data.mnist import MNIST_FILES, JaxrnnMnist
from jaxrnn.data.sequences import JaxrnnSequences, SequenceConfig


@pytest.fixture(autouse=True)
def _no_mnist_dir_from_the_environment(monkeypatch):
    """Each test chooses its MNIST source itself; a user's JAXRNN_MNIST_DIR must not leak in."""
    monkeypatch.delenv(mnist.MNIST_DIR_ENV, raising=False)


REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
COUNTS = {"train": 12, "test": 5}


def tiny_mnist(directory, *, gz=True, seed=0):
    """Writes four tiny idx files into ``directory``; returns (specs, arrays)."""
    rng = np.random.default_rng(seed)
    specs, arrays = {}, {}
    os.makedirs(directory, exist_ok=True)
    for split, n in COUNTS.items():
        for kind in ("images", "labels"):
            key = f"{split}_{kind}"
            shape = (n, 28, 28) if kind == "images" else (n,)
            array = rng.integers(0, 256 if kind == "images" else 10, shape, dtype=np.uint8)
            raw = idx_bytes(array)
            stem = MNIST_FILES[key].stem
            path = os.path.join(directory, stem + (".gz" if gz else ""))
            with open(path, "wb") as f:
                f.write(gzip.compress(raw) if gz else raw)
            specs[key] = IdxSpec(
                stem,
                MNIST_FILES[key].magic,
                shape,
                hashlib.sha256(raw).hexdigest(),
                MNIST_FILES[key].max_value,
            )
            arrays[key] = array
    return specs, arrays


def read_back(builder, split):
    return pipeline._read_split(builder, split)


def prepare(builder, **config):
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
            force_checksums_validation=True,
            **config,
        ),
    )


def assert_same_mnist(builder, arrays):
    for split in COUNTS:
        raw = read_back(builder, split)
        np.testing.assert_array_equal(raw["image"], arrays[f"{split}_images"])
        np.testing.assert_array_equal(raw["label"], arrays[f"{split}_labels"])


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_mnist_from_mnist_dir(tmp_path, gz):
    specs, arrays = tiny_mnist(tmp_path / "idx", gz=gz)
    builder = JaxrnnMnist(data_dir=tmp_path / "data", mnist_dir=tmp_path / "idx", file_specs=specs)
    prepare(builder)
    assert builder.info.splits["train"].num_examples == COUNTS["train"]
    assert_same_mnist(builder, arrays)


def test_mnist_from_env_and_manual_dir(tmp_path, monkeypatch):
    specs, arrays = tiny_mnist(tmp_path / "env")
    monkeypatch.setenv(mnist.MNIST_DIR_ENV, str(tmp_path / "env"))
    builder = JaxrnnMnist(data_dir=tmp_path / "a", file_specs=specs)
    prepare(builder)
    assert_same_mnist(builder, arrays)

    monkeypatch.delenv(mnist.MNIST_DIR_ENV)
    specs, arrays = tiny_mnist(tmp_path / "manual", seed=1)
    builder = JaxrnnMnist(data_dir=tmp_path / "b", file_specs=specs)
    prepare(builder, manual_dir=str(tmp_path / "manual"))
    assert_same_mnist(builder, arrays)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server over ``tmp_path / "mirror"``: yields (directory, base URL)."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield directory, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_mnist_download_goes_through_tfds_checksums(tmp_path, monkeypatch, mirror):
    """The online path: tfds' real download manager over HTTP, from a local mirror whose
    checksums are registered the way tfds registers its own mnist URLs."""
    directory, url = mirror
    specs, arrays = tiny_mnist(directory)
    monkeypatch.setattr(mnist, "MNIST_URL", url)
    registered = {
        u: checksums.compute_url_info(directory / u.rsplit("/", 1)[1])
        for u in mnist.mnist_urls().values()
    }
    real = checksums.get_all_url_infos
    monkeypatch.setattr(checksums, "get_all_url_infos", lambda: {**real(), **registered})
    builder = JaxrnnMnist(data_dir=tmp_path / "data", file_specs=specs)
    prepare(builder)
    assert_same_mnist(builder, arrays)
    assert sorted(os.listdir(tmp_path / "data" / "downloads"))  # cached by the manager

    # A mirror file that does not match its registered checksum is refused.
    with open(directory / "t10k-labels-idx1-ubyte.gz", "ab") as f:
        f.write(b"\0")
    builder = JaxrnnMnist(data_dir=tmp_path / "other", file_specs=specs)
    with pytest.raises(NonMatchingChecksumError, match="t10k-labels"):
        prepare(builder)
    assert not builder.is_prepared()


def test_mnist_urls_and_checksums_are_tfds_own():
    infos = checksums.get_all_url_infos()
    for url in mnist.mnist_urls().values():
        assert url.startswith("https://storage.googleapis.com/cvdf-datasets/mnist/")
        assert url in infos  # tfds' mnist registers these; the download manager checks them


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), "t10k-images-idx3-ubyte.gz"),
        (lambda p: p.unlink(), r"t10k-images-idx3-ubyte\[\.gz\] not found"),
        (lambda p: p.write_bytes(gzip.compress(b"\0\0\x08\x01" + bytes(12))), "t10k-images"),
    ],
    ids=["truncated", "missing", "wrong-magic"],
)
def test_bad_file_leaves_nothing_that_looks_complete(tmp_path, corrupt, match):
    specs, arrays = tiny_mnist(tmp_path / "idx")
    corrupt(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz")
    builder = JaxrnnMnist(data_dir=tmp_path / "data", mnist_dir=tmp_path / "idx", file_specs=specs)
    with pytest.raises((IdxError, FileNotFoundError), match=match):
        prepare(builder)
    assert not builder.is_prepared()
    assert not (tmp_path / "data" / "jaxrnn_mnist" / "1.0.0").exists()
    # Fixed files prepare fine in the same data_dir.
    specs, arrays = tiny_mnist(tmp_path / "idx")
    builder = JaxrnnMnist(data_dir=tmp_path / "data", mnist_dir=tmp_path / "idx", file_specs=specs)
    prepare(builder)
    assert_same_mnist(builder, arrays)


def test_failure_while_writing_leaves_nothing_complete(tmp_path, monkeypatch):
    config = SequenceConfig(name="tiny_adding", task="adding", length=6, features=2,
                            train_size=30, test_size=10)  # fmt: skip
    real = sequences.generate
    monkeypatch.setattr(sequences, "generate", lambda c, s: real(c, s) if s == "train" else 1 / 0)
    builder = JaxrnnSequences(data_dir=tmp_path, config=config)
    with pytest.raises(ZeroDivisionError):
        prepare(builder)
    assert not builder.is_prepared()
    assert not (tmp_path / "jaxrnn_sequences" / "tiny_adding" / "1.0.0").exists()


def test_production_counts_are_strict(tmp_path):
    tiny_mnist(tmp_path / "idx")  # right names, 12 examples instead of 60000
    builder = JaxrnnMnist(data_dir=tmp_path / "data", mnist_dir=tmp_path / "idx")
    with pytest.raises(IdxError, match="SHA-256|expected"):
        prepare(builder)


def test_missing_mnist_dir_is_named(tmp_path):
    builder = JaxrnnMnist(data_dir=tmp_path, mnist_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare(builder)


def test_data_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    with pytest.raises(PermissionError, match="not writable"):
        pipeline.prepare("adding_50", data_dir=str(blocker / "data"))


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'adding_7'.*mnist_rows"):
        pipeline.load("adding_7", "train")
    with pytest.raises(ValueError, match="split"):
        pipeline.load("adding_50", "validation")
    with pytest.raises(ValueError, match="nope"):
        JaxrnnSequences(config="nope")


@pytest.mark.parametrize(
    "config",
    [
        SequenceConfig(name="tiny_lvr", task="linear_vs_random", length=20, features=1,
                       num_classes=2, train_size=40, test_size=8, seed=3),
        SequenceConfig(name="tiny_adding", task="adding", length=9, features=2,
                       train_size=40, test_size=8, seed=3),
    ],
    ids=["classification", "regression"],
)  # fmt: skip
def test_sequences_builder_writes_the_generator_output(tmp_path, config):
    builder = JaxrnnSequences(data_dir=tmp_path, config=config)
    prepare(builder)
    for split in ("train", "test"):
        raw = read_back(builder, split)
        want = sequences.generate(config, split)
        np.testing.assert_array_equal(raw["inputs"], want["inputs"])
        np.testing.assert_array_equal(raw["length"], want["lengths"])
        if config.num_classes:
            np.testing.assert_array_equal(raw["label"], want["labels"])
        else:
            np.testing.assert_array_equal(raw["target"], want["targets"])


def test_generators_are_deterministic_and_correct():
    for config in sequences.SEQUENCE_CONFIGS:
        small = SequenceConfig(**{**config.__dict__, "train_size": 300, "test_size": 50})
        a, b = sequences.generate(small, "train"), sequences.generate(small, "train")
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        test = sequences.generate(small, "test")
        assert not np.array_equal(a["inputs"][:50], test["inputs"])
        assert a["inputs"].shape == (300, config.length, config.features)
        assert a["inputs"].dtype == np.float32 and a["lengths"].dtype == np.int32


def test_linear_vs_random_semantics():
    d = sequences.linear_vs_random(2000, np.random.default_rng(0))
    x, lengths, labels = d["inputs"][..., 0], d["lengths"], d["labels"]
    assert lengths.min() == 5 and lengths.max() == 20
    assert 0.45 < labels.mean() < 0.55
    for row, n, y in zip(x, lengths, labels, strict=True):
        assert np.all(row[n:] == -1) and np.all((row[:n] >= 0) & (row[:n] < 1))
        ints = np.round(row[:n].astype(np.float64) * 10000)
        if y == 0:
            np.testing.assert_array_equal(np.diff(ints), 1)
    random_steps = np.concatenate(
        [np.diff(r[:n]) for r, n, y in zip(x, lengths, labels, strict=True) if y]
    )
    assert np.mean(np.abs(random_steps * 10000 - 1) < 0.5) < 0.01


def test_adding_semantics():
    d = sequences.adding(500, 50, np.random.default_rng(0))
    values, markers = d["inputs"][..., 0], d["inputs"][..., 1]
    assert np.all(markers.sum(1) == 2)
    assert np.all(markers[:, :25].sum(1) == 1)
    np.testing.assert_allclose(d["targets"], (values * markers).sum(1), rtol=1e-6)
    assert abs(np.var(d["targets"]) - 1 / 6) < 0.03  # baseline MSE of predicting the mean


def test_temporal_order_semantics():
    d = sequences.temporal_order(500, np.random.default_rng(0))
    x, lengths, labels = d["inputs"], d["lengths"], d["labels"]
    assert x.shape == (500, 110, 8) and 100 <= lengths.min() and lengths.max() <= 110
    symbols = x.argmax(-1)
    for row, sym, n, y in zip(x, symbols, lengths, labels, strict=True):
        assert np.all(row[:n].sum(-1) == 1) and np.all(row[n:] == 0)
        assert sym[0] == 6 and sym[n - 1] == 7
        xy = np.flatnonzero((sym[:n] == 4) | (sym[:n] == 5))
        assert len(xy) == 2 and 10 <= xy[0] <= 20 and 50 <= xy[1] <= 60
        assert y == 2 * (sym[xy[0]] == 5) + (sym[xy[1]] == 5)


def test_no_tensorflow_after_preparing_loading_iterating(tmp_path):
    """Fresh interpreter: both builders prepared, loaded and iterated; TF never imported."""
    tiny_mnist(tmp_path / "idx")
    script = textwrap.dedent(
        f"""
        import sys
        from jaxrnn import data
        from jaxrnn.data import sequences, mnist, pipeline
        sys.path.insert(0, 'tests')
        from test_data_builders import tiny_mnist
        specs, _ = tiny_mnist({str(tmp_path / "idx")!r})
        small = {{c.name: sequences.SequenceConfig(**{{**c.__dict__, "train_size": 40,
                                                       "test_size": 8, "name": "tiny_" + c.name}})
                  for c in sequences.SEQUENCE_CONFIGS}}
        def builder(name, *, data_dir=None, mnist_dir=None):
            if name.startswith("mnist"):
                return mnist.JaxrnnMnist(data_dir=data_dir, mnist_dir=mnist_dir, file_specs=specs)
            return sequences.JaxrnnSequences(data_dir=data_dir, config=small[name])
        pipeline.builder = builder
        for name in ("mnist_rows", "mnist_permuted", "linear_vs_random", "adding_50"):
            for split in ("train", "test"):
                arrays = data.load(name, split, data_dir={str(tmp_path / "data")!r},
                                   mnist_dir={str(tmp_path / "idx")!r})
                next(data.BatchIterator(arrays, 4))
                next(data.eval_batches(arrays, 4))
        bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
        assert not bad, bad
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason=f"no MNIST idx files at {SHARED_MNIST} (../shared/data/mnist)"
)
def test_real_mnist_from_shared_dir(tmp_path):
    arrays = pipeline.load(
        "mnist_rows", "test", data_dir=str(tmp_path), mnist_dir=str(SHARED_MNIST)
    )
    assert arrays["inputs"].shape == (10000, 28, 28) and arrays["inputs"].dtype == np.float32
    counts = np.bincount(arrays["labels"], minlength=10)
    assert counts.sum() == 10000 and counts[1] == 1135  # the known test-set class count
    pixels = np.round(arrays["inputs"] * 255).astype(np.uint8)
    digest = hashlib.sha256(idx_bytes(pixels)).hexdigest()
    assert digest == MNIST_FILES["test_images"].sha256  # the decompressed file's digest
    builder = pipeline.prepare("mnist_pixels", data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == 60000


@pytest.mark.slow
def test_concurrent_preparation_by_two_processes(tmp_path):
    """Two processes preparing the same dataset at once both succeed with the same data (one
    prepares under a lock, the other waits); without the lock tfds' final rename fails."""
    script = (
        "import sys, numpy as np; from jaxrnn import data; "
        "a = data.load('temporal_order', 'test', data_dir=sys.argv[1]); "
        "print(int(a['labels'].sum()), float(a['inputs'].sum()))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        finally:
            p.kill()
        assert p.returncode == 0, err[-3000:]
        results.append(out.strip().splitlines()[-1])  # tfds prints progress first
    assert results[0] == results[1] and results[0]
