"""The adding problem (Hochreiter and Schmidhuber, 1997): sum the two marked numbers of a
sequence of 50 (regression, mean squared error on the last step's output).

Not a tutorial: a long-memory check for the LSTM. ``--set dataset=adding_200`` (or
``adding_1000``) makes it harder; a model that ignores the inputs scores an MSE of ~0.167.

Run:

    jaxrnn train --config adding
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="adding_50",
        cell="lstm",
        hidden_size=64,
        readout="last",
        masked=False,
        optimizer="adam",
        learning_rate=1e-3,
        eps=1e-7,
        clip_norm=1.0,
        batch_size=64,
        num_steps=3000,
        steps_per_call=100,
        eval_every=1000,
        log_every=100,
        checkpoint_every=1000,
    )
