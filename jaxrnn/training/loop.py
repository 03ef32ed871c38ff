"""The train loop: blocks of compiled steps, metrics, checkpoints, exact resume, final report.

A work directory holds::

    config.json      the experiment's name and resolved config (a rerun must match it)
    metrics.jsonl    one JSON object per line: {"step", "split": "train"|"test", "loss", ...}
    tb/              TensorBoard events of the same metrics
    checkpoints/     orbax step directories (state and data-iterator state), the last K
    report.json      final test metrics, times, device count

The training set lives on the devices (replicated); the data iterator hands out *indices*
(``BatchIterator`` over ``{"index": arange(N)}``), so a block of ``steps_per_call`` steps costs
one small host-to-device transfer and one compiled call. Checkpoints land on block boundaries
(``checkpoint_every`` is rounded up to a multiple of the block) and at the end; step ``s``
draws its randomness from ``fold_in(key, s)``, so a resumed run ends with exactly the
parameters of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxrnn import parallel
from jaxrnn.configs.base import Config
from jaxrnn.models import Model
from jaxrnn.training import optimizers, steps
from jaxrnn.training import state as state_lib
from jaxrnn.training.checkpointing import Checkpointer


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class WorkdirError(RuntimeError):
    """The work directory holds a different run."""


def load_split(config: Config, split: str, *, mnist_dir=None, data_dir=None) -> dict:
    """The split's arrays, cut to ``train_examples``/``test_examples`` when those are set."""
    from jaxrnn.data import load

    arrays = load(config.dataset, split, data_dir=data_dir, mnist_dir=mnist_dir)
    limit = config.train_examples if split == "train" else config.test_examples
    if limit:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    return arrays


def build_model(config: Config, train: dict, test: dict | None = None) -> Model:
    """The :class:`Model` of ``config``; the class count comes from the labels."""
    if "labels" in train:
        seen = [train["labels"]] + ([test["labels"]] if test is not None else [])
        task, outputs = "classification", int(max(int(a.max()) for a in seen)) + 1
    else:
        task, outputs = "regression", 1
    return Model(
        cell=config.cell,
        hidden_size=config.hidden_size,
        num_outputs=outputs,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        readout=config.readout,
        task=task,
        activation=config.activation,
        forget_bias=config.forget_bias,
        forget_bias_init=config.forget_bias_init,
        masked=config.masked,
        dropout=config.dropout,
        input_dropout=config.input_dropout,
        recurrent_dropout=config.recurrent_dropout,
        head_init=config.head_init,
        unroll=config.unroll,
    )


