"""A recurrent policy for a partially observable task, with the GRU's state reset where
episodes end.

The environment is a memory task written in JAX: the first step of an episode shows a cue
(one of two), then 1..8 blank steps follow, and the last step asks for the cue back (reward
+1 for the right answer, -1 for the wrong one). Episodes differ in length, so they end at
different steps in different environments of the batch, and each environment starts its
next episode on the step after (auto-reset). Only a policy that keeps the cue in its state
can beat chance (success rate 0.5).

A ``jax.lax.scan`` rolls a batch of environments out for ``T`` steps, calling the GRU one
step at a time and zeroing its state (``jaxrnn.reset_carry``) in the environments whose
previous step ended an episode. Training runs the GRU over the whole recorded rollout in
one ``jaxrnn.rnn`` call with ``resets`` (the episode starts) and ``initial_carry`` (the
state the rollout began with, which continues the episode the previous rollout left
running), and takes a REINFORCE step with optax. The script checks that this one call gives
the rollout's log-probabilities and that the same call without ``resets`` does not, once an
episode has ended; the full run also trains the same GRU with its state zeroed before every
step, which cannot remember the cue and stays at chance.

    python examples/recurrent_policy.py           # under a minute on a 2-core CPU
    python examples/recurrent_policy.py --small   # a few seconds
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn

MIN_BLANKS, MAX_BLANKS = 1, 8  # blank steps between the cue and the question
OBS_SIZE, ACTIONS = 3, 2  # obs: [cue is 0, cue is 1, answer now]; actions: answer 0 or 1


class EnvState(NamedTuple):
    cue: jax.Array  # int32 [], 0 or 1
    t: jax.Array  # int32 [], the step of the episode about to be taken
    length: jax.Array  # int32 [], steps in the episode: the cue, the blanks, the question


def observe(state: EnvState) -> jax.Array:
    """float32 ``[3]``: the cue one-hot at the episode's first step, then zeros, and a flag
    at its last step that asks for the answer."""
    shown = (state.t == 0) & (jnp.arange(ACTIONS) == state.cue)
    return jnp.append(shown, state.t == state.length - 1).astype(jnp.float32)


def reset(key: jax.Array) -> tuple[EnvState, jax.Array]:
    k_cue, k_len = jax.random.split(key)
    cue = jax.random.randint(k_cue, (), 0, ACTIONS)
    length = 2 + jax.random.randint(k_len, (), MIN_BLANKS, MAX_BLANKS + 1)
    state = EnvState(cue, jnp.zeros((), jnp.int32), length)
    return state, observe(state)


def step(state: EnvState, action: jax.Array, key: jax.Array):
    """``(state, obs, reward, done)``; where ``done``, ``state`` and ``obs`` are already the
    next episode's first (auto-reset). Only the action at the question step is rewarded."""
    done = state.t == state.length - 1
    reward = jnp.where(done, jnp.where(action == state.cue, 1.0, -1.0), 0.0)
    fresh, _ = reset(key)
    going = state._replace(t=state.t + 1)
    state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, going)
    return state, observe(state), reward, done


def make_policy(hidden: int, key: jax.Array):
    cell = jaxrnn.GRU(hidden)
    k_cell, k_head = jax.random.split(key)
    params = {
        "gru": cell.init(k_cell, OBS_SIZE),
        "head": {"w": 0.1 * jax.random.normal(k_head, (hidden, ACTIONS)), "b": jnp.zeros(ACTIONS)},
    }

    def log_probs(params, ys):  # [..., hidden] -> [..., ACTIONS]
        return jax.nn.log_softmax(ys @ params["head"]["w"] + params["head"]["b"])

    return cell, params, log_probs


class Runner(NamedTuple):
    """What one rollout hands to the next, for a batch of ``B`` environments."""

    env: EnvState  # leaves [B]
    obs: jax.Array  # float32 [B, 3]
    carry: jax.Array  # float32 [B, hidden]: the GRU's state after the last step taken
    starts: jax.Array  # bool [B]: the last step ended an episode, the next one starts anew


def make_rollout(cell, log_probs, steps: int, memory: bool = True):
    """``memory=False``: a policy that forgets, its state zeroed before every step."""

    def rollout(params, runner: Runner, key, greedy: bool = False):
        """``steps`` steps of every environment; returns the next ``Runner`` and the record,
        each entry time-major ``[steps, B, ...]``."""

        def one_step(runner: Runner, key):
            k_act, k_env = jax.random.split(key)
            starts = runner.starts if memory else jnp.ones_like(runner.starts)
            carry = jaxrnn.reset_carry(runner.carry, starts)  # zeros where an episode starts
            carry, y = cell(params["gru"], carry, runner.obs)
            logp = log_probs(params, y)  # [B, ACTIONS]
            action = jnp.argmax(logp, -1) if greedy else jax.random.categorical(k_act, logp)
            env_keys = jax.random.split(k_env, action.shape[0])
            env, obs, reward, done = jax.vmap(step)(runner.env, action, env_keys)
            record = {
                "obs": runner.obs,
                "starts": starts,
                "action": action,
                "logp": jnp.take_along_axis(logp, action[:, None], -1)[:, 0],
                "reward": reward,
                "done": done,
            }
            return Runner(env, obs, carry, done), record

        return jax.lax.scan(one_step, runner, jax.random.split(key, steps))

    return rollout


