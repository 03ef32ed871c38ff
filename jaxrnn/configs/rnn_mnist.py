"""tanh RNN 150 on MNIST rows, classified from the final state.

Tutorial: ``../shared/seeds/basic_rnns_tf1.md`` (TF1 ``BasicRNNCell(150)`` in ``dynamic_rnn``,
``fully_connected`` on the final state; Adam 1e-3 (eps 1e-8), batch 150, 10 epochs; test
accuracy 0.9749).

Run::

    jaxrnn train --config rnn_mnist --mnist_dir ../shared/data/mnist

Expected (3 seeds, AVX-512 CPU): test accuracy 0.972 mean, 0.971-0.973 (Keras 3 mean 0.972).
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
