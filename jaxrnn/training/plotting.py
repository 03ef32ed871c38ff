"""Loss and accuracy curves of a run, train and test, as one PNG."""

from __future__ import annotations

import io
import os

from jaxrnn.training import lock as lock_lib
from jaxrnn.training import workdir as workdir_lib
from jaxrnn.training.runlog import read_metrics


def plot_run(workdir: str, path: str | None = None) -> str:
    """Draw the metrics rows of ``workdir`` into ``path`` (default ``workdir/curves.png``).

    Both may be on any ``epath`` file system (``gs://`` included): the PNG is rendered in
    memory and written whole. Writing into ``workdir`` takes its lock
    (:mod:`jaxrnn.training.lock`), so a run in progress refuses it; a ``path`` outside
    ``workdir`` draws a run in progress.
    """
    root = workdir_lib.as_path(workdir)
    out = workdir_lib.as_path(path) if path else root / "curves.png"
    inside = path is None or os.path.abspath(out).startswith(
        os.path.join(os.path.abspath(root), "")
    )
    lock = lock_lib.acquire(workdir, "plot", create=False) if inside else None
    try:
        return _plot(workdir, out)
    finally:
        if lock is not None:
            lock.release()


def _plot(workdir: str, out) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    if not rows:
        raise FileNotFoundError(f"{workdir} has no metrics rows to plot")
    root = workdir_lib.as_path(workdir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("test", "o-")):
            points = [(r["step"], r[metric]) for r in rows if r["split"] == split and metric in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle(root.name)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    workdir_lib.write_bytes(out, png.getvalue())
    return str(out)
