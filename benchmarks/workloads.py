"""The six training workloads W1-W6, built twice: with jaxrnn and with Flax ``nn.RNN``.

Every workload is batch-first float32 classification with softmax cross-entropy on the last
step's output (the final carry for the masked W5), Adam unless said. Both implementations get
the same data, the same head (a dense layer to ``classes`` logits) and the same optimizer; the
jitted train step is ``(state, batch) -> (state, loss)`` with the state donated.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    title: str
    cell: str  # "lstm", "tanh", "relu", "gru"
    hidden: int
    input: int
    steps: int
    batch: int
    classes: int = 10
    optimizer: str = "adam"
    bidirectional: bool = False
    masked: bool = False
    min_length: int = 1

    @property
    def gates(self) -> int:
        return {"lstm": 4, "gru": 3}.get(self.cell, 1)

    def train_gflop(self) -> float:
        """Model FLOPs of one train step: 3x the forward matmul FLOPs (forward + two backward
        products per matmul), the convention of the peer table; elementwise work not counted."""
        dirs = 2 if self.bidirectional else 1
        rnn = 2 * self.batch * self.steps * (self.input + self.hidden) * self.gates * self.hidden
        head = 2 * self.batch * self.hidden * dirs * self.classes
        return 3 * (dirs * rnn + head) / 1e9


WORKLOADS = {
    w.name: w
    for w in (
        Workload("W1", "LSTM 128, input 28, T 28, batch 100", "lstm", 128, 28, 28, 100),
        Workload(
            "W2",
            "bidirectional LSTM 32+32, T 28, batch 32",
            "lstm",
            32,
            28,
            28,
            32,
            bidirectional=True,
        ),
        Workload("W3", "tanh RNN 150, T 28, batch 150", "tanh", 150, 28, 28, 150),
        Workload(
            "W4",
            "relu RNN 16, T 28, batch 100, RMSprop",
            "relu",
            16,
            28,
            28,
            100,
            optimizer="rmsprop",
        ),
        Workload(
            "W5",
            "masked LSTM 32, input 1, T 20, batch 64, lengths 5..20",
            "lstm",
            32,
            1,
            20,
            64,
            classes=2,
            masked=True,
            min_length=5,
        ),
        Workload("W6", "LSTM 512, input 512, T 256, batch 64", "lstm", 512, 512, 256, 64),
    )
}


def make_optimizer(w: Workload):
    if w.optimizer == "rmsprop":
        return optax.rmsprop(1e-3)
    return optax.adam(1e-3)


def make_batch(w: Workload, seed: int = 0, blocks: int | None = None):
    """``(xs, labels, lengths)`` on the device; with ``blocks``, each gets a leading axis."""
    rng = np.random.default_rng(seed)
    lead = () if blocks is None else (blocks,)
    xs = rng.normal(size=(*lead, w.batch, w.steps, w.input)).astype(np.float32)
    labels = rng.integers(0, w.classes, size=(*lead, w.batch)).astype(np.int32)
    lengths = None
    if w.masked:
        lengths = rng.integers(w.min_length, w.steps + 1, size=(*lead, w.batch)).astype(np.int32)
        steps = np.arange(w.steps)
        xs = xs * (steps < lengths[..., None])[..., None]  # zero padding past each length
    put = jax.device_put
    return put(xs), put(labels), None if lengths is None else put(lengths)


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ---------------------------------------------------------------------------------- jaxrnn


def jaxrnn_cell(w: Workload, dtype=None):
    if w.cell == "lstm":
        return jaxrnn.LSTM(w.hidden, dtype=dtype)
    if w.cell == "gru":
        return jaxrnn.GRU(w.hidden, dtype=dtype)
    return jaxrnn.SimpleRNN(w.hidden, activation=w.cell, dtype=dtype)


def jaxrnn_model(w: Workload, dtype=None, implementation=None):
    """``(init(key) -> params, apply(params, xs, lengths) -> logits)`` with jaxrnn; ``dtype``
    is the cells' computation dtype (float32 parameters), ``implementation`` as
    :func:`jaxrnn.rnn`'s."""
    cell = jaxrnn_cell(w, dtype)
    how = {"implementation": implementation}
    features = w.hidden * (2 if w.bidirectional else 1)

    def init(key):
        k_fw, k_bw, k_head = jax.random.split(key, 3)
        if w.bidirectional:
            rnn_params = (cell.init(k_fw, w.input), cell.init(k_bw, w.input))
        else:
            rnn_params = cell.init(k_fw, w.input)
        head = {
            "w": jax.nn.initializers.lecun_normal()(k_head, (features, w.classes)),
            "b": jnp.zeros((w.classes,)),
        }
        return {"rnn": rnn_params, "head": head}

    def apply(params, xs, lengths):
        if w.bidirectional:
            ys, _ = jaxrnn.bidirectional(cell, cell, params["rnn"], xs, lengths, **how)
            features = ys[:, -1]
        elif w.masked:
            _, carry = jaxrnn.rnn(cell, params["rnn"], xs, lengths, **how)
            features = cell.hidden(carry)  # the state after each sequence's last valid step
        else:
            ys, _ = jaxrnn.rnn(cell, params["rnn"], xs, **how)
            features = ys[:, -1]
        return features.astype(jnp.float32) @ params["head"]["w"] + params["head"]["b"]

    return init, apply


