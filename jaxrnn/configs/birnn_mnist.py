"""Bidirectional LSTM 32+32 on MNIST rows (28 steps of 28 pixels), on the final states.

Tutorial: "Bi-directional Recurrent Neural Network Example" (Aymeric Damien's
TensorFlow-Examples, TF2),
https://github.com/aymericdamien/TensorFlow-Examples/blob/master/tensorflow_v2/notebooks/3_NeuralNetworks/bidirectional_rnn.ipynb
Keras ``Bidirectional(LSTM(32), backward_layer=LSTM(32, go_backwards=True))`` then
``Dense(10)``; Adam 1e-3, batch 32, 1000 steps; 0.9375 on the last batch. The head reads the
forward state after the last row and the backward state after the first row.

Run (MNIST is downloaded, or read from a directory of its idx files):

    jaxrnn train --config birnn_mnist [--mnist_dir DIR]

Expected: test accuracy 0.910 mean over 3 seeds (0.899-0.924); Keras 3 0.906 (0.898-0.916).
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="mnist_rows",
        cell="lstm",
        hidden_size=32,
        bidirectional=True,
        readout="state",
        masked=False,
        forget_bias_init=1.0,  # Keras unit_forget_bias=True
        optimizer="adam",
        learning_rate=1e-3,
        eps=1e-7,
        batch_size=32,
        num_steps=1000,
        steps_per_call=100,
        eval_every=500,
        log_every=100,
        checkpoint_every=500,
    )
