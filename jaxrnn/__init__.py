"""jaxrnn: recurrent networks for JAX as pure functions on ``jax.lax.scan``.

Cells step (``SimpleRNN``, ``LSTM``, ``GRU``, the linear recurrences ``MinGRU``, ``MinLSTM``
and ``RGLRU``, or one's own: a subclass of ``Cell``, named
with ``jaxrnn.cells.register``); drivers loop over time (``rnn`` with
``lax.scan``, ``static_rnn`` with a Python loop); layers combine them (``bidirectional``,
``Stack``/``stacked``); ``tbptt`` runs long sequences in windows (truncated backpropagation
through time); ``jaxrnn.masking`` handles padded batches; ``jaxrnn.nn`` wraps the
same functions as Flax modules; ``jaxrnn.interop`` loads and writes PyTorch and Keras weights.
"""

from jaxrnn import interop
from jaxrnn.cells import GRU, LSTM, RGLRU, Cell, MinGRU, MinLSTM, SimpleRNN
from jaxrnn.drivers import reset_carry, rnn, static_rnn
from jaxrnn.layers import Bidirectional, Stack, bidirectional, stacked
from jaxrnn.masking import (
    lengths_from_mask,
    lengths_from_padding,
    mask_from_lengths,
    reverse_sequence,
)
from jaxrnn.options import RunOptions
from jaxrnn.tbptt import tbptt

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RGLRU",
    "Bidirectional",
    "Cell",
    "MinGRU",
    "MinLSTM",
    "RunOptions",
    "SimpleRNN",
    "Stack",
    "bidirectional",
    "interop",
    "lengths_from_mask",
    "lengths_from_padding",
    "mask_from_lengths",
    "reset_carry",
    "reverse_sequence",
    "rnn",
    "stacked",
    "static_rnn",
    "tbptt",
]