def returns(reward, done):
    """Each step's return to its episode's end (time-major ``[T, B]``), and whether that end
    falls inside the rollout (steps of an unfinished episode have no return yet)."""

    def back(later, now):
        g, complete = later
        r, d = now
        g = r + jnp.where(d, 0.0, g)
        complete = d | complete
        return (g, complete), (g, complete)

    init = (jnp.zeros(reward.shape[1]), jnp.zeros(reward.shape[1], bool))
    _, (g, complete) = jax.lax.scan(back, init, (reward, done), reverse=True)
    return g, complete


def rerun_log_probs(cell, log_probs, params, record, carry0, use_resets: bool = True):
    """The log-probabilities of the recorded actions from one ``jaxrnn.rnn`` call over the
    whole rollout (time-major, so ``resets`` is ``[T, B]``)."""
    resets = record["starts"] if use_resets else None
    ys, _ = jaxrnn.rnn(
        cell, params["gru"], record["obs"], resets=resets, initial_carry=carry0, time_major=True
    )
    logp = log_probs(params, ys)  # [T, B, ACTIONS]
    return jnp.take_along_axis(logp, record["action"][..., None], -1)[..., 0]


def train(small: bool, seed: int, memory: bool = True) -> dict:
    """REINFORCE updates, each on a fresh rollout; returns the success rates (the fraction
    of episodes ended in a rollout that were answered right) and the log-probability checks."""
    n_updates, batch, steps, hidden = (100, 64, 16, 32) if small else (300, 128, 32, 64)
    cell, params, log_probs = make_policy(hidden, jax.random.key(seed))
    rollout = make_rollout(cell, log_probs, steps, memory)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    def loss_fn(params, record, carry0):
        logp = rerun_log_probs(cell, log_probs, params, record, carry0)
        g, complete = returns(record["reward"], record["done"])
        baseline = jnp.sum(g * complete) / jnp.maximum(jnp.sum(complete), 1)
        advantage = jax.lax.stop_gradient(g - baseline) * complete
        return -jnp.sum(logp * advantage) / jnp.maximum(jnp.sum(complete), 1), logp

    @jax.jit
    def update(params, opt_state, runner, key):
        carry0 = runner.carry
        runner, record = rollout(params, runner, key)
        grads, logp = jax.grad(loss_fn, has_aux=True)(params, record, carry0)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        stats = {
            "success": jnp.sum(record["reward"] > 0) / jnp.maximum(jnp.sum(record["done"]), 1),
            "logp_gap": jnp.max(jnp.abs(logp - record["logp"])),
        }
        return optax.apply_updates(params, updates), opt_state, runner, stats

    def start(key):
        env, obs = jax.vmap(reset)(jax.random.split(key, batch))
        return Runner(env, obs, cell.initial_carry(batch), jnp.zeros(batch, bool))

    key = jax.random.key(seed + 1)
    key, k_start = jax.random.split(key)
    runner, history = start(k_start), []
    for i in range(n_updates):
        key, k = jax.random.split(key)
        params, opt_state, runner, stats = update(params, opt_state, runner, k)
        history.append({name: float(v) for name, v in stats.items()})
        if memory and i % (n_updates // 5) == 0:
            print(f"update {i:5d}  success rate {history[-1]['success']:.3f}")

    # The trained policy, on rollouts that continue the ones training left running.
    carry0 = runner.carry
    runner, record = jax.jit(rollout, static_argnums=3)(params, runner, key, True)
    with_resets = rerun_log_probs(cell, log_probs, params, record, carry0)
    without = rerun_log_probs(cell, log_probs, params, record, carry0, use_resets=False)
    ended = np.cumsum(np.asarray(record["starts"]), axis=0) > 0  # [T, B]: an episode began
    gap_with = np.abs(np.asarray(with_resets - record["logp"]))
    gap_without = np.abs(np.asarray(without - record["logp"]))
    return {
        "first_success": float(np.mean([h["success"] for h in history[:10]])),
        "last_success": float(np.mean([h["success"] for h in history[-10:]])),
        "greedy_success": float(jnp.sum(record["reward"] > 0) / jnp.sum(record["done"])),
        "train_logp_gap": max(h["logp_gap"] for h in history),
        "logp_gap_with_resets": float(gap_with.max()),
        "no_resets_gap_before_end": float(gap_without[~ended].max(initial=0.0)),
        "no_resets_gap_after_end": float(gap_without[ended].mean()),
        "no_resets_steps_off": float(np.mean(gap_without[ended] > 1e-3)),
    }


def main(small: bool = False, seed: int = 0) -> dict:
    result = train(small, seed)
    print(
        f"success rate {result['first_success']:.3f} -> {result['last_success']:.3f} "
        f"(sampled), {result['greedy_success']:.3f} (greedy); chance is 0.5\n"
        f"one rnn call with resets: log-probs as in the rollout to "
        f"{result['logp_gap_with_resets']:.1e} (at most {result['train_logp_gap']:.1e} "
        f"during training)\n"
        f"without resets: to {result['no_resets_gap_before_end']:.1e} until an episode ends, "
        f"then off by {result['no_resets_gap_after_end']:.3f} on average, "
        f"{100 * result['no_resets_steps_off']:.0f}% of steps by more than 1e-3"
    )
    if not small:  # the control: the same GRU with its state zeroed before every step
        result["forgetful_success"] = train(small, seed, memory=False)["last_success"]
        print(f"a policy that forgets: success rate {result['forgetful_success']:.3f}")
    return result


if __name__ == "__main__":
    from _common import small_from_args

    main(small_from_args(__doc__.split("\n\n")[0]))
