"""Every bad input of issue 11, as tables: (input, expected error, a phrase of its message).

LIBRARY: a call and the exception it must raise. COMMAND: an `npk` command line that must fail with exit
status 2 and one line on stderr (no traceback), or warn. FILES: a damaged file in a data or run folder
that must be named. The count of cases is len(LIBRARY) + len(COMMAND) + len(FILES).
"""
import gzip
import json

import numpy as np
import pytest
import torch

import npk
from npk import cli, data, models
from npk.fit import gp_posterior, kernel_ridge
from npk.models import regimes
from npk.kernels.npk import npk_gram

X4 = torch.ones(3, 4, dtype=torch.float64)


def dnn64():
    return models.DNN(4, [3], 2).double()


LIBRARY = [
    ("DNN(4, [2.7], 2)", lambda: models.DNN(4, [2.7], 2), ValueError,
     "widths must be a non-empty list of positive ints (e.g. [64, 64]), got [2.7]"),
    ('DNN(4, "64", 2)', lambda: models.DNN(4, "64", 2), ValueError, "widths must be a non-empty list of positive ints"),
    ("DNN(4.5, [3], 2)", lambda: models.DNN(4.5, [3], 2), ValueError, "d_in must be a positive int, got 4.5"),
    ("DNN(4, [3], 0)", lambda: models.DNN(4, [3], 0), ValueError, "d_out must be a positive int, got 0"),
    ('ConvDNN(1, "64")', lambda: models.ConvDNN(1, "64", input_size=8), ValueError,
     "channels must be a non-empty list of positive ints"),
    ("DLGN(..., beta=nan)", lambda: models.DLGN(4, [3], 2, gate="soft", beta=float("nan")), ValueError,
     "beta must be a finite number > 0, got nan"),
    ("DLGN(..., eps=-1)", lambda: models.DLGN(4, [3], 2, gate="soft", eps=-1.0), ValueError,
     "eps must be a finite number >= 0"),
    ("npk_gram(memory_budget=-1)", lambda: npk_gram(dnn64(), X4, memory_budget=-1), ValueError,
     "memory_budget (bytes) must be a finite number > 0, got -1"),
    ("ntk_gram(memory_budget=-1)", lambda: npk.ntk_gram(dnn64(), X4, memory_budget=-1), ValueError,
     "memory_budget (bytes) must be a finite number > 0"),
    ("ntk_gram(empty X)", lambda: npk.ntk_gram(dnn64(), X4[:0]), ValueError, "X holds no samples (shape (0, 4))"),
    ("ntk_gram(X, empty Y)", lambda: npk.ntk_gram(dnn64(), X4, X4[:0]), ValueError, "Y holds no samples"),
    ("npk_gram(empty X)", lambda: npk_gram(dnn64(), X4[:0]), ValueError, "X holds no samples"),
    ("kernel_ridge(empty Gram)", lambda: kernel_ridge(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long),
                                                      torch.zeros(0, 0)), ValueError, "K_train holds no samples"),
    ("gp_posterior(NaN targets)", lambda: gp_posterior(torch.eye(2), torch.tensor([1.0, float("nan")]),
                                                       torch.ones(1, 2), torch.ones(1), 0.1), ValueError,
     "y_train contains NaN or inf (first bad indices [[1]])"),
]


