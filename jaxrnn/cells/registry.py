"""The registry of cells: the name each cell is known by, and the CPU kernels it binds.

A cell makes itself known where it is defined, with :func:`register` on its class. For
example a gated cell without a recurrent matrix, ``[a, c] = x @ w_i + b``, ``s =
sigmoid(a)``, ``h' = s * h + (1 - s) * tanh(c)``::

    @jaxrnn.cells.register("mingated")
    @dataclasses.dataclass(frozen=True)
    class MinGated(jaxrnn.Cell):
        hidden_size: int
        dtype: Any = dataclasses.field(default=None, kw_only=True)
        param_dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)
        gates = 2  # blocks of hidden_size in the input projection x @ w_i + b

        def param_shapes(self, input_size):  # what rnn checks the params against: no w_h
            return {"w_i": (input_size, 2 * self.hidden_size)}

        def recurrent(self, params, h):  # no recurrent matmul
            return None

        def init(self, key, input_size, dtype=None):
            dtype = self.param_dtype if dtype is None else dtype
            w_i = jax.nn.initializers.glorot_uniform()(key, (input_size, 2 * self.hidden_size))
            return {"w_i": w_i.astype(dtype), "b": jnp.zeros(2 * self.hidden_size, dtype)}

        def update(self, params, carry, xp, hw):  # xp: [batch, 2 * hidden_size], projected
            a, c = jnp.split(xp, 2, axis=-1)
            s = jax.nn.sigmoid(a)
            h = s * carry + (1.0 - s) * jnp.tanh(c)
            return h, h  # the new carry and this step's output

``jaxrnn.rnn(MinGated(32), ...)``, ``bidirectional`` and ``Stack`` run it as any cell, and
once registered ``Model(cell="mingated", ...)`` and ``--set cell=mingated`` build it (in a
process that has imported the module that defines it: ``jaxrnn train --import MODULE``).
jaxrnn's own cells are registered as ``"rnn"`` (:class:`jaxrnn.SimpleRNN`), ``"lstm"``
(:class:`jaxrnn.LSTM`), ``"gru"`` (:class:`jaxrnn.GRU`), ``"mingru"``, ``"minlstm"`` and
``"rglru"`` (:class:`jaxrnn.MinGRU`, :class:`jaxrnn.MinLSTM`, :class:`jaxrnn.RGLRU`).

A model builds its cell from its options by name (:func:`build`): every option that the
cell's dataclass has a field of that name receives, and the ones it has not are left out. The
options use ``0`` for "off" (``cell_clip=0``); where the cell's field defaults to ``None``
(``LSTM.cell_clip``), ``0`` is passed as ``None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from jaxrnn.cells._base import CellBase, DType

CellType = TypeVar("CellType", bound=type)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered cell: its ``name``, its class and its CPU kernels (``kernels``: pairs of
    an XLA FFI target name and the symbol of jaxrnn's compiled library that implements it)."""

    name: str
    cell_type: type
    kernels: tuple[tuple[str, str], ...] = ()

    def options(self) -> tuple[str, ...]:
        """The names of the cell's constructor fields (the options it takes by name)."""
        return tuple(f.name for f in dataclasses.fields(self.cell_type) if f.init)


_entries: dict[str, Entry] = {}