# ------------------------------------------------------------------------------------ Flax


class _FlaxClassifier(nn.Module):
    w: Workload
    lstm_cell: str = "optimized"

    def _cell(self):
        w = self.w
        if w.cell == "lstm":
            if self.lstm_cell == "optimized":
                return nn.OptimizedLSTMCell(w.hidden)
            return nn.LSTMCell(w.hidden)
        if w.cell == "gru":
            return nn.GRUCell(w.hidden)
        act = jnp.tanh if w.cell == "tanh" else jax.nn.relu
        return nn.SimpleCell(w.hidden, activation_fn=act)

    @nn.compact
    def __call__(self, xs, lengths=None):
        w = self.w
        if w.bidirectional:
            ys = nn.Bidirectional(nn.RNN(self._cell()), nn.RNN(self._cell()))(xs)
            features = ys[:, -1]
        elif w.masked:
            carry, _ = nn.RNN(self._cell(), return_carry=True)(xs, seq_lengths=lengths)
            features = carry[1] if w.cell == "lstm" else carry
        else:
            features = nn.RNN(self._cell())(xs)[:, -1]
        return nn.Dense(w.classes)(features)


def flax_model(w: Workload, lstm_cell: str = "optimized"):
    """``(init, apply)`` as :func:`jaxrnn_model`, with Flax ``nn.RNN`` (linen)."""
    module = _FlaxClassifier(w, lstm_cell)

    def init(key):
        xs = jnp.zeros((w.batch, w.steps, w.input))
        lengths = jnp.full((w.batch,), w.steps) if w.masked else None
        return module.init(key, xs, lengths)

    def apply(params, xs, lengths):
        return module.apply(params, xs, lengths)

    return init, apply


# ------------------------------------------------------------------------------ train steps


def make_train_step(apply, optimizer):
    """``step(state, xs, labels, lengths) -> (state, loss)``, state ``(params, opt_state)``."""

    def step(state, xs, labels, lengths):
        params, opt_state = state

        def loss_fn(p):
            return _cross_entropy(apply(p, xs, lengths), labels)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def training_block(w: Workload, steps_per_call: int):
    """jaxrnn's own training loop (``jaxrnn.training``, what ``jaxrnn train`` runs) for ``w``:
    ``(block, state, batches)`` with ``block(state, batches) -> (state, metrics)`` compiling
    ``steps_per_call`` optimizer steps into one call over a block of batches on the device."""
    from jaxrnn.models import Model
    from jaxrnn.training import state as train_state
    from jaxrnn.training import steps
    from jaxrnn.training.optimizers import make_optimizer as training_optimizer

    model = Model(
        cell="rnn" if w.cell in ("tanh", "relu") else w.cell,
        hidden_size=w.hidden,
        num_outputs=w.classes,
        bidirectional=w.bidirectional,
        activation=w.cell if w.cell in ("tanh", "relu") else "tanh",
        masked=w.masked,
    )
    tx = training_optimizer(w.optimizer, 1e-3)
    params = model.init(jax.random.key(0), w.input)
    state = train_state.create(params, tx, jax.random.key(1))
    xs, labels, lengths = make_batch(w, blocks=steps_per_call)
    batches = {"inputs": xs, "labels": labels}
    if lengths is not None:
        batches["lengths"] = lengths
    block = steps.make_train_block(model, tx)
    return block, state, batches


def make_block_step(apply, optimizer):
    """Many steps in one compiled call: ``lax.scan`` of :func:`make_train_step` over a block
    of batches already on the device (leading axis). Returns ``(state, losses)``."""
    one = make_train_step(apply, optimizer)

    def block(state, xs, labels, lengths):
        def body(state, batch):
            return one(state, *batch)

        return jax.lax.scan(body, state, (xs, labels, lengths))

    return block