def total_steps(config: Config, num_train: int) -> int:
    if config.num_steps > 0:
        return config.num_steps
    if config.num_epochs <= 0:
        raise ValueError("set num_steps or num_epochs to a positive number")
    return config.num_epochs * (num_train // config.batch_size)


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


def init_state(config: Config, model: Model, tx, input_size: int, mesh):
    key = jax.random.key(config.seed)
    k_params, k_train = jax.random.split(key)
    state = state_lib.create(model.init(k_params, input_size), tx, k_train)
    return parallel.replicate(state, mesh)


def prepare_workdir(workdir: str, name: str, config: Config, overwrite: bool) -> None:
    """Create ``workdir`` for this run, or accept it if it holds the same run."""
    path = os.path.join(workdir, "config.json")
    record = {"name": name, "config": config.to_dict()}
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        if existing != record:
            if not overwrite:
                raise WorkdirError(
                    f"{workdir} holds another run (config {existing.get('name')!r} with "
                    "different settings); pass --overwrite to replace it, or use another --workdir"
                )
            if parallel.is_main_process():
                shutil.rmtree(workdir)
    if not parallel.is_main_process():
        return  # process 0 alone writes the work directory's files
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_metrics(workdir: str, step: int, last_step: int) -> None:
    """Drop rows past ``step`` (written after the checkpoint a resumed run starts from), and
    the final test row of a finished run (evaluated again)."""
    rows = [
        r
        for r in read_metrics(workdir)
        if r["step"] < step or (r["step"] == step and (r["split"] == "train" or step < last_step))
    ]
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


class _NoLogger:
    """What processes other than 0 log: nothing (their metrics are the same global values)."""

    def write(self, step: int, split: str, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _Logger:
    """Metrics to JSON lines and TensorBoard."""

    def __init__(self, workdir: str, start_step: int):
        from tensorboardX import SummaryWriter

        self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step or None)

    def write(self, step: int, split: str, values: dict) -> None:
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for name, value in values.items():
            self._tb.add_scalar(f"{split}/{name}", float(value), int(step))

    def close(self) -> None:
        self._file.close()
        self._tb.close()


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
    """Train (or resume) the run of ``config`` in ``workdir``; returns the report dict."""
    if config.steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {config.steps_per_call}")
    main = parallel.is_main_process()  # the one process that prints and writes logs
    if not main:
        print_fn = lambda *args, **kwargs: None
    prepare_workdir(workdir, name, config, overwrite)
    parallel.sync("jaxrnn:workdir")  # the others wait for process 0 to (re)create it

    t_data = time.perf_counter()
    train_arrays = load_split(config, "train", mnist_dir=mnist_dir, data_dir=data_dir)
    test_arrays = load_split(config, "test", mnist_dir=mnist_dir, data_dir=data_dir)
    model = build_model(config, train_arrays, test_arrays)
    mesh = steps.make_mesh()
    steps.check_batch_size(config.batch_size, mesh)
    num_train = len(train_arrays["inputs"])
    if num_train < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} examples")
    last_step = total_steps(config, num_train)
    keys = _model_keys(model, train_arrays)
    device_data = parallel.replicate({k: train_arrays[k] for k in keys}, mesh)
    data_time = time.perf_counter() - t_data

    from jaxrnn.data import BatchIterator

    iterator = BatchIterator(
        {"index": np.arange(num_train, dtype=np.int32)}, config.batch_size, seed=config.seed
    )
    tx = optimizers.from_config(config, last_step)
    state = init_state(config, model, tx, train_arrays["inputs"].shape[-1], mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    start = checkpointer.latest_step()
    if start is not None:
        state, data_state = checkpointer.restore(state)
        iterator.set_state(data_state)
        if main:
            _truncate_metrics(workdir, start, last_step)
        print_fn(f"resuming from the checkpoint at step {start}")
    start = start or 0

    block = config.steps_per_call
    ckpt_every = _round_up(config.checkpoint_every, block)
    eval_every = _round_up(config.eval_every, block)
    log_every = max(config.log_every, 1)
    index_sharding = steps.batch_sharding(mesh, leading=1)
    train_block = steps.make_train_block_indexed(model, tx)
    eval_step = steps.make_eval_step(model)

    def next_indices(k):
        return np.stack([next(iterator)["index"] for _ in range(k)])

    # Compile every block size this run needs before the clock starts.
    t_compile = time.perf_counter()
    sizes = {min(block, last_step - s) for s in range(start, last_step, block)}
    compiled = {}
    for k in sorted(sizes):
        abstract_idx = jax.ShapeDtypeStruct(
            (k, config.batch_size), jnp.int32, sharding=index_sharding
        )
        compiled[k] = train_block.lower(  # type: ignore[attr-defined]  # a jitted function
            state, device_data, abstract_idx
        ).compile()
    compile_time = time.perf_counter() - t_compile

    logger = _Logger(workdir, start) if main else _NoLogger()
    bar = tqdm(
        total=last_step,
        initial=start,
        disable=not (main and sys.stderr.isatty()),
        unit="step",
        leave=False,
    )
    window: list[np.ndarray] = []
    eval_time = 0.0
    step = start

    def process(end_step: int, k: int, metrics, seconds: float) -> None:
        """Check, log and display one finished block of ``k`` steps ending at ``end_step``."""
        host = parallel.to_host(metrics)
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
                logger.write(s, "train", {"loss": loss, "accuracy": acc, "grad_norm": gnorm})
                window.clear()
        rate = k / max(seconds, 1e-9)
        bar.set_postfix(
            loss=f"{host['loss'][-1]:.4f}",
            acc=f"{host['accuracy'][-1]:.3f}",
            steps_per_s=f"{rate:.0f}",
        )
        bar.update(k)

    try:
        t_train = time.perf_counter()
        pending = None
        t_block = t_train
        while step < last_step:
            k = min(block, last_step - step)
            # Every process draws the same global indices and feeds only its rows.
            local_idx = parallel.local_rows(next_indices(k), mesh, axis=1)
            idx = parallel.global_batch(local_idx, mesh, axis=1)
            state, metrics = compiled[k](state, device_data, idx)
            step += k
            data_state = iterator.get_state()
            if pending is not None:  # the previous block, while this one runs
                now = time.perf_counter()
                process(*pending, now - t_block)
                t_block = now
            pending = (step, k, metrics)
            do_eval = step == last_step or (eval_every and step % eval_every == 0)
            do_ckpt = step == last_step or (ckpt_every and step % ckpt_every == 0)
            if do_eval or do_ckpt:
                now = time.perf_counter()
                process(*pending, now - t_block)
                pending, t_block = None, now
            if do_ckpt:
                host_state = jax.tree.map(np.copy, parallel.to_host(state))
                checkpointer.save(host_state, data_state)
            if do_eval and step != last_step:
                t_eval = time.perf_counter()
                test = evaluate(
                    model, eval_step, state.params, test_arrays, config.eval_batch_size, mesh
                )
                logger.write(step, "test", test)
                eval_time += time.perf_counter() - t_eval
                t_block = time.perf_counter()
        jax.block_until_ready(state)
        checkpointer.wait()
        train_time = time.perf_counter() - t_train - eval_time
    except NonFiniteError:
        bar.close()
        logger.close()
        checkpointer.close()
        raise
    bar.close()
    checkpointer.close()

    t_eval = time.perf_counter()
    test = evaluate(model, eval_step, state.params, test_arrays, config.eval_batch_size, mesh)
    final_eval_time = time.perf_counter() - t_eval
    logger.write(last_step, "test", test)
    logger.close()
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
        "test_examples": len(test_arrays["inputs"]),
    }
    previous = os.path.join(workdir, "report.json")
    if start == last_step and os.path.exists(previous):
        # Nothing was trained in this process: keep the times of the run that did the work.
        with open(previous) as f:
            earlier = json.load(f)
        for key in ("train_time_s", "compile_time_s", "data_time_s", "resumed_from"):
            if key in earlier:
                report[key] = earlier[key]
    if main:
        write_report(workdir, report)
    print_fn(summary_line(report))
    return report


