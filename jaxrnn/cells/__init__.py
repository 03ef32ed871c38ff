"""Recurrent cells: one time step each, pure, with hyperparameters only.

A cell is a frozen, hashable dataclass (it can be a static argument of ``jax.jit``). Its
parameters are a plain dict of arrays made by ``cell.init``; its carry is an array (or a tuple
of arrays) of shape ``[batch, hidden_size]`` made by ``cell.initial_carry``.

Every cell splits its step in two so that drivers may hoist the input half out of the time
loop:

* ``project_inputs(params, x)``: ``[..., input_size] -> [..., gate_size]``, the affine map of the
  input with every bias that does not interact with the state folded in. It acts on any leading
  shape, so a driver can apply it to all time steps ``[time, batch, input_size]`` at once.
* ``step(params, carry, xp) -> (carry, y)``: the recurrent half, given one projected input.

``cell(params, carry, x)`` is the composition of both.

Every cell is a :class:`Cell` (the base class; ``jaxrnn.Cell``) and is known by a name:
``"rnn"`` (``SimpleRNN``), ``"lstm"``, ``"gru"``, the linear recurrences ``"mingru"``,
``"minlstm"`` and ``"rglru"`` (:class:`LinearCell`: no recurrent matrix, run in parallel over
time; :mod:`jaxrnn.cells.linear`), and any cell of one's own registered with
:func:`register` (:mod:`jaxrnn.cells.registry`), which ``Model(cell=...)`` and ``--set
cell=...`` then build. Gates are fused: one ``[in, k*H]`` input
matmul and one ``[H, k*H]`` recurrent matmul per step, whatever the number of gates ``k``.

Parameter layout (``I`` input size, ``H`` hidden size):

| cell | params |
|---|---|
| ``SimpleRNN`` | ``w_i [I, H]``, ``w_h [H, H]``, ``b [H]`` |
| ``LSTM`` | ``w_i [I, 4H]``, ``w_h [H, 4H]``, ``b [4H]``; gates i, f, g, o |
| ``GRU(reset_after=True)`` | ``w_i [I, 3H]``, ``w_h [H, 3H]``, ``b [3H]``, ``b_h [3H]``; r, z, n |
| ``GRU(reset_after=False)`` | ``w_i [I, 3H]``, ``w_h [H, 3H]``, ``b [3H]``; gates r, z, n |
| ``MinGRU`` | ``w_i [I, 2H]``, ``b [2H]``; columns z, h~ |
| ``MinLSTM`` | ``w_i [I, 3H]``, ``b [3H]``; columns f, i, h~ |
| ``RGLRU`` | ``w_i [I, 2H]``, ``b [2H]`` (r, i), ``a_param [H]``; ``w_x [I, H]`` where ``I != H`` |

``SimpleRNN`` and ``LSTM`` also accept an optional second bias ``b_h`` (same shape as ``b``),
added to ``b``: PyTorch stores two, and keeping both makes weight round trips exact.

Precision (Flax's convention): ``param_dtype`` is what ``init`` stores (float32 by default) and
``dtype`` the computation dtype (``None``: the promotion of the inputs' and the parameters'
dtypes). The weights enter each matmul in ``dtype`` with the products accumulated in at least
float32 (:func:`accumulation_dtype`); biases, gate nonlinearities and the carry (``h``, and
the LSTM's ``c``) are in that accumulation dtype, so a bfloat16 or float16 computation keeps
a float32 state from step to step; each step's output is returned in ``dtype``.
"""

from jaxrnn.cells import registry
from jaxrnn.cells._base import (
    Array,
    Carry,
    DType,
    Params,
    accumulation_dtype,
    check_floating,
    input_bias,
    matmul,
)
from jaxrnn.cells._base import CellBase as Cell

# isort: off
# Importing a cell's module registers it: this order is that of registry.names().
from jaxrnn.cells.simple import SimpleRNN
from jaxrnn.cells.lstm import LSTM
from jaxrnn.cells.gru import GRU
from jaxrnn.cells.minimal import MinGRU, MinLSTM
from jaxrnn.cells.rglru import RGLRU

# isort: on
from jaxrnn.cells.linear import LinearCell
from jaxrnn.cells.registry import register

__all__ = [
    "GRU",
    "LSTM",
    "RGLRU",
    "Array",
    "Carry",
    "Cell",
    "DType",
    "LinearCell",
    "MinGRU",
    "MinLSTM",
    "Params",
    "SimpleRNN",
    "accumulation_dtype",
    "check_floating",
    "input_bias",
    "matmul",
    "register",
    "registry",
]
