"""The train loop: blocks of compiled steps, metrics, checkpoints, exact resume, final report.

:func:`train` takes these steps, in order: it checks the config, locks the work directory
(:mod:`jaxrnn.training.lock`), prepares it (:mod:`jaxrnn.training.workdir`), loads the data
and builds the model (:func:`make_task`); it restores the latest checkpoint, if any
(:mod:`jaxrnn.training.checkpointing`), compiles a train block of each size the run needs, runs
the blocks, evaluating and checkpointing at block boundaries, evaluates the final parameters
and writes ``report.json``. The lock, the checkpointer, the run log and the progress bar are
released when it returns or raises, whatever the exception; a checkpoint being saved then is
completed first.

Steps run in blocks of ``steps_per_call``, each one compiled call over a block of batches
``[K, B, ...]`` from the feed (:mod:`jaxrnn.training.feed`), the last block of a run possibly
shorter. Metrics are averaged over ``log_every`` steps. The test split is evaluated every
``eval_every`` steps and checkpoints are saved every ``checkpoint_every`` steps, both rounded
up to a multiple of the block, and at the end. Step ``s`` draws its randomness from
``fold_in(key, s)`` and its batch from the feed's position ``s``, so a resumed run ends with
exactly the parameters of an uninterrupted one.

Each process loads only its shard of the training split; the test split is whole on every
process (each feeds its rows of every evaluation batch). A text dataset trains a
character-level language model over parallel streams instead
(:mod:`jaxrnn.training.streams`): the same loop, another feed and another evaluation (bits
per character on the held-out text); with ``stateful`` the carry is part of the train state.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from jaxrnn.cells import registry
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
from jaxrnn.training.state import TrainState
from jaxrnn.training.workdir import WorkdirError, load_run

__all__ = [
    "NonFiniteError",
    "WorkdirBusyError",
    "WorkdirError",
    "build_model",
    "check_config",
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


def check_config(config: Config) -> None:
    """Refuse the settings no run can take: ``cell`` (a registered name), ``steps_per_call``,
    ``dtype`` and ``param_dtype``, ``implementation``, and those a text dataset needs or
    refuses (:func:`jaxrnn.training.streams.check_config`).

    Raises:
      ValueError: naming the setting and what it accepts.
    """
    registry.get(config.cell)
    if config.steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {config.steps_per_call}")
    check_dtypes(config)
    implementation_of(config)
    streams_lib.check_config(config)


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
    """The :class:`Task` of ``config`` (checked by :func:`check_config`): its data loaded once,
    its model built.

    Raises:
      ValueError: ``with_feed`` and fewer training examples than ``config.batch_size``.
    """
    if streams_lib.text.is_text(config.dataset):
        return _text_task(config, mesh, with_feed=with_feed)
    return _examples_task(
        config, mesh, shards=shards, with_feed=with_feed, mnist_dir=mnist_dir, data_dir=data_dir
    )


def _examples_task(config: Config, mesh, *, shards, with_feed, mnist_dir, data_dir) -> Task:
    """:func:`make_task` of a dataset of examples: this process's shard of the training
    split (``feed``'s rule), the whole test split."""
    num_train = split_size(config, "train", mnist_dir=mnist_dir, data_dir=data_dir)
    if with_feed:
        _check_batch_fits(config, num_train)
    rows = feed_lib.process_rows(
        num_train, shards, parallel.process_index(), parallel.process_count()
    )
    train_arrays = load_split(config, "train", rows=rows, mnist_dir=mnist_dir, data_dir=data_dir)
    test_arrays = load_split(config, "test", mnist_dir=mnist_dir, data_dir=data_dir)
    model = build_model(config, train_arrays, test_arrays)
    feed = None
    if with_feed:
        feed = feed_lib.TrainFeed(
            {k: train_arrays[k] for k in _model_keys(model, train_arrays)},
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


def _text_task(config: Config, mesh, *, with_feed: bool) -> Task:
    """:func:`make_task` of a text dataset: the corpus encoded once, streams over it."""
    data = streams_lib.load(config)
    num_train = streams_lib.num_examples(data, config)
    if with_feed:
        _check_batch_fits(config, num_train)
    vocab = data.vocab.size
    model = model_of(config, "classification", vocab, vocab_size=vocab)
    stream_feed = streams_lib.make_feed(data, config) if with_feed else None
    report = {
        "test_examples": len(data.held_out_ids) - 1,  # the predicted characters
        "vocab_size": vocab,
        "unigram_bpc": data.unigram_bpc,
    }
    score = streams_lib.make_evaluate(model, data, config, mesh)
    return Task(model, num_train, vocab, stream_feed, score, report)


def _check_batch_fits(config: Config, num_train: int) -> None:
    if num_train < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} examples")


# --------------------------------------------------------------------------- training


def _round_up(value: int, block: int) -> int:
    return max(block, math.ceil(value / block) * block) if value > 0 else 0


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """When a run evaluates, checkpoints and logs (see the module docstring)."""

    block: int
    last_step: int
    eval_every: int
    checkpoint_every: int
    log_every: int

    @classmethod
    def of(cls, config: Config, last_step: int) -> _Schedule:
        block = config.steps_per_call
        return cls(
            block,
            last_step,
            eval_every=_round_up(config.eval_every, block),
            checkpoint_every=_round_up(config.checkpoint_every, block),
            log_every=max(config.log_every, 1),
        )

    def block_sizes(self, start: int) -> list[int]:
        """The steps of each block from ``start`` to the last step."""
        last, block = self.last_step, self.block
        return [min(block, last - s) for s in range(start, last, block)]

    def evaluates(self, step: int) -> bool:
        return step == self.last_step or bool(self.eval_every and step % self.eval_every == 0)

    def checkpoints(self, step: int) -> bool:
        return step == self.last_step or bool(
            self.checkpoint_every and step % self.checkpoint_every == 0
        )

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.last_step


@dataclasses.dataclass(frozen=True)
class _Run:
    """A run as :func:`_set_up` prepares it, before any step."""

    config: Config
    workdir: str
    name: str
    main: bool  # the one process that prints and writes logs
    say: Callable[..., None]  # the print function (silent on the other processes)
    mesh: Any
    task: Task
    tx: Any  # the optax transformation
    schedule: _Schedule
    data_time: float  # seconds to load the data and build the model


class _Times(NamedTuple):
    """Seconds of a run, as ``report.json`` gives them."""

    compile: float
    train: float
    eval: float


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
    at once, having touched nothing, if another command holds it. Whatever it raises, it first
    releases the directory and closes the checkpointer (completing a save in progress), the
    run log (its rows written) and the progress bar.

    Raises:
      ValueError: a bad setting (:func:`check_config`), before the directory is touched.
      WorkdirError: ``workdir`` holds another run and ``overwrite`` is false.
      NonFiniteError: a step's loss or gradient norm was not finite; no checkpoint is saved
        at or after it.
    """
    check_config(config)
    with contextlib.ExitStack() as stack:
        stack.enter_context(lock_lib.hold(workdir, "train"))
        run = _set_up(
            config,
            workdir,
            name=name,
            overwrite=overwrite,
            print_fn=print_fn,
            mnist_dir=mnist_dir,
            data_dir=data_dir,
        )
        checkpointer = stack.enter_context(contextlib.closing(_checkpointer(workdir, config)))
        state, start = _restore(run, checkpointer)
        compiled, compile_time = _compile(run, state, start)
        log = stack.enter_context(contextlib.closing(_run_log(run, start)))
        progress = stack.enter_context(_progress_bar(run, start))
        blocks = _Blocks(run, log, progress, checkpointer)
        state, train_time = _run_blocks(run, blocks, compiled, state, start)
        progress.close()
        checkpointer.close()
        test = blocks.evaluate(state.params, run.schedule.last_step)
        log.close()
        times = _Times(compile_time, train_time, blocks.eval_time)
        return _report(run, start, test, times)


def _set_up(
    config: Config, workdir: str, *, name: str, overwrite: bool, print_fn, mnist_dir, data_dir
) -> _Run:
    """Prepare ``workdir`` for the run, load its data and build its model."""
    main = parallel.is_main_process()
    shards = feed_lib.num_shards(config.data_shards, parallel.process_count())
    workdir_lib.prepare(workdir, name, config, overwrite, main)
    parallel.sync("jaxrnn:workdir")  # the others wait for process 0 to (re)create it
    t_data = time.perf_counter()
    mesh = steps.make_mesh()
    steps.check_batch_size(config.batch_size, mesh)
    task = make_task(config, mesh, shards=shards, mnist_dir=mnist_dir, data_dir=data_dir)
    last_step = total_steps(config, task.num_train)
    data_time = time.perf_counter() - t_data
    tx = optimizers.from_config(config, last_step)
    say = print_fn if main else _silent
    schedule = _Schedule.of(config, last_step)
    return _Run(config, workdir, name, main, say, mesh, task, tx, schedule, data_time)


def _silent(*args, **kwargs) -> None:
    pass


def _checkpointer(workdir: str, config: Config) -> Checkpointer:
    directory = workdir_lib.as_path(workdir) / "checkpoints"
    return Checkpointer(str(directory), config.keep_checkpoints)


def _restore(run: _Run, checkpointer: Checkpointer) -> tuple[TrainState, int]:
    """``(state, step)``: the latest checkpoint's, the feed moved on to it; else step 0's."""
    state = init_state(run.config, run.task.model, run.tx, run.task.input_size, run.mesh)
    start = checkpointer.latest_step()
    if start is None:
        return state, 0
    state, data_state = checkpointer.restore(state)
    feed = run.task.feed
    batches, saved_shards = feed.restore(data_state)
    if batches != start:
        raise ValueError(f"the checkpoint at step {start} holds the data state of {batches}")
    run.say(f"resuming from the checkpoint at step {start}")
    if saved_shards != feed.shards:
        run.say(
            f"the run was fed from {saved_shards} data shards and now from {feed.shards}: the "
            "batches from here on differ from the ones it would have drawn (a run started "
            "with --set data_shards=N keeps one order on any process count dividing N)"
        )
    return state, start


def _compile(run: _Run, state: TrainState, start: int) -> tuple[dict[int, Any], float]:
    """``({K: compiled block of K steps}, seconds)`` for every block size from ``start`` on."""
    t_compile = time.perf_counter()
    train_block = steps.make_train_block(run.task.model, run.tx)
    sharding = steps.batch_sharding(run.mesh, leading=1)
    rows = run.task.feed.row_specs()
    compiled = {}
    for k in sorted(set(run.schedule.block_sizes(start))):
        abstract = {
            key: jax.ShapeDtypeStruct(
                (k, run.config.batch_size, *row.shape), row.dtype, sharding=sharding
            )
            for key, row in rows.items()
        }
        compiled[k] = train_block.lower(state, abstract).compile()  # type: ignore[attr-defined]
    return compiled, time.perf_counter() - t_compile


def _run_log(run: _Run, start: int) -> runlog.RunLog | runlog.NoLog:
    if not run.main:
        return runlog.NoLog()
    return runlog.RunLog(run.workdir, start, run.schedule.last_step)


def _progress_bar(run: _Run, start: int) -> tqdm:
    """The steps' progress on a terminal (process 0's stderr); disabled elsewhere."""
    return tqdm(
        total=run.schedule.last_step,
        initial=start,
        disable=not (run.main and sys.stderr.isatty()),
        unit="step",
        leave=False,
    )


class _Block(NamedTuple):
    """A dispatched block of ``size`` steps ending at ``end``: its metrics (device arrays,
    ``[size]`` each) and the batches it reads."""

    end: int
    size: int
    metrics: Any
    data: dict


def _run_blocks(
    run: _Run, blocks: _Blocks, compiled: dict, state: TrainState, start: int
) -> tuple[TrainState, float]:
    """Train from ``start`` to the last step; ``(state, seconds training)``.

    A block is checked and logged while the next one runs, and before evaluating or saving
    after it. Saves are complete when this returns.
    """
    schedule, feed = run.schedule, run.task.feed
    sizes, step = schedule.block_sizes(start), start
    t_train = blocks.start_clock()
    with contextlib.closing(feed.blocks(sizes, run.mesh)) as batches:
        for k, data in zip(sizes, batches, strict=True):
            state, metrics = compiled[k](state, data)
            step += k
            blocks.dispatched(_Block(step, k, metrics, data))
            evaluates, saves = schedule.evaluates(step), schedule.checkpoints(step)
            if evaluates or saves:
                blocks.finish_pending()
            if saves:
                _checkpoint(blocks.checkpointer, state, feed, step)
            if evaluates and step != schedule.last_step:
                blocks.evaluate(state.params, step)
            if saves:
                blocks.log.flush()  # the rows up to the checkpoint are kept whatever happens
    jax.block_until_ready(state)
    blocks.checkpointer.wait()
    return state, time.perf_counter() - t_train - blocks.eval_time


def _checkpoint(checkpointer: Checkpointer, state: TrainState, feed, step: int) -> None:
    """Save ``state`` and the feed's position after ``step`` (asynchronously)."""
    host_state = jax.tree.map(np.copy, parallel.to_host(state))
    checkpointer.save(host_state, feed.state(step))