@pytest.mark.parametrize("call, error, phrase", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_a_bad_argument_is_refused_with_what_is_expected(call, error, phrase):
    with pytest.raises(error) as info:
        call()
    assert phrase in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ the command
COMMAND = [
    ("npk --bogus", ["--bogus"], "npk: error: unrecognized arguments: --bogus"),
    ("npk", [], "npk: error: expected a command: demo, run, list"),
    ("--config on a missing file", ["run", "theorems", "--config", "{tmp}/missing.json"],
     "--config {tmp}/missing.json: no such file; expected a JSON file of config overrides"),
    ("--config on a folder", ["run", "theorems", "--config", "{tmp}"], "--config {tmp}: cannot read it"),
    ("--config on a JSON list", ["run", "theorems", "--config", "{tmp}/list.json"],
     "--config {tmp}/list.json: expected a JSON object {{\"key\": value, ...}}, got a list"),
    ("--config on broken JSON", ["run", "theorems", "--config", "{tmp}/broken.json"],
     "--config {tmp}/broken.json: not valid JSON (Expecting value at line 1 column 12)"),
    ("--out on an existing file", ["run", "theorems", "--out", "{tmp}/a-file"],
     "--out {tmp}/a-file: is a file; expected a folder (new or existing)"),
    ("--out on an unwritable path", ["run", "theorems", "--out", "{tmp}/a-file/run"],
     "--out {tmp}/a-file/run: cannot write in {tmp}/a-file"),
    ("--set epochs=abc", ["run", "npk-evolution", "--set", "epochs=abc"],
     "config key 'epochs' of 'npk-evolution' expects an int (default 30), got \"abc\""),
    ("--set lr=[1]", ["run", "npk-evolution", "--set", "lr=[1]"], "config key 'lr' of 'npk-evolution' expects a finite number"),
    ("--set multiclass=1", ["run", "npk-evolution", "--set", "multiclass=1"], "expects true or false"),
    ("--set n_train=abc (null default)", ["run", "npk-evolution", "--set", "n_train=abc"],
     "config key 'n_train' of 'npk-evolution' expects an int (default null)"),
    ("--set =3", ["run", "theorems", "--set", "=3"], "argument --set: expected key=value, got '=3'"),
    ("--set unknown key", ["run", "theorems", "--set", "widths=[3]"], "unknown config key(s) ['widths']"),
    ("--threads -3", ["run", "theorems", "--threads", "-3"], "argument --threads: expected a positive int, got '-3'"),
    ("--threads 0", ["run", "theorems", "--threads", "0"], "argument --threads: expected a positive int, got '0'"),
    ("--n 0", ["run", "theorems", "--n", "0"], "argument --n: expected a positive int, got '0'"),
    ("--n-test x", ["run", "theorems", "--n-test", "x"], "argument --n-test: expected a positive int, got 'x'"),
    ("unknown experiment", ["run", "nope"], "no experiment named 'nope'"),
    ("unknown data set", ["run", "theorems", "--dataset", "svhn", "--out", "{tmp}/svhn"], "unknown data set 'svhn'"),
    ("diverging training (lr=1e9)", ["run", "npk-evolution", "--quick", "--no-progress", "--set", "lr=1e9",
                                     "--out", "{tmp}/nan"], "the training loss became nan in epoch 1; lower the learning rate"),
    ("missing data files", ["run", "npk-evolution", "--dataset", "mnist", "--data-root", "{tmp}/none",
                            "--out", "{tmp}/mnist"], "{tmp}/none"),
    ("npk gram on a corrupt checkpoint", ["gram", "{tmp}/a-file", "--model", "DLGN(64, [8], 10)", "--out",
                                          "{tmp}/g.npy"], "npk gram: error: {tmp}/a-file is unreadable"),
    ("npk gram --model with a bad argument", ["gram", "--model", "DLGN(64, [8], 10, bogus=1)", "--out", "{tmp}/g.npy"],
     "unexpected keyword argument 'bogus'"),
]


@pytest.fixture
def places(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text('{"epochs": }')
    (tmp_path / "a-file").write_text("")
    return tmp_path


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in COMMAND], ids=[c[0] for c in COMMAND])
def test_a_bad_command_line_fails_in_one_line_with_status_2(places, capsys, argv, phrase):
    argv = [a.format(tmp=places) for a in argv]
    with pytest.raises(SystemExit) as stop:
        raise SystemExit(cli.main(argv))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert phrase.format(tmp=places) in err


