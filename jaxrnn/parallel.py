"""Devices and processes: one code path for a laptop CPU, a GPU box and a Cloud TPU pod slice.

jaxrnn's training is plain data parallelism expressed with JAX's own machinery: a
``jax.sharding.Mesh`` with a ``data`` axis over every device of every process (and a ``model``
axis, size 1 unless asked for), batches sharded along ``data`` with ``NamedSharding``,
parameters and optimizer state replicated, and ``jax.jit`` (GSPMD) inserting the gradient
all-reduce. Nothing here loops over devices; the same jitted step runs on 1 or N devices.

Multi-process runs (several hosts, or several processes on one host) follow JAX's model:

1. every process runs the same program and calls ``initialize()`` first; it calls
   ``jax.distributed.initialize`` when the run is multi-process (Cloud TPU is detected; elsewhere
   the coordinator address, process count and id come from arguments or the
   ``JAXRNN_COORDINATOR``, ``JAXRNN_NUM_PROCESSES``, ``JAXRNN_PROCESS_ID`` variables);
2. each process reads only its own shard of the data (``process_index()`` of
   ``process_count()``), a per-process batch of ``global_batch_size // process_count()`` rows;
3. ``global_batch`` assembles the per-process batches into global arrays
   (``jax.make_array_from_process_local_data``): process ``p`` supplies rows
   ``[p * b, (p + 1) * b)`` of the global batch, because the mesh orders devices by process;
4. a metric computed inside a jitted step over a global batch is already the global value;
   host-side accumulators are combined with ``process_sum`` and fetched with ``to_host``;
5. only the main process (``is_main_process()``) writes logs and plots; every process takes
   part in orbax checkpoint saves and restores (orbax coordinates them itself).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
MODEL = "model"

ENV_COORDINATOR = "JAXRNN_COORDINATOR"
ENV_NUM_PROCESSES = "JAXRNN_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXRNN_PROCESS_ID"
# "auto": let jax.distributed.initialize() detect the cluster (Cloud TPU, SLURM, Open MPI,
# Kubernetes); "off": never initialize; unset: explicit settings, else Cloud TPU detection.
ENV_DISTRIBUTED = "JAXRNN_DISTRIBUTED"

PyTree = Any
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- processes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _on_cloud_tpu_vm() -> bool:
    """Whether this is a Cloud TPU VM with ``libtpu`` installed (``pip install 'jax[tpu]'``).

    Checked without starting a JAX backend (``jax.distributed.initialize`` must come first):
    TPU chips show up as ``/dev/accel*`` (v2-v4) or ``/dev/vfio/<n>`` (v5e and later).
    """
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start ``jax.distributed`` when this run is multi-process; call before any JAX work.

    Settings come from the arguments, else from ``JAXRNN_COORDINATOR`` (``host:port`` of
    process 0), ``JAXRNN_NUM_PROCESSES`` and ``JAXRNN_PROCESS_ID``. With none of them set, a
    Cloud TPU VM is detected and ``jax.distributed.initialize()`` finds its pod slice from
    the TPU metadata (a single-host TPU VM is then a one-process run, which is fine);
    ``JAXRNN_DISTRIBUTED=auto`` does the same on SLURM, Open MPI or Kubernetes, and
    ``JAXRNN_DISTRIBUTED=off`` never initializes. Anything else (a laptop, one GPU box) is a
    single-process run and nothing happens, so the same command works everywhere.

    Returns:
      True if ``jax.distributed`` is initialized when this returns (by this call or before).

    Raises:
      ValueError: incomplete or inconsistent settings (e.g. a coordinator without a process
        count, or ``process_id`` outside ``[0, num_processes)``).
    """
    if jax.distributed.is_initialized():
        return True
    mode = os.environ.get(ENV_DISTRIBUTED, "").strip().lower()
    if mode not in ("", "auto", "off"):
        raise ValueError(f"{ENV_DISTRIBUTED}={mode!r}: expected 'auto', 'off' or unset")
    if mode == "off":
        return False

    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)

    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if num_processes is None:
            raise ValueError(
                f"a multi-process run needs the number of processes (num_processes or "
                f"{ENV_NUM_PROCESSES}); got coordinator={coordinator_address!r}, "
                f"process_id={process_id!r}"
            )
        if num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {num_processes}")
        if num_processes == 1 and process_id in (None, 0):
            return False  # explicitly one process: nothing to coordinate
        if coordinator_address is None or process_id is None:
            raise ValueError(
                f"a {num_processes}-process run needs the coordinator address (host:port of "
                f"process 0; coordinator_address or {ENV_COORDINATOR}) and this process's id "
                f"(process_id or {ENV_PROCESS_ID}); got coordinator={coordinator_address!r}, "
                f"process_id={process_id!r}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
        _log.info(
            "jax.distributed.initialize(%s, %d, %d)", coordinator_address, num_processes, process_id
        )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True

    if mode == "auto" or _on_cloud_tpu_vm():
        _log.info("jax.distributed.initialize() with cluster auto-detection")
        jax.distributed.initialize()
        return True
    return False


def process_index() -> int:
    """This process's index in ``[0, process_count())``; its shard of the data."""
    return jax.process_index()


def process_count() -> int:
    """The number of processes in the run (1 unless ``initialize`` started a multi-process run)."""
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, plots and other single-writer files."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier: every process waits here until all have arrived (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------- mesh


def make_mesh(model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: every device of every process).

    Devices are ordered by ``(process_index, id)``, so the ``data`` axis visits each process's
    devices in one contiguous run: process ``p``'s per-process batch is rows
    ``[p * b, (p + 1) * b)`` of the global batch, and a ``model`` group (``model`` consecutive
    devices) never spans two processes.

    Args:
      model: size of the ``model`` axis, over which ``shard_params`` splits large parameters
        (1: every parameter replicated, pure data parallelism). Must divide the number of
        devices of each process.
      devices: the devices to use (e.g. ``jax.devices()[:1]`` for a one-device run).

    Returns:
      A ``Mesh`` with axes ``("data", "model")`` of sizes ``(n_devices // model, model)``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    if model < 1:
        raise ValueError(f"model must be >= 1, got {model}")
    devices.sort(key=lambda d: (d.process_index, d.id))
    per_process: dict[int, int] = {}
    for d in devices:
        per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
    if len(set(per_process.values())) != 1:
        raise ValueError(f"every process must bring as many devices; got {per_process}")
    local = next(iter(per_process.values()))
    if local % model:
        raise ValueError(
            f"the model axis ({model}) must divide the devices of each process ({local}), so "
            "that a model group never spans two processes"
        )
    grid = np.array(devices, dtype=object).reshape(len(devices) // model, model)
    return Mesh(grid, (DATA, MODEL), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_size(mesh: Mesh) -> int:
    """The number of batch shards: the size of the mesh's ``data`` axis."""
    return mesh.shape[DATA]


def check_global_batch(global_batch_size: int, mesh: Mesh | None = None) -> int:
    """Check that a global batch splits evenly; return the per-process batch size.

    The global batch is split over the ``data`` axis (every device of every process, divided
    by the ``model`` axis), so ``global_batch_size`` must be a multiple of its size.

    Args:
      global_batch_size: rows per step summed over all processes.
      mesh: the training mesh (default: ``make_mesh()``).

    Returns:
      ``global_batch_size // process_count()``: the rows each process reads per step.

    Raises:
      ValueError: the batch does not divide by the data-parallel device count, naming both
        and the nearest valid sizes.
    """
    mesh = make_mesh() if mesh is None else mesh
    n = data_size(mesh)
    if global_batch_size < 1 or global_batch_size % n:
        lower = max(n, global_batch_size // n * n)
        upper = (global_batch_size // n + 1) * n
        hint = f"{lower} or {upper}" if lower != upper else f"{upper}"
        raise ValueError(
            f"global batch size {global_batch_size} does not divide by the {n} data-parallel "
            f"devices ({mesh.devices.size} devices over {_process_count(mesh)} process(es), "
            f"model axis {mesh.shape[MODEL]}); use a multiple of {n}, e.g. {hint}"
        )
    return global_batch_size // _process_count(mesh)


def _process_count(mesh: Mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


# --------------------------------------------------------------------------- arrays


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Batch axis ``axis`` split over ``data`` (1 for blocks ``[steps, batch, ...]``)."""
    return NamedSharding(mesh, P(*([None] * axis), DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full value on every device of the mesh."""
    return NamedSharding(mesh, P())


def global_batch(local_batch: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
    """Assemble each process's per-process batch into global arrays sharded over ``data``.

    Args:
      local_batch: a pytree of arrays (NumPy or JAX) with the same size ``b`` along ``axis``:
        this process's rows, e.g. ``[b, time, features]`` (``axis=0``) or a block of steps
        ``[steps, b, ...]`` (``axis=1``). With one process it is the whole global batch.
      mesh: the training mesh (``make_mesh``).
      axis: the batch axis of every leaf.

    Returns:
      The same pytree of ``jax.Array``, ``b`` multiplied by ``process_count()`` along ``axis``,
      which is sharded over ``data``; process ``p``'s rows are ``[p * b, (p + 1) * b)``.

    Raises:
      ValueError: leaves disagree on ``b``, or ``b`` does not split over this process's
        data-parallel devices.
    """
    sharding = batch_sharding(mesh, axis)
    leaves = jax.tree.leaves(local_batch)
    sizes = {np.shape(x)[axis] if np.ndim(x) > axis else None for x in leaves}
    if len(sizes) > 1 or None in sizes:
        raise ValueError(f"every batch leaf needs the same batch size on axis {axis}, got {sizes}")
    processes = _process_count(mesh)
    local_shards = data_size(mesh) // processes
    for b in (s for s in sizes if s is not None):
        if b % local_shards:
            raise ValueError(
                f"per-process batch {b} does not divide by this process's {local_shards} "
                f"data-parallel devices (global batch {b * processes} over {data_size(mesh)})"
            )

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        shape = list(x.shape)
        shape[axis] *= processes
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree.map(put, local_batch)


def local_rows(global_host_batch: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
    """This process's rows of a global batch that every process holds on the host.

    For inputs every process can compute whole and identically (e.g. the example indices of
    a seeded sampler over a dataset every process holds): ``global_batch(local_rows(x, mesh),
    mesh)`` equals ``x``, laid out over the mesh, whatever the process count.

    Args:
      global_host_batch: a pytree of arrays with the global batch size ``B`` along ``axis``.
      mesh: the training mesh.
      axis: the batch axis.

    Returns:
      Each leaf's rows ``[p * B / P, (p + 1) * B / P)`` along ``axis``, ``p`` this process's
      index and ``P`` the process count.
    """
    processes = _process_count(mesh)
    p = jax.process_index()

    def cut(x):
        x = np.asarray(x)
        b = x.shape[axis] // processes
        return np.take(x, np.arange(p * b, (p + 1) * b), axis=axis)

    return jax.tree.map(cut, global_host_batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Copy a pytree (parameters, optimizer state) to every device of ``mesh``.

    Every process must pass the same values (e.g. made from the same seed); each process
    fills only its own devices, so no host-to-host transfer happens.
    """
    return _put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def shard_params(tree: PyTree, mesh: Mesh, *, min_size: int = 2**18) -> PyTree:
    """Replicate small leaves; split large ones along the ``model`` axis.

    A leaf with at least ``min_size`` elements is split along its last axis that divides by
    the ``model`` axis size; ``jax.jit`` then inserts the gathers its uses need. This saves
    memory for large embedding or output tables; for recurrent weights it costs a gather every
    step, which is why the default mesh has ``model=1`` (then this equals ``replicate``).
    """
    return _put(tree, param_shardings(tree, mesh, min_size=min_size))


def param_shardings(tree: PyTree, mesh: Mesh, *, min_size: int = 2**18) -> PyTree:
    """The ``NamedSharding`` of each leaf that ``shard_params`` would use (for ``jit``)."""
    m = mesh.shape[MODEL]

    def spec(x):
        shape = np.shape(x)
        if m > 1 and int(np.prod(shape)) >= min_size:
            for axis in reversed(range(len(shape))):
                if shape[axis] % m == 0:
                    return NamedSharding(mesh, P(*([None] * axis), MODEL))
        return replicated(mesh)

    return jax.tree.map(spec, tree)


def _put(tree: PyTree, shardings: PyTree) -> PyTree:
    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = to_host(x) if isinstance(x, jax.Array) else np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


# --------------------------------------------------------------------------- metrics


def to_host(tree: PyTree) -> PyTree:
    """Fetch global arrays as NumPy on every process (what logging and checks need).

    Replicated arrays (metrics out of a jitted step, parameters) are read from a local copy;
    arrays sharded across processes are gathered from all of them (every process must call).
    """

    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


def process_sum(tree: PyTree) -> PyTree:
    """Sum host-side values (NumPy or scalars) over processes; every process gets the sum.

    For accumulators kept outside ``jit`` (e.g. correct predictions and counts over this
    process's evaluation shard). Every process must call it, in the same order.
    """
    tree = jax.tree.map(np.asarray, tree)
    if jax.process_count() == 1:
        return tree
    gathered = multihost_utils.process_allgather(tree)  # each leaf [process_count, ...]
    return jax.tree.map(lambda x: np.asarray(x).sum(axis=0), gathered)


def process_max(tree: PyTree) -> PyTree:
    """The largest value over processes of host-side values (see ``process_sum``)."""
    tree = jax.tree.map(np.asarray, tree)
    if jax.process_count() == 1:
        return tree
    gathered = multihost_utils.process_allgather(tree)  # each leaf [process_count, ...]
    return jax.tree.map(lambda x: np.asarray(x).max(axis=0), gathered)


def process_mean(tree: PyTree) -> PyTree:
    """The mean over processes of host-side values (see ``process_sum``)."""
    return jax.tree.map(lambda x: x / jax.process_count(), process_sum(tree))
