"""The one configuration type of a training run, and ``key=value`` overrides.

A :class:`Config` is a flat frozen dataclass: every field can be changed from the command line
with ``--set key=value`` (the value is parsed as the field's type; unknown keys and values that
do not parse are errors naming the key).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on. Defaults are the toy-sequence tutorial's."""

    # Data (``jaxrnn.data.load`` names).
    dataset: str = "linear_vs_random"
    train_examples: int = 0  # use only the first N training examples (0: all)
    test_examples: int = 0  # evaluate on the first N test examples (0: all)
    # Shards of the training examples, each feeding batch_size / data_shards rows of every
    # batch; the batch order depends on (seed, data_shards) only. 0: one per process.
    data_shards: int = 0
    # Text datasets (``jaxrnn.data.text``): the training text is cut into batch_size parallel
    # streams, and row s of batch i is window i of stream s, this many characters (the
    # truncated-BPTT length); an "example" is one window.
    window: int = 100
    stateful: bool = False  # carry the recurrent state from each batch into the next

    # Model (``jaxrnn.models.Model``).
    cell: str = "lstm"  # a registered cell (jaxrnn.cells.registry): "rnn", "lstm", "gru", ...
    hidden_size: int = 32
    num_layers: int = 1
    bidirectional: bool = False
    readout: str = "last"
    activation: str = "tanh"
    forget_bias: float = 0.0
    forget_bias_init: float = 1.0
    proj_size: int = 0  # LSTM: project h to this many units (0: none)
    peepholes: bool = False  # LSTM: peephole connections from the cell state
    cell_clip: float = 0.0  # LSTM: clip the cell state to [-v, v] (0: off)
    proj_clip: float = 0.0  # LSTM: clip the projection to [-v, v] (0: off)
    layer_norm: bool = False  # layer-normalized LSTM or GRU
    masked: bool = True
    dropout: float = 0.0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    head_init: str = "glorot"
    unroll: int = 1

    # Precision and implementation (``jaxrnn.models.Model``, ``jaxrnn.rnn``).
    dtype: str = "float32"  # computation dtype: bfloat16, float16, float32 or float64
    param_dtype: str = "float32"  # parameters, optimizer state and checkpoints
    implementation: str = "auto"  # "auto" (jaxrnn chooses) or one of jaxrnn.rnn's

    # Optimizer (``jaxrnn.training.optimizers.make_optimizer``).
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-7  # Keras' default for Adam and RMSprop
    rho: float = 0.9  # RMSprop decay
    eps_in_sqrt: bool = False  # RMSprop: Keras adds eps outside the square root
    eps_hat: bool = True  # Adam: TF/Keras add eps to sqrt(v) before bias correction
    clip_norm: float = 0.0  # global-norm gradient clipping (0: off)
    schedule: str = "constant"  # "constant", "cosine", "warmup_cosine"
    warmup_steps: int = 0

    # Budget and loop.
    batch_size: int = 64
    num_steps: int = 2000  # train steps; if 0, num_epochs * (train examples // batch_size)
    num_epochs: int = 0
    steps_per_call: int = 100  # train steps inside one compiled call (lax.scan over batches)
    eval_batch_size: int = 1000
    eval_every: int = 0  # evaluate on the test split every N steps (0: only at the end)
    log_every: int = 100  # train metrics written every N steps (rounded to the block)
    checkpoint_every: int = 1000  # rounded up to a multiple of steps_per_call
    keep_checkpoints: int = 2
    seed: int = 0

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def _parse(name: str, kind, text: str):
    if kind in (bool, "bool"):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {name}={text}: expected a bool (true/false)")
    converter = {"int": int, "float": float, "str": str}.get(kind, kind)
    try:
        if converter is int:
            value = float(text)  # accepts 1e3
            if value != int(value):
                raise ValueError
            return int(value)
        return converter(text)
    except ValueError:
        raise ValueError(f"--set {name}={text}: expected {converter.__name__}") from None


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """``config`` with each ``"key=value"`` applied; unknown keys raise ``ValueError``."""
    kinds = {f.name: f.type for f in dataclasses.fields(config)}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in kinds:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(kinds))}")
        changes[key] = _parse(key, kinds[key], text)
    return config.replace(**changes)
