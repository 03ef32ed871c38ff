"""A Flax NNX model around jaxrnn's layers: two stacked GRUs with dropout between them and a
dense head, trained with ``nnx.Optimizer`` to tell whether a padded sequence of +1/-1 steps
holds more +1s than -1s.

Needs ``pip install "jaxrnn[nn]" optax``. ``jaxrnn.nn.Stacked`` holds the stack's parameters
as ``nnx.Param``s; dropout is on only when the call gets ``rngs``.

    python examples/nnx_model.py           # about 20 s on a 2-core CPU
    python examples/nnx_model.py --small   # a few seconds
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxrnn
import jaxrnn.nn

MAX_LEN = 24


def make_data(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lengths = rng.integers(3, MAX_LEN + 1, n)
    lengths += lengths % 2 == 0  # odd lengths: never a tie
    lengths = np.minimum(lengths, MAX_LEN - 1)
    steps = rng.choice([-1.0, 1.0], (n, MAX_LEN))
    valid = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    steps = np.where(valid, steps, 0.0)
    return {
        "inputs": steps[..., None].astype(np.float32),
        "lengths": lengths.astype(np.int32),
        "labels": (steps.sum(axis=1) > 0).astype(np.int32),
    }


class MajorityClassifier(nnx.Module):
    def __init__(self, hidden: int, rngs: nnx.Rngs):
        stack = jaxrnn.Stack((jaxrnn.GRU(hidden), jaxrnn.GRU(hidden)), dropout=0.1)
        self.rnn = jaxrnn.nn.Stacked(stack, 1, rngs=rngs)
        self.head = nnx.Linear(hidden, 2, rngs=rngs)

    def __call__(self, inputs, lengths, rngs: nnx.Rngs | None = None):
        ys = self.rnn(inputs, lengths, rngs=rngs)  # [batch, time, hidden], zero past lengths
        last = jnp.take_along_axis(ys, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return self.head(last)


def main(small: bool = False) -> dict:
    steps, batch, hidden = (120, 32, 16) if small else (1200, 64, 32)
    rng = np.random.default_rng(0)
    train, test = make_data(20_000, rng), make_data(2_000, rng)

    model = MajorityClassifier(hidden, nnx.Rngs(params=0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    dropout_rngs = nnx.Rngs(dropout=1)

    @nnx.jit
    def train_step(model, optimizer, rngs, batch):
        def loss_fn(model, rngs):  # rngs passed in, not closed over: NNX tracks its state
            logits = model(batch["inputs"], batch["lengths"], rngs=rngs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model, rngs)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def accuracy(model, data):
        logits = model(data["inputs"], data["lengths"])  # no rngs: dropout off
        return jnp.mean(jnp.argmax(logits, axis=-1) == data["labels"])

    losses = []
    for step in range(steps):
        idx = rng.integers(0, len(train["labels"]), batch)
        loss = train_step(model, optimizer, dropout_rngs, {k: v[idx] for k, v in train.items()})
        losses.append(float(loss))
        if step % (steps // 4) == 0:
            print(f"step {step:5d}  loss {loss:.4f}")
    result = {
        "first_loss": float(np.mean(losses[:10])),
        "last_loss": float(np.mean(losses[-10:])),
        "test_accuracy": float(accuracy(model, test)),
    }
    # The module's weights are the pytree the functional API takes:
    stack_params = model.rnn.params()
    ys, _ = jaxrnn.stacked(model.rnn.stack, stack_params, test["inputs"][:4], test["lengths"][:4])
    assert ys.shape == (4, MAX_LEN, hidden)
    print(
        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}, "
        f"test accuracy {result['test_accuracy']:.3f}"
    )
    return result


if __name__ == "__main__":
    from _common import small_from_args

    main(small_from_args(__doc__.split("\n\n")[0]))
