"""Masked LSTM 32 on toy sequences: linear vs random, lengths 5 to 20 padded with -1.

Tutorial: ``../shared/seeds/dynamic_lstm_toy_sequences_tf2.md`` (TF2 Keras ``Masking(-1)`` then
``LSTM(32)`` and ``Dense(2)``; Adam 1e-3, batch 64, 2000 steps; ~0.95 on the last batches).
The LSTM's output at each sequence's last valid step feeds the head.

Run::

    jaxrnn train --config lstm_sequences

Expected (3 seeds, AVX-512 CPU): test accuracy 0.959 mean, 0.955-0.964, below issue 7's Keras 3
mean 0.978; over six seeds on this data jaxrnn averages 0.969 and Keras 3 0.970 (JAX backend)
and 0.940 (TensorFlow): see benchmarks/results/lstm_sequences_seeds.md. The task is chaotic:
float rounding (another CPU, another backward pass) moves single seeds by up to 0.02.
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="linear_vs_random",
        cell="lstm",
        hidden_size=32,
        readout="last",
        masked=True,
        optimizer="adam",
        learning_rate=1e-3,
        eps=1e-7,
        batch_size=64,
        num_steps=2000,
        steps_per_call=100,
        eval_every=500,
        log_every=100,
        checkpoint_every=1000,
    )
