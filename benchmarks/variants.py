"""The LSTM and GRU variants against the same models in Flax, train step at W1's shapes.

    python benchmarks/variants.py                    # JSON + markdown in benchmarks/results/
    python benchmarks/variants.py --variants lstmp,ln_gru --out v.json

W1's shapes (batch 100, T 28, input 28, 128 units, 10 classes, Adam, cross-entropy on the last
step's output). Each variant is built twice and timed alternating in one process (protocol in
``_common``):

* ``jaxrnn``: the cell with the option (``jaxrnn.LSTM(128, proj_size=64)``, ...) and
  ``implementation=None``, which runs the LSTM's projection, peepholes and clips as a fused
  XLA loop and the layer-normalized cells as ``lax.scan`` (only the plain cells have CPU
  kernels); ``jaxrnn_scan`` is the same cell through ``lax.scan`` where ``None`` chooses
  another path, and ``jaxrnn_scan_plain_cell`` the plain cell through ``lax.scan``, to show
  what a variant costs beyond its path;
* ``flax``: ``flax.linen.RNN`` over a cell written here with the same equations (one fused
  ``Dense`` for the input and one for the recurrent product, as ``OptimizedLSTMCell``);
  ``--check`` (and every run, in the JSON) compares a step of each to the jaxrnn cell's on the
  same parameters.

The plain LSTM and GRU rows are the reference: there ``jaxrnn`` runs its kernels on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import workloads as wl  # noqa: E402

import jaxrnn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
W1 = wl.WORKLOADS["W1"]
H = W1.hidden
# name -> (cell kind, options of jaxrnn.LSTM / jaxrnn.GRU)
VARIANTS = {
    "lstm": ("lstm", {}),
    "lstmp": ("lstm", {"proj_size": 64}),
    "peepholes": ("lstm", {"peepholes": True}),
    "cell_clip": ("lstm", {"cell_clip": 3.0}),
    "tf1_all": (
        "lstm",
        {"peepholes": True, "cell_clip": 3.0, "proj_size": 64, "proj_clip": 3.0},
    ),
    "ln_lstm": ("lstm", {"layer_norm": True}),
    "gru": ("gru", {}),
    "ln_gru": ("gru", {"layer_norm": True}),
}


def _ln(name):
    return nn.LayerNorm(epsilon=1e-5, use_bias=False, name=name)


class FlaxLSTM(nn.RNNCellBase):
    """The jaxrnn LSTM's equations (and variants) as a linen cell; carry ``(c, h)``."""

    features: int
    proj_size: int = 0
    peepholes: bool = False
    cell_clip: float | None = None
    proj_clip: float | None = None
    layer_norm: bool = False

    @nn.compact
    def __call__(self, carry, x):
        c, h = carry
        xw = nn.Dense(4 * self.features, use_bias=not self.layer_norm, name="i")(x)
        hw = nn.Dense(4 * self.features, use_bias=False, name="h")(h)
        if self.layer_norm:  # the bias after the normalizations
            b = self.param("b", nn.initializers.zeros, (4 * self.features,))
            xw, hw = _ln("ln_i")(xw) + b, _ln("ln_h")(hw)
        zi, zf, zg, zo = jnp.split(xw + hw, 4, axis=-1)
        if self.peepholes:
            zeros = nn.initializers.zeros
            w_ci, w_cf, w_co = (
                self.param(n, zeros, (self.features,)) for n in ("w_ci", "w_cf", "w_co")
            )
            zi, zf = zi + w_ci * c, zf + w_cf * c
        c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        if self.cell_clip is not None:
            c = jnp.clip(c, -self.cell_clip, self.cell_clip)
        if self.peepholes:
            zo = zo + w_co * c
        shown = nn.LayerNorm(epsilon=1e-5, name="ln_c")(c) if self.layer_norm else c
        h = jax.nn.sigmoid(zo) * jnp.tanh(shown)
        if self.proj_size:
            h = nn.Dense(self.proj_size, use_bias=False, name="proj")(h)
            if self.proj_clip is not None:
                h = jnp.clip(h, -self.proj_clip, self.proj_clip)
        return (c, h), h

    def initialize_carry(self, rng, input_shape):
        batch = input_shape[:-1]
        return jnp.zeros((*batch, self.features)), jnp.zeros(
            (*batch, self.proj_size or self.features)
        )

    @property
    def num_feature_axes(self) -> int:
        return 1


