"""The train loop: blocks of compiled steps, metrics, checkpoints, exact resume, final report.

The work directory's files are :mod:`jaxrnn.training.workdir`'s (any ``epath`` file system,
``gs://`` included); checkpoints are :mod:`jaxrnn.training.checkpointing`'s.

Each process loads only its shard of the training split and hands its part of every global
batch to :mod:`jaxrnn.training.feed`, which stacks ``steps_per_call`` steps on the host and
assembles global ``[K, B, ...]`` arrays: a block of steps costs one transfer and one compiled
call, and the next block is gathered while the current one runs. The test split is whole on
every process (each feeds its rows of every evaluation batch). Checkpoints land on block
boundaries (``checkpoint_every`` is rounded up to a multiple of the block) and at the end; step
``s`` draws its randomness from ``fold_in(key, s)`` and its batch from the feed's position
``s``, so a resumed run ends with exactly the parameters of an uninterrupted one.

A text dataset trains a character-level language model over parallel streams instead
(:mod:`jaxrnn.training.streams`): the same loop, another feed and another evaluation (bits
per character on the held-out text); with ``stateful`` the carry is part of the train state.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxrnn import parallel
from jaxrnn.configs.base import Config
from jaxrnn.models import Model
from jaxrnn.training import feed as feed_lib
from jaxrnn.training import lock as lock_lib
from jaxrnn.training import optimizers, runlog, steps
from jaxrnn.training import streams as streams_lib
from jaxrnn.training import workdir as workdir_lib
from jaxrnn.training.build import (
    build_model,
    check_dtypes,
    implementation_of,
    init_state,
    model_of,
    total_steps,
)
from jaxrnn.training.checkpointing import Checkpointer
from jaxrnn.training.lock import WorkdirBusyError
from jaxrnn.training.runlog import read_metrics
from jaxrnn.training.workdir import WorkdirError, load_run

__all__ = [
    "NonFiniteError",
    "WorkdirBusyError",
    "WorkdirError",
    "build_model",
    "evaluate",
    "evaluate_workdir",
    "init_state",
    "load_run",
    "load_split",
    "make_task",
    "model_of",
    "read_metrics",
    "split_size",
    "summary_line",
    "total_steps",
    "train",
]


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


def split_size(config: Config, split: str, *, mnist_dir=None, data_dir=None) -> int:
    """The examples of ``split`` the run uses: all, or ``train_examples``/``test_examples``."""
    from jaxrnn.data.pipeline import split_size as dataset_size

    n = dataset_size(config.dataset, split, data_dir=data_dir, mnist_dir=mnist_dir)
    limit = config.train_examples if split == "train" else config.test_examples
    return min(n, limit) if limit else n


def load_split(
    config: Config, split: str, *, rows=None, mnist_dir=None, data_dir=None
) -> dict[str, np.ndarray]:
    """Examples ``rows=(start, stop)`` of the split (default: all ``split_size`` of them)."""
    from jaxrnn.data import load

    if rows is None:
        rows = (0, split_size(config, split, mnist_dir=mnist_dir, data_dir=data_dir))
    return load(config.dataset, split, data_dir=data_dir, mnist_dir=mnist_dir, rows=rows)


def _round_up(value: int, block: int) -> int:
    return max(block, math.ceil(value / block) * block) if value > 0 else 0


def _model_keys(model: Model, arrays: dict) -> list[str]:
    keys = ["inputs", "labels" if model.task == "classification" else "targets"]
    return keys + (["lengths"] if model.masked and "lengths" in arrays else [])


def evaluate(model: Model, eval_step, params, arrays: dict, batch_size: int, mesh) -> dict:
    """Loss and accuracy over the whole of ``arrays`` (padded last batch weighted out)."""
    from jaxrnn.data import eval_batches

    count = parallel.data_size(mesh)
    batch_size = min(batch_size, math.ceil(len(arrays["inputs"]) / count) * count)
    steps.check_batch_size(batch_size, mesh)
    keys = _model_keys(model, arrays) + ["weights"]
    sums = jnp.zeros(3)
    for batch in eval_batches({k: arrays[k] for k in keys if k != "weights"}, batch_size):
        local = parallel.local_rows({k: batch[k] for k in keys}, mesh)
        batch = parallel.global_batch(local, mesh)
        sums = sums + jnp.stack(eval_step(params, batch))
    loss_sum, correct, total = (float(x) for x in parallel.to_host(sums))
    return {"loss": loss_sum / max(total, 1.0), "accuracy": correct / max(total, 1.0)}


class Task(NamedTuple):
    """What a run trains and is scored on.

    ``feed`` is ``None`` when the task was made only to evaluate; ``evaluate(params)`` gives
    the test metrics (``loss``, ``accuracy``, and ``bpc`` for text); ``report`` holds the
    task's own fields of ``report.json``.
    """

    model: Model
    num_train: int
    input_size: int
    feed: Any
    evaluate: Callable[[Any], dict]
    report: dict


def make_task(
    config: Config, mesh, *, shards: int, with_feed: bool = True, mnist_dir=None, data_dir=None
) -> Task:
    """The :class:`Task` of ``config``: its data loaded, its model built."""
    if streams_lib.text.is_text(config.dataset):
        streams_lib.check_config(config)
        data = streams_lib.load(config)
        vocab = data.vocab.size
        model = model_of(config, "classification", vocab, vocab_size=vocab)
        stream_feed = streams_lib.make_feed(data, config) if with_feed else None
        report = {
            "test_examples": len(data.held_out_ids) - 1,  # the predicted characters
            "vocab_size": vocab,
            "unigram_bpc": data.unigram_bpc,
        }
        score = streams_lib.make_evaluate(model, data, config, mesh)
        num = streams_lib.num_examples(data, config)
        return Task(model, num, vocab, stream_feed, score, report)

    num_train, train_arrays = _load_train_shard(
        config, shards, mnist_dir=mnist_dir, data_dir=data_dir
    )
    test_arrays = load_split(config, "test", mnist_dir=mnist_dir, data_dir=data_dir)
    model = build_model(config, train_arrays, test_arrays)
    feed = None
    if with_feed:
        keys = _model_keys(model, train_arrays)
        feed = feed_lib.TrainFeed(
            {k: train_arrays[k] for k in keys},
            num_examples=num_train,
            batch_size=config.batch_size,
            shards=shards,
            seed=config.seed,
            process_index=parallel.process_index(),
            process_count=parallel.process_count(),
        )
    eval_step = steps.make_eval_step(model)

    def evaluate_test(params) -> dict:
        return evaluate(model, eval_step, params, test_arrays, config.eval_batch_size, mesh)

    input_size = train_arrays["inputs"].shape[-1]
    report = {"test_examples": len(test_arrays["inputs"])}
    return Task(model, num_train, input_size, feed, evaluate_test, report)


def _load_train_shard(config: Config, shards: int, *, mnist_dir=None, data_dir=None):
    """``(n, arrays)``: the split size and this process's examples of it (``feed``'s rule)."""
    n = split_size(config, "train", mnist_dir=mnist_dir, data_dir=data_dir)
    rows = feed_lib.process_rows(n, shards, parallel.process_index(), parallel.process_count())
    return n, load_split(config, "train", rows=rows, mnist_dir=mnist_dir, data_dir=data_dir)


def train(
    config: Config,
    workdir: str,
    *,
    name: str = "custom",
    mnist_dir: str | None = None,
    data_dir: str | None = None,
    overwrite: bool = False,
    print_fn=print,
) -> dict:
    """Train (or resume) the run of ``config`` in ``workdir``; returns the report dict.

    Holds ``workdir`` throughout (:mod:`jaxrnn.training.lock`): raises ``WorkdirBusyError``
    at once, having touched nothing, if another command holds it.
    """
    if config.steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {config.steps_per_call}")
    check_dtypes(config)
    implementation_of(config)
    streams_lib.check_config(config)
    with lock_lib.hold(workdir, "train"):
        return _train(
            config,
            workdir,
            name=name,
            mnist_dir=mnist_dir,
            data_dir=data_dir,
            overwrite=overwrite,
            print_fn=print_fn,
        )


def _train(
    config: Config,
    workdir: str,
    *,
    name: str,
    mnist_dir: str | None,
    data_dir: str | None,
    overwrite: bool,
    print_fn,
) -> dict:
    main = parallel.is_main_process()  # the one process that prints and writes logs
    if not main:
        print_fn = lambda *args, **kwargs: None
    shards = feed_lib.num_shards(config.data_shards, parallel.process_count())
    workdir_lib.prepare(workdir, name, config, overwrite, main)
    parallel.sync("jaxrnn:workdir")  # the others wait for process 0 to (re)create it

    t_data = time.perf_counter()
    mesh = steps.make_mesh()
    steps.check_batch_size(config.batch_size, mesh)
    num_train = _task_size(config, shards, mnist_dir=mnist_dir, data_dir=data_dir)
    if num_train < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} examples")
    task = make_task(config, mesh, shards=shards, mnist_dir=mnist_dir, data_dir=data_dir)
    model, feed = task.model, task.feed
    last_step = total_steps(config, num_train)
    data_time = time.perf_counter() - t_data

    tx = optimizers.from_config(config, last_step)
    state = init_state(config, model, tx, task.input_size, mesh)
    checkpointer = Checkpointer(
        str(workdir_lib.as_path(workdir) / "checkpoints"), config.keep_checkpoints
    )
    start = checkpointer.latest_step()
    if start is not None:
        state, data_state = checkpointer.restore(state)
        batches, saved_shards = feed.restore(data_state)
        if batches != start:
            raise ValueError(f"the checkpoint at step {start} holds the data state of {batches}")
        print_fn(f"resuming from the checkpoint at step {start}")
        if saved_shards != feed.shards:
            print_fn(
                f"the run was fed from {saved_shards} data shards and now from {feed.shards}: the "
                "batches from here on differ from the ones it would have drawn (a run started "
                "with --set data_shards=N keeps one order on any process count dividing N)"
            )
    start = start or 0

    block = config.steps_per_call
    ckpt_every = _round_up(config.checkpoint_every, block)
    eval_every = _round_up(config.eval_every, block)
    log_every = max(config.log_every, 1)
    train_block = steps.make_train_block(model, tx)
    sizes = [min(block, last_step - s) for s in range(start, last_step, block)]

    # Compile every block size this run needs before the clock starts.
    t_compile = time.perf_counter()
    sharding = steps.batch_sharding(mesh, leading=1)
    compiled = {}
    for k in sorted(set(sizes)):
        abstract = {
            key: jax.ShapeDtypeStruct(
                (k, config.batch_size, *row.shape), row.dtype, sharding=sharding
            )
            for key, row in feed.row_specs().items()
        }
        compiled[k] = train_block.lower(state, abstract).compile()  # type: ignore[attr-defined]
    compile_time = time.perf_counter() - t_compile

    log = runlog.RunLog(workdir, start, last_step) if main else runlog.NoLog()
    progress = tqdm(
        total=last_step,
        initial=start,
        disable=not (main and sys.stderr.isatty()),
        unit="step",
        leave=False,
    )
    window: list[np.ndarray] = []
    eval_time = 0.0
    step = start

    def process(end_step: int, k: int, metrics, data, seconds: float) -> None:
        """Check, log and display one finished block of ``k`` steps ending at ``end_step``."""
        host = parallel.to_host(metrics)
        feed.recycle(data)  # the block has run: its host memory can take a later block
        bad = ~(np.isfinite(host["loss"]) & np.isfinite(host["grad_norm"]))
        if bad.any():
            first = end_step - k + int(np.argmax(bad)) + 1
            raise NonFiniteError(
                f"non-finite loss or gradient at step {first} (loss {host['loss'][bad][0]}); "
                f"stopping. The last good checkpoint is step {checkpointer.latest_step()}."
            )
        for i in range(k):
            window.append(np.array([host["loss"][i], host["accuracy"][i], host["grad_norm"][i]]))
            s = end_step - k + i + 1
            if s % log_every == 0 or s == last_step:
                loss, acc, gnorm = np.mean(window, axis=0)
                log.write(s, "train", {"loss": loss, "accuracy": acc, "grad_norm": gnorm})
                window.clear()
        rate = k / max(seconds, 1e-9)
        progress.set_postfix(
            loss=f"{host['loss'][-1]:.4f}",
            acc=f"{host['accuracy'][-1]:.3f}",
            steps_per_s=f"{rate:.0f}",
        )
        progress.update(k)

    try:
        t_train = time.perf_counter()
        pending = None
        t_block = t_train
        for k, data in zip(sizes, feed.blocks(sizes, mesh), strict=True):
            state, metrics = compiled[k](state, data)
            step += k
            if pending is not None:  # the previous block, while this one runs
                now = time.perf_counter()
                process(*pending, now - t_block)
                t_block = now
            pending = (step, k, metrics, data)
            do_eval = step == last_step or (eval_every and step % eval_every == 0)
            do_ckpt = step == last_step or (ckpt_every and step % ckpt_every == 0)
            if do_eval or do_ckpt:
                now = time.perf_counter()
                process(*pending, now - t_block)
                pending, t_block = None, now
            if do_ckpt:
                host_state = jax.tree.map(np.copy, parallel.to_host(state))
                checkpointer.save(host_state, feed.state(step))
            if do_eval and step != last_step:
                t_eval = time.perf_counter()
                test = task.evaluate(state.params)
                log.write(step, "test", test)
                eval_time += time.perf_counter() - t_eval
                t_block = time.perf_counter()
            if do_ckpt:
                log.flush()  # the rows up to the checkpoint are kept whatever happens next
        jax.block_until_ready(state)
        checkpointer.wait()
        train_time = time.perf_counter() - t_train - eval_time
    except NonFiniteError:
        progress.close()
        log.close()
        checkpointer.close()
        raise
    progress.close()
    checkpointer.close()

    t_eval = time.perf_counter()
    test = task.evaluate(state.params)
    final_eval_time = time.perf_counter() - t_eval
    log.write(last_step, "test", test)
    log.close()
    report = {
        "config": name,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "steps": last_step,
        "resumed_from": start,
        "train_time_s": train_time,
        "compile_time_s": compile_time,
        "data_time_s": data_time,
        "eval_time_s": eval_time + final_eval_time,
        "device_count": mesh.devices.size,
        "device_kind": jax.devices()[0].device_kind,
        "dtype": config.dtype,
        "param_dtype": config.param_dtype,
        **task.report,
        **_test_fields(test),
    }
    earlier = workdir_lib.read_report(workdir) if start == last_step else None
    if earlier is not None:
        # Nothing was trained in this process: keep the times of the run that did the work.
        for key in ("train_time_s", "compile_time_s", "data_time_s", "resumed_from"):
            if key in earlier:
                report[key] = earlier[key]
    if main:
        workdir_lib.write_report(workdir, report)
    print_fn(summary_line(report))
    return report


def _test_fields(test: dict) -> dict:
    """The test metrics other than loss and accuracy, as report fields (``test_bpc``)."""
    return {f"test_{k}": v for k, v in test.items() if k not in ("loss", "accuracy")}


def _task_size(config: Config, shards: int, *, mnist_dir=None, data_dir=None) -> int:
    """The training examples of the run (windows of text for a text dataset)."""
    if streams_lib.text.is_text(config.dataset):
        return streams_lib.num_examples(streams_lib.load(config), config)
    return split_size(config, "train", mnist_dir=mnist_dir, data_dir=data_dir)


def summary_line(report: dict) -> str:
    line = (
        f"{report['config']}: test_accuracy={report['test_accuracy']:.4f} "
        f"test_loss={report['test_loss']:.4f} steps={report['steps']}"
    )
    if "test_bpc" in report:
        line += f" test_bpc={report['test_bpc']:.4f}"
        if "unigram_bpc" in report:
            line += f" unigram_bpc={report['unigram_bpc']:.4f}"
    if "train_time_s" in report:
        line += (
            f" train_time={report['train_time_s']:.2f}s compile_time="
            f"{report['compile_time_s']:.2f}s"
        )
    return line + f" devices={report['device_count']}"


def evaluate_workdir(workdir: str, *, mnist_dir=None, data_dir=None, print_fn=print) -> dict:
    """Evaluate the latest checkpoint of the run in ``workdir`` on the test split.

    Holds ``workdir`` meanwhile, as ``train`` does, and writes nothing there.
    """
    with lock_lib.hold(workdir, "eval", create=False):
        return _evaluate_workdir(workdir, mnist_dir=mnist_dir, data_dir=data_dir, print_fn=print_fn)


def _evaluate_workdir(workdir: str, *, mnist_dir, data_dir, print_fn) -> dict:
    name, config = load_run(workdir)
    mesh = steps.make_mesh()
    # This process's shard of the training split: enough for the class count and input size.
    task = make_task(
        config,
        mesh,
        shards=parallel.process_count(),
        with_feed=False,
        mnist_dir=mnist_dir,
        data_dir=data_dir,
    )
    tx = optimizers.from_config(config, total_steps(config, task.num_train))
    like = init_state(config, task.model, tx, task.input_size, mesh)
    checkpointer = Checkpointer(str(workdir_lib.as_path(workdir) / "checkpoints"), read_only=True)
    state, _ = checkpointer.restore(like)
    checkpointer.close()
    test = task.evaluate(state.params)
    report = {
        "config": name,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        **_test_fields(test),
        "steps": int(state.step),
        "device_count": mesh.devices.size,
    }
    if parallel.is_main_process():
        print_fn(summary_line(report))
    return report
