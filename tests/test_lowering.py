"""Jitted train steps lowered from this CPU for a GPU and a TPU
(``jax.jit(f).trace(...).lower(lowering_platforms=...)``): every cell with a fused path x
dtype (float32, bfloat16) x implementation (None, "fused", "scan", "pallas"), each step
holding every feature at once (lengths, resets, reverse, bidirectional, a stack with every
dropout; recurrent dropout where the implementation allows it, None and "scan"), and the
linear recurrences' default path likewise. A change
that cannot lower for a device (a Triton or Mosaic lowering error, a CPU-only call reached
off a CPU) fails here."""

import jax
import jax.numpy as jnp
import pytest

import jaxrnn

B, T, F, H = 4, 6, 3, 16
# jaxrnn's CPU kernels' FFI targets are all named jaxrnn_...: lowering an ffi_call for a
# platform without the target does not fail, so a program for a device must not hold one.
_NO_CPU_KERNEL = "custom_call @jaxrnn_"

CELLS = {
    "rnn": jaxrnn.SimpleRNN(H),
    "lstm": jaxrnn.LSTM(H),
    "gru": jaxrnn.GRU(H),
}


def _train_step(cell, implementation):
    """The gradient of a loss over every feature; returns ``(fn, args)``."""
    key = jax.random.key(0)
    recurrent = 0.2 if implementation in (None, "scan") else 0.0  # "scan" runs it
    stack = jaxrnn.Stack(
        (cell, jaxrnn.Bidirectional(cell, cell)),
        dropout=0.1,
        input_dropout=0.1,
        recurrent_dropout=recurrent,
    )
    params = {
        "rnn": cell.init(key, F),
        "bi": (cell.init(key, F), cell.init(key, F)),
        "stack": stack.init(key, F),
    }
    xs = jnp.zeros((B, T, F), jnp.float32)
    lengths = jnp.array([6, 3, 0, 5])
    resets = jnp.zeros((B, T), bool).at[0, 2].set(True)

    def loss(params, xs):
        how = {"implementation": implementation}
        total = 0.0
        for kwargs in ({"resets": resets}, {"reverse": True}):
            ys, _ = jaxrnn.rnn(cell, params["rnn"], xs, lengths, **kwargs, **how)
            total = total + jnp.sum(ys.astype(jnp.float32))
        ys, _ = jaxrnn.bidirectional(cell, cell, params["bi"], xs, lengths, **how)
        total = total + jnp.sum(ys.astype(jnp.float32))
        ys, _ = jaxrnn.stacked(stack, params["stack"], xs, lengths, key=key, **how)
        return total + jnp.sum(ys.astype(jnp.float32))

    return jax.jit(jax.grad(loss)), (params, xs)


PLATFORMS = ("cuda", "tpu")


def _lowers_for_accelerators(step, args, what):
    """``step`` traced once and lowered for each of :data:`PLATFORMS`, with no CPU kernel."""
    traced = step.trace(*args)
    for platform in PLATFORMS:
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        assert text and _NO_CPU_KERNEL not in text, (what, platform)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CELLS))
def test_train_steps_lower_for_accelerators(name, dtype):
    cell = CELLS[name].__class__(H, dtype=dtype)
    for implementation in (None, "fused", "scan", "pallas"):
        _lowers_for_accelerators(*_train_step(cell, implementation), implementation)


LINEAR = {"mingru": jaxrnn.MinGRU(H), "minlstm": jaxrnn.MinLSTM(H), "rglru": jaxrnn.RGLRU(H)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(LINEAR))
def test_linear_cells_train_steps_lower_for_accelerators(name, dtype):
    """The linear recurrences' default path ("parallel", whose CPU kernels sit behind
    ``lax.platform_dependent``), every feature at once."""
    cell = LINEAR[name].__class__(H, dtype=dtype)
    _lowers_for_accelerators(*_train_step(cell, None), name)