class FlaxGRU(nn.RNNCellBase):
    """The jaxrnn GRU (``reset_after=True``), optionally layer-normalized, as a linen cell."""

    features: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, h, x):
        xi = nn.Dense(3 * self.features, use_bias=not self.layer_norm, name="i")(x)
        hh = nn.Dense(3 * self.features, use_bias=not self.layer_norm, name="h")(h)
        if self.layer_norm:  # the shifts are the biases
            xi = nn.LayerNorm(epsilon=1e-5, name="ln_i")(xi)
            hh = nn.LayerNorm(epsilon=1e-5, name="ln_h")(hh)
        xr, xz, xn = jnp.split(xi, 3, axis=-1)
        hr, hz, hn = jnp.split(hh, 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1.0 - z) * n + z * h
        return h, h

    def initialize_carry(self, rng, input_shape):
        return jnp.zeros((*input_shape[:-1], self.features))

    @property
    def num_feature_axes(self) -> int:
        return 1


class FlaxClassifier(nn.Module):
    kind: str
    options: tuple

    @nn.compact
    def __call__(self, xs, lengths=None):
        options = dict(self.options)
        cell = FlaxLSTM(H, **options) if self.kind == "lstm" else FlaxGRU(H, **options)
        return nn.Dense(W1.classes)(nn.RNN(cell)(xs)[:, -1])


def jaxrnn_model(kind, options, implementation=None):
    cell = jaxrnn.LSTM(H, **options) if kind == "lstm" else jaxrnn.GRU(H, **options)

    def init(key):
        k_rnn, k_head = jax.random.split(key)
        head = {
            "w": jax.nn.initializers.lecun_normal()(k_head, (cell.output_size, W1.classes)),
            "b": jnp.zeros((W1.classes,)),
        }
        return {"rnn": cell.init(k_rnn, W1.input), "head": head}

    def apply(params, xs, lengths):
        ys, _ = jaxrnn.rnn(cell, params["rnn"], xs, implementation=implementation)
        return ys[:, -1] @ params["head"]["w"] + params["head"]["b"]

    return init, apply, cell


def flax_model(kind, options):
    module = FlaxClassifier(kind, tuple(sorted(options.items())))

    def init(key):
        return module.init(key, jnp.zeros((W1.batch, W1.steps, W1.input)))

    return init, lambda p, xs, lengths: module.apply(p, xs)


def flax_params(kind, options, params):
    """jaxrnn's parameters of one cell in the layout of :class:`FlaxLSTM` / :class:`FlaxGRU`."""
    ln = options.get("layer_norm", False)
    out = {"i": {"kernel": params["w_i"]}, "h": {"kernel": params["w_h"]}}
    if kind == "gru" and ln:
        out["ln_i"] = {"scale": params["g_i"], "bias": params["b"]}
        out["ln_h"] = {"scale": params["g_h"], "bias": params["b_h"]}
        return out
    if kind == "lstm" and ln:
        out["b"] = params["b"]
    else:
        out["i"]["bias"] = params["b"]
    if kind == "gru":
        out["h"]["bias"] = params["b_h"]
        return out
    if ln:
        out["ln_i"], out["ln_h"] = {"scale": params["g_i"]}, {"scale": params["g_h"]}
        out["ln_c"] = {"scale": params["g_c"], "bias": params["b_c"]}
    out |= {k: params[k] for k in ("w_ci", "w_cf", "w_co") if k in params}
    if "w_hr" in params:
        out["proj"] = {"kernel": params["w_hr"]}
    return out


def check_same_model(name) -> float:
    """The largest difference between a step of the jaxrnn cell and of its Flax twin, on the
    same random parameters (biases, gains and peepholes included), state and inputs."""
    kind, options = VARIANTS[name]
    cell = jaxrnn_model(kind, options)[2]
    twin = FlaxLSTM(H, **options) if kind == "lstm" else FlaxGRU(H, **options)
    keys = iter(jax.random.split(jax.random.key(1), 32))
    params = {
        k: 0.5 * jax.random.normal(next(keys), v.shape)
        for k, v in cell.init(next(keys), W1.input).items()
    }
    carry = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape), cell.initial_carry(4))
    x = jax.random.normal(next(keys), (4, W1.input))
    want_carry, want = cell(params, carry, x)
    got_carry, got = twin.apply({"params": flax_params(kind, options, params)}, carry, x)
    pairs = zip(jax.tree.leaves((got, got_carry)), jax.tree.leaves((want, want_carry)), strict=True)
    return max(float(jnp.abs(a - b).max()) for a, b in pairs)