def test_an_error_during_training_starts_its_own_line_after_the_progress_bar(places, capsys):
    assert cli.main(["run", "npk-evolution", "--quick", "--set", "lr=1e9", "--out", str(places / "nan")]) == 2
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last == "npk run: error: the training loss became nan in epoch 1; lower the learning rate"


def test_an_ignored_data_root_warns(places, capsys):
    """--data-root for the embedded digits: a warning line (here before an --out error stops the run)."""
    assert cli.main(["run", "theorems", "--data-root", str(places), "--out", str(places / "a-file")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "npk run: warning: --data-root is ignored: the digits data set is embedded (scikit-learn), " \
                     "it reads no files"


# ------------------------------------------------------------------------------------------ damaged files
def idx_gz(path, a):
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    path.write_bytes(gzip.compress(head + a.astype(np.uint8).tobytes()))


def fashion_folder(root, test_shape=(28, 28)):
    rng = np.random.default_rng(0)
    idx_gz(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    idx_gz(root / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    idx_gz(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, *test_shape)))
    idx_gz(root / "t10k-labels-idx1-ubyte.gz", np.arange(10) % 10)
    return root


def mismatched_images(tmp):
    data.load("fashion-mnist", root=fashion_folder(tmp, (14, 56)))


def corrupt_gzip(tmp):
    root = fashion_folder(tmp)
    labels = root / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(labels.read_bytes())
    raw[12:20] = b"\xff" * 8                                  # inside the deflate stream
    labels.write_bytes(bytes(raw))
    data.load("fashion-mnist", root=root)


def corrupt_block(tmp):
    model, X = dnn64(), torch.randn(6, 4, dtype=torch.float64)
    expected = npk_gram(model, X, checkpoint_dir=tmp / "blocks", memory_budget=4 * 8 * 9)  # 3 x 3 blocks
    block = tmp / "blocks" / "tile_0_0.pt"
    block.write_bytes(block.read_bytes()[:30])
    assert torch.equal(npk_gram(model, X, checkpoint_dir=tmp / "blocks", memory_budget=4 * 8 * 9), expected)


def truncated_gate_checkpoint(tmp):
    path = tmp / "relu.pt"
    torch.save(models.DNN(4, [3], 2).state_dict(), path)
    path.write_bytes(path.read_bytes()[:50])
    regimes.gate_copy(models.DNN(4, [3], 2), path)


FILES = [
    ("Fashion-MNIST test images 14x56 beside 28x28", mismatched_images, ValueError,
     "t10k-images-idx3-ubyte.gz: test images are 14x56 but the training images in train-images-idx3-ubyte.gz are 28x28"),
    ("corrupt gzip stream in an idx .gz", corrupt_gzip, ValueError,
     "t10k-labels-idx1-ubyte.gz: not a readable idx file"),
    ("truncated Gram tile (recomputed)", corrupt_block, UserWarning, "tile_0_0.pt is corrupt or truncated"),
    ("truncated checkpoint given to gate_copy", truncated_gate_checkpoint, ValueError, "relu.pt is unreadable"),
]
# The truncated cache/*.pt and checkpoint.pt of a run folder: tests/test_run_folders.py (named, recomputed).


@pytest.mark.parametrize("make, error, phrase", [c[1:] for c in FILES], ids=[c[0] for c in FILES])
def test_a_damaged_file_is_named(tmp_path, make, error, phrase):
    if issubclass(error, Warning):
        with pytest.warns(error, match=phrase.replace(".", r"\.")):
            make(tmp_path)
        return
    with pytest.raises(error) as info:
        make(tmp_path)
    assert phrase in str(info.value) and str(tmp_path) in str(info.value)


def test_the_tables_count_the_cases():
    assert len(LIBRARY) + len(COMMAND) + len(FILES) == 42
    assert json.dumps([c[0] for c in LIBRARY + COMMAND + FILES])  # every case is named