def write_report(workdir: str, report: dict) -> None:
    path = os.path.join(workdir, "report.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)


def summary_line(report: dict) -> str:
    line = (
        f"{report['config']}: test_accuracy={report['test_accuracy']:.4f} "
        f"test_loss={report['test_loss']:.4f} steps={report['steps']}"
    )
    if "train_time_s" in report:
        line += (
            f" train_time={report['train_time_s']:.2f}s compile_time="
            f"{report['compile_time_s']:.2f}s"
        )
    return line + f" devices={report['device_count']}"


def load_run(workdir: str) -> tuple[str, Config]:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no run (no config.json)")
    with open(path) as f:
        record = json.load(f)
    return record["name"], Config.from_dict(record["config"])


def evaluate_workdir(workdir: str, *, mnist_dir=None, data_dir=None, print_fn=print) -> dict:
    """Evaluate the latest checkpoint of the run in ``workdir`` on the test split."""
    name, config = load_run(workdir)
    train_arrays = load_split(config, "train", mnist_dir=mnist_dir, data_dir=data_dir)
    test_arrays = load_split(config, "test", mnist_dir=mnist_dir, data_dir=data_dir)
    model = build_model(config, train_arrays, test_arrays)
    mesh = steps.make_mesh()
    tx = optimizers.from_config(config, total_steps(config, len(train_arrays["inputs"])))
    like = init_state(config, model, tx, train_arrays["inputs"].shape[-1], mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    state, _ = checkpointer.restore(like)
    checkpointer.close()
    test = evaluate(
        model, steps.make_eval_step(model), state.params, test_arrays, config.eval_batch_size, mesh
    )
    report = {
        "config": name,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "steps": int(state.step),
        "device_count": mesh.devices.size,
    }
    if parallel.is_main_process():
        print_fn(summary_line(report))
    return report