class _Blocks:
    """The finished blocks of a run: checked for non-finite values, logged, displayed.

    Holds the train rows not yet averaged, the block not yet checked, the clock of the block
    running and the seconds spent evaluating.
    """

    def __init__(self, run: _Run, log, progress: tqdm, checkpointer: Checkpointer):
        self.run, self.log, self.progress, self.checkpointer = run, log, progress, checkpointer
        self.window: list[np.ndarray] = []
        self.pending: _Block | None = None
        self.clock = time.perf_counter()
        self.eval_time = 0.0

    def start_clock(self) -> float:
        self.clock = time.perf_counter()
        return self.clock

    def dispatched(self, block: _Block) -> None:
        """``block`` is running: finish the previous one meanwhile."""
        self.finish_pending()
        self.pending = block

    def finish_pending(self) -> None:
        if self.pending is not None:
            now = time.perf_counter()
            self._finish(self.pending, now - self.clock)
            self.pending, self.clock = None, now

    def _finish(self, block: _Block, seconds: float) -> None:
        """Check, log and display ``block`` (which took ``seconds``); its memory is reused."""
        host = parallel.to_host(block.metrics)
        self.run.task.feed.recycle(block.data)
        _check_finite(host, block, self.checkpointer.latest_step())
        first = block.end - block.size + 1
        for i, step in enumerate(range(first, block.end + 1)):
            self.window.append(np.array([host[k][i] for k in ("loss", "accuracy", "grad_norm")]))
            if self.run.schedule.logs(step):
                loss, acc, gnorm = np.mean(self.window, axis=0)
                self.log.write(step, "train", {"loss": loss, "accuracy": acc, "grad_norm": gnorm})
                self.window.clear()
        rate = block.size / max(seconds, 1e-9)
        self.progress.set_postfix(
            loss=f"{host['loss'][-1]:.4f}",
            acc=f"{host['accuracy'][-1]:.3f}",
            steps_per_s=f"{rate:.0f}",
        )
        self.progress.update(block.size)

    def evaluate(self, params, step: int) -> dict:
        """The test metrics of ``params``, logged at ``step``; the time counts as evaluation."""
        t_eval = time.perf_counter()
        test = self.run.task.evaluate(params)
        self.log.write(step, "test", test)
        self.eval_time += time.perf_counter() - t_eval
        self.clock = time.perf_counter()
        return test


