"""One module per experiment, each with ``get_config() -> Config``; ``get_config(name)`` here."""

from __future__ import annotations

import importlib

from jaxrnn.configs.base import Config, apply_overrides

NAMES = (
    "lstm_sequences",
    "birnn_mnist",
    "lstm_mnist",
    "rnn_mnist",
    "simplernn_mnist",
    "adding",
    "char_lm",
)


def get_config(name: str) -> Config:
    """The :class:`Config` of experiment ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise ValueError(f"unknown config {name!r}; choose one of: {', '.join(NAMES)}")
    return importlib.import_module(f"jaxrnn.configs.{name}").get_config()


__all__ = ["NAMES", "Config", "apply_overrides", "get_config"]
