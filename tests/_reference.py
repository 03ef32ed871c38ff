"""Plain NumPy references for the cells and drivers, written independently of jaxrnn.

Each gate has its own weight slice and the time loop runs per sequence, in float64, so that a
bug in jaxrnn's fused matmuls, masking or reversal cannot be mirrored here.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gate(params, k, size, x, h, with_bias=True):
    """Pre-activation of gate block ``k``: x W_i[k] + h W_h[k] + b[k] (+ b_h[k])."""
    cols = slice(k * size, (k + 1) * size)
    z = x @ params["w_i"][:, cols] + h @ params["w_h"][:, cols]
    if with_bias:
        z = z + params["b"][cols] + (params["b_h"][cols] if "b_h" in params else 0.0)
    return z


def step(
    kind,
    params,
    carry,
    x,
    *,
    hidden,
    activation="tanh",
    forget_bias=0.0,
    reset_after=True,
    rec_mask=None,
):
    """One step for one sequence: ``x`` [input], carry [hidden] (or (c, h)). Returns (carry, y).

    ``rec_mask`` [hidden] (recurrent dropout) multiplies ``h`` where it enters the recurrent
    weights only: the LSTM's ``c`` and the GRU's ``z * h`` term see the unmasked state.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    keep = 1.0 if rec_mask is None else np.asarray(rec_mask, np.float64)
    if kind == "rnn":
        z = _gate(p, 0, hidden, x, carry * keep)
        h = np.tanh(z) if activation == "tanh" else np.maximum(z, 0.0)
        return h, h
    if kind == "lstm":
        c, h = carry
        hm = h * keep
        i = sigmoid(_gate(p, 0, hidden, x, hm))
        f = sigmoid(_gate(p, 1, hidden, x, hm) + forget_bias)
        g = np.tanh(_gate(p, 2, hidden, x, hm))
        o = sigmoid(_gate(p, 3, hidden, x, hm))
        c = f * c + i * g
        h = o * np.tanh(c)
        return (c, h), h
    if kind == "gru":
        h = carry
        hm = h * keep
        n_cols = slice(2 * hidden, 3 * hidden)
        if reset_after:
            r = sigmoid(_gate(p, 0, hidden, x, hm))
            z = sigmoid(_gate(p, 1, hidden, x, hm))
            n = np.tanh(
                x @ p["w_i"][:, n_cols]
                + p["b"][n_cols]
                + r * (hm @ p["w_h"][:, n_cols] + p["b_h"][n_cols])
            )
        else:
            r = sigmoid(_gate(p, 0, hidden, x, hm))
            z = sigmoid(_gate(p, 1, hidden, x, hm))
            n = np.tanh(x @ p["w_i"][:, n_cols] + p["b"][n_cols] + (r * hm) @ p["w_h"][:, n_cols])
        h = z * h + (1.0 - z) * n
        return h, h
    raise ValueError(kind)


def run(kind, params, xs, lengths=None, *, reverse=False, carry0=None, rec_mask=None, **hyper):
    """Batch-first ``xs`` [B, T, I] -> (ys [B, T, H], final carries per sequence).

    ``rec_mask`` [B, H]: each sequence's recurrent-dropout multiplier (see :func:`step`).
    """
    xs = np.asarray(xs, np.float64)
    batch, steps, _ = xs.shape
    hidden = hyper["hidden"]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    ys = np.zeros((batch, steps, hidden))
    finals = []
    for b in range(batch):
        if carry0 is None:
            zeros = np.zeros(hidden)
            carry = (zeros, zeros) if kind == "lstm" else zeros
        else:
            carry = carry0[b]
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            mask = None if rec_mask is None else rec_mask[b]
            carry, ys[b, t] = step(kind, params, carry, xs[b, t], rec_mask=mask, **hyper)
        finals.append(carry)
    if kind == "lstm":
        return ys, (np.stack([c for c, _ in finals]), np.stack([h for _, h in finals]))
    return ys, np.stack(finals)