def run_variant(name, *, repeats, target_s):
    kind, options = VARIANTS[name]
    optimizer, batch = wl.make_optimizer(W1), wl.make_batch(W1)
    builds = {"jaxrnn": jaxrnn_model(kind, options)[:2], "flax": flax_model(kind, options)}
    init, apply, cell = jaxrnn_model(kind, options)
    path = jaxrnn.plan.plan(cell).path  # what rnn runs by default
    if path != "scan":
        builds["jaxrnn_scan"] = jaxrnn_model(kind, options, "scan")[:2]
    if options:
        builds["jaxrnn_scan_plain_cell"] = jaxrnn_model(kind, {}, "scan")[:2]
    runners, info = {}, {}
    for label, (init, apply) in builds.items():
        params = init(jax.random.key(0))
        state = (params, optimizer.init(params))
        step = wl.make_train_step(apply, optimizer)
        compiled, seconds = _common.compile_fn(step, state, *batch, donate_argnums=(0,))
        runners[label] = _common.Runner(compiled, (state, *batch), stateful=True)
        info[label] = {"compile_s": seconds}
        print(f"  {name} {label}: compiled in {seconds:.2f} s", flush=True)
    inner = _common.inner_for(max(_common.rough_time(r, 2) for r in runners.values()), target_s)
    for label, seconds in _common.time_alternating(runners, repeats=repeats, inner=inner).items():
        info[label].update(_common.summarize(seconds))
    return {
        "cell": repr(cell),
        "max_step_difference_to_flax": check_same_model(name),
        "jaxrnn_path": path,
        "inner": inner,
        "jaxrnn_over_flax": info["jaxrnn"]["median_ms"] / info["flax"]["median_ms"],
        "timings": info,
    }


def markdown(payload: dict) -> str:
    env = payload["env"]
    lines = [
        f"Train step at W1's shapes ({W1.title}), {env['cpu']} ({env['cpu_count']} cores), "
        f"jax {env['jax']}, flax {env['flax']}; median ms per step (min-max). "
        "`python benchmarks/variants.py`.",
        "",
        "| variant | jaxrnn path | jaxrnn | Flax nn.RNN | jaxrnn / Flax | same cell, lax.scan "
        "| plain cell, lax.scan |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["results"].items():
        t = r["timings"]

        def cell(label, t=t):
            if label not in t:
                return "-"
            v = t[label]
            return f"{v['median_ms']:.2f} ({v['min_ms']:.2f}-{v['max_ms']:.2f})"

        lines.append(
            f"| {name} | {r['jaxrnn_path']} | {cell('jaxrnn')} | {cell('flax')} | "
            f"{r['jaxrnn_over_flax']:.2f} | {cell('jaxrnn_scan')} | "
            f"{cell('jaxrnn_scan_plain_cell')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target-s", type=float, default=0.25, help="seconds per repeat")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "variants.json"))
    parser.add_argument(
        "--check", action="store_true", help="only check that each Flax twin is the same model"
    )
    args = parser.parse_args(argv)
    if args.check:
        for name in args.variants.split(","):
            difference = check_same_model(name)
            print(f"{name}: largest difference of one step to the Flax twin {difference:.2e}")
            if difference > 1e-5:
                raise SystemExit(f"{name}: the Flax twin computes another function")
        return
    env = _common.environment()
    print(f"device {env['device']}, {env['cpu']}", flush=True)
    results = {
        name: run_variant(name, repeats=args.repeats, target_s=args.target_s)
        for name in args.variants.split(",")
    }
    payload = {
        "benchmark": "variants",
        "env": env,
        "protocol": _common.__doc__,
        "config": dataclasses.asdict(W1),
        "results": results,
    }
    _common.write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
