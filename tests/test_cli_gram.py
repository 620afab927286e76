"""`npk gram`: the Gram of a saved model over a data split, into a .npy file, resumable, with clear errors."""
import json

import numpy as np
import pytest
import torch

from npk import cli, data
from npk.cli_gram import build_model, parse_bytes
from npk.kernels.npk import npk_gram
from npk.kernels.ntk import ntk_gram
from npk.kernels.store import model_fingerprint
from npk.models import DLGN, from_module
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
    assert f"the {kernel.upper()} Gram of 40 digits train samples" in capsys.readouterr().out
    assert not (tmp_path / "H.npy.tiles").exists()                  # the store goes once the Gram is complete
    context = json.loads((tmp_path / "H.json").read_text())["context"]
    assert context["data"]["labels"] == data.load("digits", n_train=40).y_train.tolist()
    assert len(context["data"]["indices"]) == 40 and context["data"]["indices"] == sorted(context["data"]["indices"])
    assert context["model"] == {"spec": MODEL, "checkpoint": str(checkpoint), "fingerprint": model_fingerprint(model)}
    assert context["kernel"] == kernel and context["memory_budget"] == budget
    assert cli.main(argv) == 0 and "is complete for this command" in capsys.readouterr().out
    kept = [a if a != str(out) else str(tmp_path / "K.npy") for a in argv] + ["--keep-tiles"]
    assert cli.main(kept) == 0 and len(list((tmp_path / "K.npy.tiles").glob("tile_*.pt"))) > 1
    assert np.array_equal(np.load(tmp_path / "K.npy"), expected.detach().numpy())


NET = """
from torch import nn
class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
"""


def test_a_users_own_module_and_its_state_dict_give_the_gram_of_its_trace(tmp_path):
    (tmp_path / "mynet.py").write_text(NET)
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    assert cli.main(["gram", str(tmp_path / "net.pt"), "--module", f"{tmp_path}/mynet.py:Net", "--n", "20",
                     "--dtype", "float64", "--out", str(tmp_path / "H.npy"), "--no-progress"]) == 0
    X = data.load("digits", n_train=20, flatten=True, dtype=torch.float64).X_train
    expected = npk_gram(from_module(net.double().eval(), X[:1]), X)
    assert np.array_equal(np.load(tmp_path / "H.npy"), expected.numpy())


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
