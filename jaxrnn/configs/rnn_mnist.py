"""tanh RNN 150 on MNIST rows, classified from the final state.

Tutorial: "Basic RNNs in Tensorflow" (a TF1 notebook following chapter 14 of Aurélien
Géron's "Hands-On Machine Learning with Scikit-Learn and TensorFlow"): ``BasicRNNCell(150)``
in ``dynamic_rnn``, ``fully_connected`` on the final state; Adam 1e-3 (eps 1e-8), batch 150,
10 epochs; test accuracy 0.9749.

Run (MNIST is downloaded, or read from a directory of its idx files):

    jaxrnn train --config rnn_mnist [--mnist_dir DIR]

Expected: test accuracy 0.969 mean over 3 seeds (0.968-0.971); Keras 3 0.972 (0.969-0.975).
The final accuracy of a seed moves with float rounding by a few thousandths.
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="mnist_rows",
        cell="rnn",
        activation="tanh",
        hidden_size=150,
        readout="state",
        masked=False,
        optimizer="adam",
        learning_rate=1e-3,
        eps=1e-8,
        batch_size=150,
        num_steps=0,
        num_epochs=10,
        steps_per_call=200,
        eval_every=1000,
        log_every=200,
        checkpoint_every=1000,
    )
