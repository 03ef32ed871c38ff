"""The CLI's `configs` listing, `--mnist_dir`, `--import` and `plot --out`."""

import os
import sys

import pytest

from jaxrnn import configs
from jaxrnn.cli import main


def test_configs_lists_every_config_with_its_fields(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == list(configs.NAMES)
    for name, line in zip(configs.NAMES, lines, strict=True):
        config = configs.get_config(name)
        assert f"dataset='{config.dataset}'" in line and f"hidden_size={config.hidden_size}" in line


@pytest.mark.parametrize("command", ["train", "eval"])
def test_mnist_dir_is_where_mnist_is_read(command, tmp_path, capsys):
    """A fresh data directory must be prepared from --mnist_dir (the environment's offline
    copy notwithstanding): an empty one is an error that names it."""
    nowhere = tmp_path / "nowhere"
    data_dir = tmp_path / "tfds"
    if command == "train":
        args = ["train", "--config", "rnn_mnist", "--workdir", str(tmp_path / "run")]
    else:  # a workdir of an MNIST config, as `train` leaves it before loading any data
        from jaxrnn.training import workdir

        run = str(tmp_path / "run")
        workdir.prepare(run, "rnn_mnist", configs.get_config("rnn_mnist"), False, True)
        args = ["eval", "--workdir", run]
    code = main(args + ["--mnist_dir", str(nowhere), "--data_dir", str(data_dir)])
    assert code == 2
    assert str(nowhere) in capsys.readouterr().err
    assert not os.path.isdir(data_dir / "jaxrnn_mnist" / "1.0.0")


_CELL_MODULE = '''
import dataclasses

import jaxrnn


@jaxrnn.cells.register("cli_test_rnn")
@dataclasses.dataclass(frozen=True)
class CliTestRNN(jaxrnn.SimpleRNN):
    """A cell defined outside jaxrnn."""
'''


def test_import_registers_a_users_cell_and_plot_out(tiny, tmp_path, monkeypatch, capsys):
    """``--import`` makes a cell defined in the user's module a name for ``--set cell=``;
    without it, the name is refused before the work directory is made, with a hint. The run's
    ``plot --out`` writes where asked (one tiny run for both)."""
    (tmp_path / "cli_test_cells.py").write_text(_CELL_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # --import puts the directory first
    run = str(tmp_path / "run")
    train = ["train", "--config", "lstm_sequences", "--workdir", run, "--set", "cell=cli_test_rnn"]
    train += [a for s in tiny for a in ("--set", s)]
    assert main(train) == 2
    assert "registered when the module that defines it is imported" in capsys.readouterr().err
    assert not os.path.exists(run)
    assert main(train + ["--import", "no_such_module_here"]) == 2
    assert "--import no_such_module_here" in capsys.readouterr().err
    assert main(train + ["--import", "cli_test_cells"]) == 0
    with open(os.path.join(run, "config.json")) as f:
        assert '"cell": "cli_test_rnn"' in f.read()
    assert main(["eval", "--workdir", run, "--import", "cli_test_cells"]) == 0
    capsys.readouterr()
    out = tmp_path / "figures" / "curves of the run.png"
    out.parent.mkdir()
    assert main(["plot", "--workdir", run, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(run, "curves.png"))
