"""Text from a trained character-level model: what ``jaxrnn sample`` prints.

The model reads the prompt from a zero carry (a prompt of no characters reads one line
break, as at the start of a speech), then draws each next character from its softmax at
``temperature`` (0: the most likely character) and reads it in turn: one jitted
``lax.scan`` over the steps, carrying the recurrent state. The unknown-character id is never
drawn. A seed gives the same text on the same machine and versions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.data import text
from jaxrnn.models import Model
from jaxrnn.training import lock as lock_lib
from jaxrnn.training import optimizers
from jaxrnn.training import steps as steps_lib
from jaxrnn.training.checkpointing import Checkpointer
from jaxrnn.training.workdir import as_path, load_run


def check_options(length: int, temperature: float) -> None:
    if length < 1:
        raise ValueError(f"--length must be >= 1, got {length}")
    if not temperature >= 0.0 or not np.isfinite(temperature):
        raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}")


def generate(
    model: Model, params, prompt: np.ndarray, *, length: int, temperature: float, key: jax.Array
) -> np.ndarray:
    """int32 ``[length]``: the ids drawn after reading ``prompt`` (int ids ``[P]``, P >= 1)."""
    check_options(length, temperature)

    @jax.jit
    def run(params, prompt, temperature, key):
        logits, carry = model.apply(params, prompt[None], return_carry=True)
        mask = jnp.arange(model.num_outputs) == 0  # the unknown id

        def step(state, k):
            carry, logits = state
            logits = jnp.where(mask, -jnp.inf, logits.astype(jnp.float32))
            drawn = jax.random.categorical(k, logits / jnp.maximum(temperature, 1e-30))
            ids = jnp.where(temperature > 0, drawn, jnp.argmax(logits)).astype(jnp.int32)
            out, carry = model.apply(
                params, ids[None, None], initial_carry=carry, return_carry=True
            )
            return (carry, out[0, 0]), ids

        _, ids = jax.lax.scan(step, (carry, logits[0, -1]), jax.random.split(key, length))
        return ids

    return np.asarray(run(params, jnp.asarray(prompt, jnp.int32), jnp.float32(temperature), key))


def sample(
    model: Model,
    params,
    vocab: text.Vocabulary,
    *,
    length: int = 500,
    temperature: float = 1.0,
    seed: int = 0,
    prompt: str = "",
) -> str:
    """``length`` characters that follow ``prompt`` (see the module docstring)."""
    ids = vocab.encode(prompt or "\n")
    key = jax.random.key(seed)
    return vocab.decode(
        generate(model, params, ids, length=length, temperature=temperature, key=key)
    )


def sample_workdir(
    workdir: str,
    *,
    length: int = 500,
    temperature: float = 1.0,
    seed: int = 0,
    prompt: str = "",
) -> str:
    """``length`` characters from the latest checkpoint of the text run in ``workdir``.

    Holds ``workdir`` meanwhile, as ``jaxrnn eval`` does, and writes nothing there.

    Raises:
      ValueError: a bad option, or ``workdir`` holds a run of another kind of dataset.
      FileNotFoundError: ``workdir`` holds no run or no checkpoint.
    """
    check_options(length, temperature)
    from jaxrnn.training import loop

    with lock_lib.hold(workdir, "sample", create=False):
        name, config = load_run(workdir)
        if not text.is_text(config.dataset):
            raise ValueError(
                f"{workdir} holds a run of config {name!r} on dataset {config.dataset!r}; "
                f"jaxrnn sample needs one on a text dataset ({', '.join(text.TEXT_DATASETS)})"
            )
        loop.check_config(config)
        mesh = steps_lib.make_mesh()
        task = loop.make_task(config, mesh, shards=1, with_feed=False)
        tx = optimizers.from_config(config, loop.total_steps(config, task.num_train))
        like = loop.init_state(config, task.model, tx, task.input_size, mesh)
        checkpointer = Checkpointer(str(as_path(workdir) / "checkpoints"), read_only=True)
        state, _ = checkpointer.restore(like)
        checkpointer.close()
    vocab = text.Vocabulary.from_text(text.load_text(config.dataset)[0])
    return sample(
        task.model,
        state.params,
        vocab,
        length=length,
        temperature=temperature,
        seed=seed,
        prompt=prompt,
    )
