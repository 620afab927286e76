"""The `npk` command: argument parsing, listing, and its errors."""
import argparse
import json

import pytest

from npk import cli


def test_assignments_are_read_as_json_when_they_parse():
    assert cli.parse_assignment("epochs=3") == ("epochs", 3)
    assert cli.parse_assignment("widths=[8, 8]") == ("widths", [8, 8])
    assert cli.parse_assignment("dataset=digits") == ("dataset", "digits")
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        cli.parse_assignment("epochs")


def test_n_sets_the_training_size_and_halves_it_for_the_test_set():
    args = cli.build_parser().parse_args(["demo", "--dataset", "fashion-mnist", "--n", "2000", "--set", "seed=3"])
    assert cli.overrides_from(args) == {"dataset": "fashion-mnist", "n_train": 2000, "n_test": 1000, "seed": 3}
    args = cli.build_parser().parse_args(["run", "theorems", "--n", "100", "--n-test", "40"])
    assert cli.overrides_from(args) == {"n_train": 100, "n_test": 40}


def test_list_names_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert names == {"demo", "kernels-vs-network", "regimes", "dnn-dgn-dlgn", "gate-copy", "shuffle-and-ones",
                     "theorems", "npk-evolution", "spectral", "primal-dual"}


def test_unknown_experiment_and_unknown_key_fail_with_the_known_ones(tmp_path, capsys):
    assert cli.main(["run", "nope", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "no experiment named 'nope'" in err and "kernels-vs-network" in err
    assert cli.main(["run", "theorems", "--out", str(tmp_path / "b"), "--set", "widths=[3]"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) ['widths']" in err and "ntk_widths" in err


def test_a_finished_run_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "shuffle-and-ones", "--quick", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    first = (out / "results.json").read_text()
    sums = json.loads(first)["data_checksums"]
    assert list(sums) == ["digits binary=None"] and len(sums["digits binary=None"]) == 64
    assert cli.main(argv) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert (out / "results.json").read_text() == first
    assert cli.main(argv + ["--force"]) == 0
