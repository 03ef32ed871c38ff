"""Argument validation shared by the drivers; every check runs in Python before tracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def concrete_or_none(x):
    """``x`` as a NumPy array when its value is known now, else ``None`` (under a trace)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_xs(xs, name: str = "xs", *, time_major: bool = False) -> None:
    layout = "[time, batch, features]" if time_major else "[batch, time, features]"
    if not hasattr(xs, "ndim") or not hasattr(xs, "dtype"):
        raise TypeError(f"{name} must be an array of shape {layout}, got {type(xs).__name__}")
    if xs.ndim != 3:
        raise ValueError(f"{name} must have rank 3 {layout}, got shape {tuple(xs.shape)}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (bfloat16, float16, float32, float64), "
            f"got {xs.dtype}"
        )


def check_params(cell, params, input_size: int, name: str = "params") -> None:
    """``params`` must be a dict of floating-point arrays that holds every parameter of
    ``cell.param_shapes(input_size)`` in its shape (what the cell needs, e.g. ``w_i
    [input_size, k*H]`` and ``w_h [R, k*H]``), and the biases it has in the shapes of
    ``cell.bias_shapes(input_size)`` (``b [k*H]``), and nothing else: a parameter the cell
    would not read (another variant's, a misspelt name) is an error, not dropped."""
    expected = cell.param_shapes(input_size)
    if not isinstance(params, dict) or not any(key in params for key in expected):
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise TypeError(
            f"{name} must be the dict made by {type(cell).__name__}.init "
            f"(keys {', '.join(expected)}, b, ...), got {keys}"
        )
    for key, value in params.items():
        if not hasattr(value, "dtype") or not jnp.issubdtype(value.dtype, jnp.floating):
            got = getattr(value, "dtype", type(value).__name__)
            raise TypeError(f"{name}[{key!r}] must be a floating-point array, got {got}")
    for key, shape in expected.items():
        if key not in params:
            raise ValueError(
                f"{name} lacks {key!r} (shape {shape}), which {cell} needs; got {sorted(params)}"
            )
        got = tuple(params[key].shape)
        if got != shape:
            what = "input_size" if key == "w_i" and got[1:] == shape[1:] else "hidden_size"
            raise ValueError(
                f"{name}[{key!r}] has shape {got}, expected {shape} for {cell} with "
                f"input_size={input_size} (mismatch in {what})"
            )
    biases = cell.bias_shapes(input_size)
    unused = sorted(set(params) - set(expected) - set(biases))
    if unused:
        takes = ", ".join([*expected, *(f"{key} (optional)" for key in biases)])
        raise ValueError(
            f"{name} holds {unused}, which {cell} does not read (it takes {takes}: its "
            "param_shapes and bias_shapes); parameters of another cell or variant?"
        )
    for key, shape in biases.items():
        if key in params and tuple(params[key].shape) != shape:
            raise ValueError(
                f"{name}[{key!r}] has shape {tuple(params[key].shape)}, expected {shape} (a "
                f"value per column of w_i) for {cell}"
            )


def check_lengths(lengths, batch: int, steps: int, name: str = "lengths") -> None:
    """``lengths`` must be integers of shape ``[batch]`` in ``[0, steps]`` (when concrete)."""
    if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
        lengths = np.asarray(lengths)
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {lengths.dtype}")
    values = concrete_or_none(lengths)
    if values is not None and values.size and (values.min() < 0 or values.max() > steps):
        raise ValueError(
            f"{name} must lie in [0, {steps}] (the time dimension), got values in "
            f"[{values.min()}, {values.max()}]"
        )


def check_resets(resets, batch: int, steps: int, *, time_major: bool = False, name="resets"):
    """``resets`` must be a bool array ``[batch, time]`` (``[time, batch]`` if ``time_major``)."""
    layout = "[time, batch]" if time_major else "[batch, time]"
    expected = (steps, batch) if time_major else (batch, steps)
    if not hasattr(resets, "shape") or not hasattr(resets, "dtype"):
        resets = np.asarray(resets)
    if tuple(resets.shape) != expected:
        raise ValueError(f"{name} must have shape {layout} = {expected}, got {tuple(resets.shape)}")
    if resets.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool array {layout}, got dtype {resets.dtype}")


def check_carry(cell, carry, batch: int, name: str = "initial_carry") -> None:
    expected = cell.initial_carry(batch)
    exp_leaves, exp_tree = jax.tree.flatten(expected)
    leaves, tree = jax.tree.flatten(carry)
    if tree != exp_tree:  # type: ignore[operator]  # jaxlib stubs lack PyTreeDef.__ne__
        raise ValueError(f"{name} must have the structure {exp_tree} for {cell}, got {tree}")
    for got, exp in zip(leaves, exp_leaves, strict=True):
        if tuple(got.shape) != tuple(exp.shape):
            raise ValueError(
                f"{name} leaves must have shape {tuple(exp.shape)} [batch, hidden_size] "
                f"for {cell}, got {tuple(got.shape)}"
            )
        if not jnp.issubdtype(got.dtype, jnp.floating):
            raise TypeError(f"{name} leaves must be floating-point arrays, got {got.dtype}")


def check_merge(merge) -> None:
    if merge not in _MERGE_MODES:
        raise ValueError(f"merge must be one of {_MERGE_MODES}, got {merge!r}")


def check_unroll(unroll) -> None:
    if isinstance(unroll, bool):
        return
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int or a bool, got {unroll!r}")
