"""Masked LSTM 32 on toy sequences: linear vs random, lengths 5 to 20 padded with -1.

Tutorial: "Dynamic Recurrent Neural Network" (Aymeric Damien's TensorFlow-Examples, TF2),
https://github.com/aymericdamien/TensorFlow-Examples/blob/master/tensorflow_v2/notebooks/3_NeuralNetworks/dynamic_rnn.ipynb
Keras ``Masking(-1)``, ``LSTM(32)`` and ``Dense(2)``; Adam 1e-3, batch 64, 2000 steps; about
0.95 on the last batches. The LSTM's output at each sequence's last valid step feeds the head.

Run:

    jaxrnn train --config lstm_sequences

Expected: test accuracy 0.967 mean over 3 seeds (0.963-0.969); Keras 3 on the same data
0.978 (0.976-0.981). The task is chaotic in float rounding: another CPU moves single seeds
by up to 0.02, and over six seeds jaxrnn and Keras 3 average within the seeds' spread of
each other (see the benchmarks page of the documentation).
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
