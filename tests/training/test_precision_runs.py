"""Training in bfloat16 through the CLI: the tutorial config's accuracy, the report's dtypes,
float32 losses and the parameters' dtype in checkpoints."""

import json
import os

import jax
import numpy as np
import pytest

from jaxrnn.cli import main
from jaxrnn.training.loop import read_metrics


def _train(workdir, *overrides):
    args = ["train", "--config", "lstm_sequences", "--workdir", str(workdir)]
    assert main(args + sum((["--set", o] for o in overrides), [])) == 0
    return json.load(open(os.path.join(workdir, "report.json")))


@pytest.mark.slow
def test_lstm_sequences_in_bfloat16_lands_within_two_points_of_float32(tmp_path):
    f32 = _train(tmp_path / "f32")
    bf16 = _train(tmp_path / "bf16", "dtype=bfloat16")
    assert (f32["dtype"], f32["param_dtype"]) == ("float32", "float32")
    assert (bf16["dtype"], bf16["param_dtype"]) == ("bfloat16", "float32")
    assert f32["test_accuracy"] > 0.9  # it learned: the comparison means something
    assert abs(bf16["test_accuracy"] - f32["test_accuracy"]) <= 0.02, (f32, bf16)
    # Losses are logged in float32 (finite, not rounded to bfloat16's 8 bits).
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "bf16")) if r["split"] == "train"]
    assert all(np.isfinite(losses))
    assert any(float(jax.numpy.bfloat16(x)) != x for x in losses)


def test_bad_dtype_and_implementation_settings_are_errors(tiny, tmp_path, capsys):
    base = ["train", "--config", "lstm_sequences", "--workdir", str(tmp_path / "w")]
    for override, message in [
        ("dtype=int8", "dtype must be a floating dtype"),
        ("implementation=xla", "implementation must be one of"),
    ]:
        args = base + sum((["--set", o] for o in tiny + [override]), [])
        assert main(args) == 2
        assert message in capsys.readouterr().err
