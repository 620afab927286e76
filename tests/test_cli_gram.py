"""`npk gram`: the Gram of a saved model over a data split, into a .npy file, resumable, with clear errors."""
import numpy as np
import pytest
import torch

from npk import cli, data
from npk.cli_gram import build_model, parse_bytes
from npk.kernels.npk import npk_gram
from npk.kernels.ntk import ntk_gram
from npk.models import DLGN
from npk.train import train

MODEL = "DLGN(64, [8, 8], 10)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DLGN trained for one epoch on 100 digits, checkpointed by npk.train."""
    folder = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    model = DLGN(64, [8, 8], 10)
    train(model, data.load("digits", n_train=100, n_test=50, flatten=True), epochs=1, lr=0.05,
          checkpoint_dir=folder, progress=False)
    return model, folder / "checkpoint.pt"


@pytest.mark.parametrize("kernel,budget", [("npk", 2**10), ("ntk", 2**16)])
def test_the_gram_of_a_trained_checkpoint_is_written_and_a_rerun_resumes(trained, tmp_path, kernel, budget, capsys):
    model, checkpoint = trained
    out = tmp_path / "H.npy"
    argv = ["gram", str(checkpoint), "--model", MODEL, "--n", "40", "--kernel", kernel, "--out", str(out),
            "--memory-budget", str(budget), "--no-progress"]
    assert cli.main(argv) == 0
    X = data.load("digits", n_train=40, flatten=True).X_train
    expected = (npk_gram if kernel == "npk" else ntk_gram)(model, X, memory_budget=budget)
    assert np.array_equal(np.load(out), expected.detach().numpy())
    assert len(list((tmp_path / "H.npy.tiles").glob("tile_*.pt"))) > 1
    assert cli.main(argv) == 0                      # resumes: every tile is in the store
    assert np.array_equal(np.load(out), expected.detach().numpy())
    assert f"the {kernel.upper()} Gram of 40 digits train samples" in capsys.readouterr().out


def test_bad_models_sizes_and_memory_limits_fail_with_one_line(tmp_path, trained, capsys):
    _, checkpoint = trained
    out = str(tmp_path / "H.npy")
    assert cli.main(["gram", "--model", "os.system('x')", "--out", out]) == 2
    assert "--model must be a call of an npk.models class" in capsys.readouterr().err
    assert cli.main(["gram", "--model", "Sequential()", "--out", out]) == 2
    assert "'Sequential' is not in npk.models" in capsys.readouterr().err
    assert cli.main(["gram", str(checkpoint), "--model", "DLGN(64, [9, 8], 10)", "--out", out]) == 2
    assert "does not hold weights of this --model" in capsys.readouterr().err
    assert cli.main(["gram", "--model", MODEL, "--out", out, "--max-memory", "1KiB", "--no-progress"]) == 2
    assert "npk gram: error: npk_gram needs about" in capsys.readouterr().err
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1e6") == 10**6
    assert build_model("C4GAP('dnn', in_channels=1, input_size=8, width=4)").input_shape == (1, 8, 8)
