"""Character-level language model: an LSTM 256 reads Shakespeare's tragedies one character at
a time and predicts the next.

Not a tutorial: char-rnn (Karpathy, 2015) at a size that trains on a laptop CPU. The text is
the ``shakespeare`` corpus shipped with jaxrnn (``jaxrnn.data.text``: five tragedies to
train on, Macbeth held out; public domain). The training text is cut into 32 parallel
streams and each batch holds the next 100 characters of every stream; ``stateful`` carries
the LSTM's state from one batch into the next (truncated backpropagation through time over
windows of 100), restarting it where a pass over the streams begins. Inputs are one-hot
characters; Adam 2e-3 with a cosine decay, gradients clipped to norm 1.

Run, then draw text from the trained model:

    jaxrnn train --config char_lm --workdir runs/char_lm
    jaxrnn sample --workdir runs/char_lm --prompt "MACBETH:" --temperature 0.8

Expected: held-out (Macbeth) 2.475 bits per character (next-character accuracy 0.511),
where a unigram model of the training text's character frequencies scores 4.808 on the same
play. 6000 steps took 12.8 minutes of training (compilation 3.0 s) on a 2-core x86-64 Xeon
shared with other jobs, jax 0.10.2; results in ``benchmarks/results/char_lm.json`` (from
``jaxrnn train --config char_lm --workdir runs/char_lm``, then
``python scripts/char_lm_results.py runs/char_lm``).
"""

from jaxrnn.configs.base import Config


def get_config() -> Config:
    return Config(
        dataset="shakespeare",
        window=100,
        stateful=True,
        cell="lstm",
        hidden_size=256,
        readout="sequence",
        masked=False,
        forget_bias_init=1.0,
        optimizer="adam",
        learning_rate=2e-3,
        eps=1e-7,
        clip_norm=1.0,
        schedule="cosine",
        batch_size=32,
        num_steps=6000,
        steps_per_call=100,
        eval_batch_size=1,  # the held-out play read as one stream
        eval_every=1000,
        log_every=100,
        checkpoint_every=1000,
    )