def _check_finite(host: dict, block: _Block, last_good: int | None) -> None:
    bad = ~(np.isfinite(host["loss"]) & np.isfinite(host["grad_norm"]))
    if bad.any():
        first = block.end - block.size + int(np.argmax(bad)) + 1
        raise NonFiniteError(
            f"non-finite loss or gradient at step {first} (loss {host['loss'][bad][0]}); "
            f"stopping. The last good checkpoint is step {last_good}."
        )


def _report(run: _Run, start: int, test: dict, times: _Times) -> dict:
    """Write ``report.json`` (process 0) and print its summary line; returns the report."""
    config, last_step = run.config, run.schedule.last_step
    report = {
        "config": run.name,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "steps": last_step,
        "resumed_from": start,
        "train_time_s": times.train,
        "compile_time_s": times.compile,
        "data_time_s": run.data_time,
        "eval_time_s": times.eval,
        "device_count": run.mesh.devices.size,
        "device_kind": jax.devices()[0].device_kind,
        "dtype": config.dtype,
        "param_dtype": config.param_dtype,
        **run.task.report,
        **_test_fields(test),
    }
    earlier = workdir_lib.read_report(run.workdir) if start == last_step else None
    if earlier is not None:
        # Nothing was trained in this process: keep the times of the run that did the work.
        for key in ("train_time_s", "compile_time_s", "data_time_s", "resumed_from"):
            if key in earlier:
                report[key] = earlier[key]
    if run.main:
        workdir_lib.write_report(run.workdir, report)
    run.say(summary_line(report))
    return report


def _test_fields(test: dict) -> dict:
    """The test metrics other than loss and accuracy, as report fields (``test_bpc``)."""
    return {f"test_{k}": v for k, v in test.items() if k not in ("loss", "accuracy")}


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
    check_config(config)
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
    directory = str(workdir_lib.as_path(workdir) / "checkpoints")
    with contextlib.closing(Checkpointer(directory, read_only=True)) as checkpointer:
        state, _ = checkpointer.restore(like)
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
