"""ReLU SimpleRNN 16 on MNIST rows with Keras' RMSprop (lr 0.01, rho 0.9, eps 1e-7 added
outside the square root).

Tutorial: "RNN for MNIST with TensorFlow and Keras" (a Keras notebook):
``SimpleRNN(16, activation="relu")``, ``Dense(10)``, softmax; Keras initialisers
(Glorot-uniform kernel, orthogonal recurrent kernel, zero bias); batch 100, 20 epochs; test
accuracy 0.8495.

Run (MNIST is downloaded, or read from a directory of its idx files):

    jaxrnn train --config simplernn_mnist [--mnist_dir DIR]

Expected: test accuracy 0.875 mean over 3 seeds (0.860-0.886); Keras 3 0.799 (0.759-0.828).
A ReLU RNN is chaotic in float rounding: single seeds move by a few hundredths.
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="mnist_rows",
        cell="rnn",
        activation="relu",
        hidden_size=16,
        readout="last",
        masked=False,
        optimizer="rmsprop",
        learning_rate=0.01,
        rho=0.9,
        eps=1e-7,
        eps_in_sqrt=False,
        batch_size=100,
        num_steps=0,
        num_epochs=20,
        steps_per_call=500,
        eval_every=2000,
        log_every=500,
        checkpoint_every=2000,
    )
