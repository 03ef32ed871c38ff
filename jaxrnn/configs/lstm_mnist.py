"""LSTM 128 on MNIST rows with TF1 ``BasicLSTMCell(forget_bias=1.0)``: the bias is added inside
every step (not trained) and the trained bias starts at zero.

Tutorial: "Recurrent Neural Network" / "Long Short-Term Memory" (a TF1 notebook on LSTMs with
MNIST): ``dynamic_rnn`` then a dense layer on the last output; TF1 Adam 1e-3 (eps 1e-8),
batch 100, 1000 steps; 0.92 on the last printed batch. The head is Glorot-initialised as in
Keras (``--set head_init=normal`` for the tutorial's standard-normal head).

Run (MNIST is downloaded, or read from a directory of its idx files):

    jaxrnn train --config lstm_mnist [--mnist_dir DIR]

Expected: test accuracy 0.964 mean over 3 seeds (0.961-0.965); Keras 3 0.962 (0.960-0.964).
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="mnist_rows",
        cell="lstm",
        hidden_size=128,
        readout="last",
        masked=False,
        forget_bias=1.0,
        forget_bias_init=0.0,
        optimizer="adam",
        learning_rate=1e-3,
        eps=1e-8,
        batch_size=100,
        num_steps=1000,
        steps_per_call=100,
        eval_every=500,
        log_every=100,
        checkpoint_every=500,
    )