def register(name: str, *, kernels: Mapping[str, str] | None = None) -> Callable:
    """A class decorator that registers a cell class under ``name``; returns the class.

    Args:
      name: what ``Model(cell=...)`` and ``--set cell=...`` call it: a non-empty identifier
        (letters, digits, underscores), not already taken by another class.
      kernels: for a cell whose fused loop calls CPU kernels of jaxrnn's compiled library
        (``csrc/``): ``{ffi_target: symbol}``, each target registered with XLA when the
        kernels load. A cell defined outside jaxrnn has none.

    The class must be a frozen dataclass that subclasses :class:`jaxrnn.Cell`, with the fields
    ``hidden_size``, ``dtype`` and ``param_dtype`` (the ones every model passes). Registering
    the same class (same module and name) again replaces its entry, so a module may be
    reloaded.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: name must be a non-empty identifier, got {name!r}")
    targets = tuple((kernels or {}).items())
    for target, symbol in targets:
        if not (isinstance(target, str) and isinstance(symbol, str) and target and symbol):
            raise TypeError(
                f"register({name!r}): kernels must map FFI target names to symbol names "
                f"(non-empty str), got {target!r}: {symbol!r}"
            )

    def decorate(cell_type: CellType) -> CellType:
        _check_cell_type(name, cell_type)
        old = _entries.get(name)
        if old is not None and _qualified(old.cell_type) != _qualified(cell_type):
            raise ValueError(
                f"register: the name {name!r} is taken by {_qualified(old.cell_type)}; "
                f"choose another for {_qualified(cell_type)}"
            )
        _entries[name] = Entry(name, cell_type, targets)
        return cell_type

    return decorate


def _qualified(cell_type: type) -> str:
    return f"{cell_type.__module__}.{cell_type.__qualname__}"


def _check_cell_type(name: str, cell_type) -> None:
    if not isinstance(cell_type, type) or not issubclass(cell_type, CellBase):
        raise TypeError(
            f"register({name!r}): expected a subclass of jaxrnn.Cell, got {cell_type!r}"
        )
    params = getattr(cell_type, "__dataclass_params__", None)
    if not dataclasses.is_dataclass(cell_type) or params is None or not params.frozen:
        raise TypeError(
            f"register({name!r}): {cell_type.__qualname__} must be a frozen dataclass "
            "(@dataclasses.dataclass(frozen=True)): cells are hashable values"
        )
    fields = {f.name for f in dataclasses.fields(cell_type) if f.init}
    missing = [f for f in ("hidden_size", "dtype", "param_dtype") if f not in fields]
    if missing:
        raise TypeError(
            f"register({name!r}): {cell_type.__qualname__} lacks the field(s) "
            f"{', '.join(missing)} that every model passes"
        )


def names() -> tuple[str, ...]:
    """The registered names, in the order of registration."""
    return tuple(_entries)


def get(name: str) -> Entry:
    """The :class:`Entry` registered as ``name``; ``ValueError`` naming the registered ones
    otherwise."""
    entry = _entries.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(
            f"cell must be one of {names()} (the registered cells; a cell defined outside "
            f"jaxrnn is registered when the module that defines it is imported), got {name!r}"
        )
    return entry


def takes(name: str, option: str) -> bool:
    """Whether the cell registered as ``name`` has a field ``option``."""
    return option in get(name).options()


def build(
    name: str,
    hidden_size: int,
    options: Mapping[str, Any] | None = None,
    *,
    dtype: DType = None,
    param_dtype: DType,
) -> CellBase:
    """The cell registered as ``name`` with ``hidden_size`` units, the computation and
    parameter dtypes, and every one of ``options`` that it has a field for (see the module
    docstring: the others are left out, ``0`` becomes ``None`` where the field defaults to
    ``None``)."""
    entry = get(name)
    fields = {f.name: f for f in dataclasses.fields(entry.cell_type) if f.init}
    chosen = {}
    for option, value in (options or {}).items():
        field = fields.get(option)
        if field is None or option in ("hidden_size", "dtype", "param_dtype"):
            continue
        off = not isinstance(value, bool) and isinstance(value, int | float) and value == 0
        chosen[option] = None if off and field.default is None else value
    return entry.cell_type(hidden_size=hidden_size, dtype=dtype, param_dtype=param_dtype, **chosen)


def kernel_targets() -> dict[str, str]:
    """Every registered cell's CPU kernels: ``{ffi_target: symbol}``."""
    return {target: symbol for entry in _entries.values() for target, symbol in entry.kernels}
