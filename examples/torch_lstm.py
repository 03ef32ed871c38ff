"""Load a PyTorch LSTM's weights into jaxrnn and check that both compute the same outputs.

A two-layer bidirectional ``torch.nn.LSTM`` runs a padded batch of variable-length sequences
(``pack_padded_sequence``, then ``pad_packed_sequence``); ``jaxrnn.interop.from_torch`` reads
its ``state_dict()`` layer by layer and direction by direction into a jaxrnn ``Stack`` of two
bidirectional layers; the outputs and the final ``h_n``/``c_n`` must agree to float rounding.

With torch installed (``pip install torch``) the PyTorch side runs here. Without it, the
script uses the weights, inputs and outputs that a real PyTorch LSTM produced and that are
stored in ``tests/golden/torch_lstm.npz`` (made by ``tests/golden/make_golden.py``).

    python examples/torch_lstm.py
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn import interop

GOLDEN = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "torch_lstm.npz"


def run_torch(batch: int = 4, steps: int = 7, features: int = 5, hidden: int = 6) -> dict:
    """A fresh PyTorch LSTM on a padded batch: its state dict, inputs and outputs (NumPy)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([steps, 3, 1, steps - 2])
    x = torch.randn(batch, steps, features)
    with torch.no_grad():
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        ys, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
    return {
        "source": f"torch {torch.__version__}, run here",
        "state_dict": {k: v.numpy() for k, v in lstm.state_dict().items()},
        "x": x.numpy(),
        "lengths": lengths.numpy().astype(np.int32),
        "ys": ys.numpy(),
        "h": h.numpy(),
        "c": c.numpy(),
        "hidden": hidden,
    }


def read_golden() -> dict:
    """The same quantities, from the stored run of a real PyTorch LSTM."""
    g = np.load(GOLDEN)
    prefix = "bi2/sd/"
    return {
        "source": f"{g['framework_version']}, stored in {GOLDEN.name}",
        "state_dict": {k[len(prefix) :]: g[k] for k in g.files if k.startswith(prefix)},
        "x": g["x"],
        "lengths": g["lengths"],
        "ys": g["bi2/masked/ys"],
        "h": g["bi2/masked/h"],
        "c": g["bi2/masked/c"],
        "hidden": int(g["hidden_size"]),
    }


def main(small: bool = False, use_torch: bool | None = None) -> dict:
    del small  # already small
    if use_torch is None:
        try:
            import torch  # noqa: F401

            use_torch = True
        except ImportError:
            use_torch = False
    ref = run_torch() if use_torch else read_golden()
    hidden, sd = ref["hidden"], ref["state_dict"]

    layer = jaxrnn.Bidirectional(jaxrnn.LSTM(hidden), jaxrnn.LSTM(hidden))
    stack = jaxrnn.Stack((layer, layer))
    params = [
        (
            interop.from_torch(jaxrnn.LSTM(hidden), sd, layer=index),
            interop.from_torch(jaxrnn.LSTM(hidden), sd, layer=index, reverse=True),
        )
        for index in range(2)
    ]
    ys, carries = jaxrnn.stacked(stack, params, jnp.asarray(ref["x"]), jnp.asarray(ref["lengths"]))

    # PyTorch orders h_n and c_n as [layer * 2 + direction, batch, hidden].
    h = np.stack([carry[d][1] for carry in carries for d in (0, 1)])
    c = np.stack([carry[d][0] for carry in carries for d in (0, 1)])
    errors = {
        "ys": float(np.max(np.abs(np.asarray(ys) - ref["ys"]))),
        "h_n": float(np.max(np.abs(h - ref["h"]))),
        "c_n": float(np.max(np.abs(c - ref["c"]))),
    }
    print(f"PyTorch side: {ref['source']}")
    for name, error in errors.items():
        print(f"max |jaxrnn - torch| of {name}: {error:.2e}")
    worst = max(errors.values())
    assert worst < 1e-5, f"jaxrnn and PyTorch differ by {worst}"
    print("jaxrnn computes the PyTorch LSTM's outputs")
    return {"used_torch": use_torch, **errors}


if __name__ == "__main__":
    from _common import small_from_args

    main(small_from_args(__doc__.split("\n\n")[0]))
