"""Tests for the training-heavy experiments: regimes, dnn-dgn-dlgn, gate-copy, shuffle-and-ones.

Each runs once with its quick settings (tiny nets, 200 digits, 2-3 epochs); the tests read its results.json,
report.md and figures. Plus: resuming after an interruption, the shared helpers, and bad config.
"""
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import npk.train
from npk.experiments import dnn_dgn_dlgn as ddd_module
from npk.data import load
from npk.experiments import run_experiment
from npk.experiments.base import get, merge_config
from npk.experiments.common import gated_opts
from npk.experiments.gate_copy import saved_state
from npk.experiments.common import build_model, check_common, family_view, mean_std, pm
from npk.experiments.shuffle_and_ones import npk_change
from npk.models.conv import ConvDLGN
from npk.models.regimes import shuffled_gates
from npk.models.resnet import ResDGN

PNG = b"\x89PNG\r\n\x1a\n"


def quick_run(factory, name, **overrides):
    path = run_experiment(name, factory.mktemp(name) / "run", overrides=overrides, quick=True, progress=False)
    return path, json.loads((path / "results.json").read_text())


def check_figure(path, name):
    """The figure is a non-empty PNG and the report embeds it."""
    png = path / "figures" / name
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    assert f"(figures/{name})" in (path / "report.md").read_text()


def check_summary(summary, n_runs, low=0.0):
    """A {"best", "final"} summary: n_runs accuracies in [low, 1], mean and sample std computed from them."""
    for stat in ("best", "final"):
        s = summary[stat]
        runs = np.array(s["runs"])
        assert len(runs) == n_runs and np.all((runs >= low) & (runs <= 1))
        assert s["mean"] == pytest.approx(runs.mean(), abs=1e-12)
        assert s["std"] == pytest.approx(runs.std(ddof=1) if n_runs > 1 else 0.0, abs=1e-12)
    assert summary["best"]["mean"] >= summary["final"]["mean"] - 1e-12


@pytest.fixture(scope="module")
def regimes(tmp_path_factory):
    return quick_run(tmp_path_factory, "regimes")


@pytest.fixture(scope="module")
def ddd(tmp_path_factory):
    return quick_run(tmp_path_factory, "dnn-dgn-dlgn", families=["fc", "res"])


@pytest.fixture(scope="module")
def gate_copy(tmp_path_factory):
    return quick_run(tmp_path_factory, "gate-copy")


@pytest.fixture(scope="module")
def shuffle(tmp_path_factory):
    return quick_run(tmp_path_factory, "shuffle-and-ones")


# ------------------------------------------------------------------------------------------ regimes
def test_regimes_table(regimes):
    path, r = regimes
    order = ["FRNPF-II", "FRNPF-DI", "DLNPF", "FLNPF", "ReLU"]
    assert list(r["regimes"]) == ["fc", "conv"] and r["seeds"] == [0, 1]
    for family, low in (("fc", 0.3), ("conv", 0.0)):  # chance is 0.1; tiny conv nets barely train in 3 epochs
        assert list(r["regimes"][family]) == order
        for name in order:
            check_summary(r["regimes"][family][name], n_runs=2, low=low)
    # FLNPF's frozen gates are exactly the best ReLU checkpoint's gates, for every seed
    assert r["flnpf_gate_agreement"] == {"fc": [1.0, 1.0], "conv": [1.0, 1.0]}
    table = r["table"]
    assert table["columns"] == ["net (data)", *order] and len(table["rows"]) == 2
    assert table["rows"][0][5] == pm(r["regimes"]["fc"]["ReLU"]["best"])
    check_figure(path, "regimes.png")


def test_flnpf_copies_the_best_relu_checkpoint_after_a_resume(tmp_path):
    """A rerun loads the finished ReLU network from its checkpoint (best state included) and retrains FLNPF
    from it: the same accuracies as the first run, and the same gates."""
    out, overrides = tmp_path / "run", dict(families=["fc"], n_seeds=1, regimes=["FLNPF", "ReLU"])
    first = json.loads((run_experiment("regimes", out, overrides=overrides, quick=True, progress=False)
                        / "results.json").read_text())
    shutil.rmtree(out / "cache" / "regimes-fc-FLNPF-s0")
    again = json.loads((run_experiment("regimes", out, overrides=overrides, quick=True, progress=False, force=True)
                        / "results.json").read_text())
    for results in (first, again):    # training time differs between runs; everything else must not
        for run in results["regimes"]["fc"]["FLNPF"]["runs"] + results["regimes"]["fc"]["ReLU"]["runs"]:
            run.pop("wall_time_s")
    assert again["regimes"] == first["regimes"] and again["flnpf_gate_agreement"] == {"fc": [1.0]}


# ------------------------------------------------------------------------------------------ dnn-dgn-dlgn
def test_dnn_dgn_dlgn(ddd):
    path, r = ddd
    assert list(r["accuracy"]) == ["fc", "res"]
    for family, accs in r["accuracy"].items():
        assert list(accs) == ["dnn", "dgn", "dlgn"]
        for summary in accs.values():
            check_summary(summary, n_runs=1, low=0.3)
        for kind in ("dgn", "dlgn"):
            assert r["ratios"][family][f"{kind}/dnn"] == pytest.approx(
                accs[kind]["selected"]["mean"] / accs["dnn"]["selected"]["mean"], rel=1e-12)
            assert accs[kind]["selected_on"] == "test"   # the quick run holds out no validation split
    check_figure(path, "dnn-dgn-dlgn.png")
    report = (path / "report.md").read_text()
    assert "of the DNN's (2110.03403 reports" in report and "no validation split: an optimistic figure" in report


def test_dnn_dgn_dlgn_uses_the_authors_dlgn_gates_sigmoid_4q():
    cfg = merge_config(get("dnn-dgn-dlgn"), {})
    data = load("digits", n_train=20, n_test=10)
    model = build_model("fc", "dlgn", data.flat(), cfg, 0, **gated_opts("dlgn", cfg))
    q = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(model.gate_fn(q), torch.sigmoid(4 * q), rtol=0, atol=0)


def test_resume_after_interruption_does_not_retrain_finished_stages(tmp_path, monkeypatch):
    out = tmp_path / "run"
    overrides = dict(families=["fc"])
    real_build = ddd_module.build_model

    def build_then_fail(family, kind, *args, **kwargs):
        if kind == "dlgn":
            raise RuntimeError("interrupted")
        return real_build(family, kind, *args, **kwargs)

    monkeypatch.setattr(ddd_module, "build_model", build_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_experiment("dnn-dgn-dlgn", out, overrides=overrides, quick=True, progress=False)
    monkeypatch.setattr(ddd_module, "build_model", real_build)
    epochs = []
    real_epoch = npk.train._epoch
    monkeypatch.setattr(npk.train, "_epoch", lambda *a, **k: epochs.append(1) or real_epoch(*a, **k))
    run_experiment("dnn-dgn-dlgn", out, overrides=overrides, quick=True, progress=False)
    assert len(epochs) == 2  # only the DLGN's 2 epochs: the DNN and DGN were loaded from their checkpoints
    r = json.loads((out / "results.json").read_text())
    assert r["finished"] is True and set(r["accuracy"]["fc"]) == {"dnn", "dgn", "dlgn"}


# ------------------------------------------------------------------------------------------ gate-copy
def test_gate_copy(gate_copy):
    path, r = gate_copy
    assert r["copy_epochs"] == [0, 1, 2]
    relu = r["relu"]
    assert relu["epochs"] == [0, 1, 2] and len(relu["test_acc"]) == 3
    assert relu["best"]["mean"] == pytest.approx(max(relu["test_acc"][1:]), abs=1e-12)
    assert relu["at_copy_epochs"] == {str(k): relu["test_acc"][k] for k in (0, 1, 2)}
    assert relu["test_acc"][-1] > 0.3
    # the gates copied at k are the best checkpoint so far (k = 0: the initial state, hence FRNPF-II)
    acc = relu["test_acc"]
    assert r["copied_from_epochs"] == {"0": [0], "1": [1], "2": [1 if acc[1] >= acc[2] else 2]}
    for k in ("0", "1", "2"):
        check_summary(r["flnpf"][k], n_runs=1, low=0.3)
    check_figure(path, "gate-copy.png")


def test_gate_copy_reports_a_missing_saved_state(tmp_path):
    run = types.SimpleNamespace(path=tmp_path, records={"gate-copy-relu-s0": {}},
                                cached=lambda key, compute, depends=None: compute())
    with pytest.raises(RuntimeError, match="state after epoch 3 .seed 0. was not saved"):
        saved_state(run, 0, 3)


# ------------------------------------------------------------------------------------------ shuffle-and-ones
def test_shuffle_and_ones(shuffle):
    path, r = shuffle
    assert list(r["accuracy"]) == ["dlgn", "dgn"]
    for kind, s in r["accuracy"].items():
        for setting in ("x", "ones", "fixed", "layers", "units"):
            check_summary(s[setting], n_runs=1, low=0.3)
        for over in ("layers", "units"):
            # a unit or layer permutation leaves the FC NPK (equal widths) unchanged, up to float64 rounding ...
            assert s["npk"][over]["relative"] < 1e-12
            # ... but the trained value weights belong to the original order
            assert s[f"{over}-as-is"]["best"]["mean"] < s["x"]["best"]["mean"] - 0.2
    check_figure(path, "shuffle-and-ones.png")


def test_shuffled_channels_leave_the_conv_npk_unchanged_but_another_kernel_differs():
    """The docstring's claim for convolutions: overlaps sum over channels, so a channel permutation is invisible;
    the comparison is not vacuous: the NPK of another gating network differs."""
    torch.manual_seed(0)
    model = ConvDLGN(2, [3, 4], input_size=(5, 5), d_out=3, gate="soft").double()
    X = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    assert npk_change(model, shuffled_gates(model, seed=1), X)["relative"] < 1e-12
    other = ConvDLGN(2, [3, 4], input_size=(5, 5), d_out=3, gate="soft").double()
    assert npk_change(model, other, X)["relative"] > 1e-3


# ------------------------------------------------------------------------------------------ helpers
def test_mean_std_and_pm():
    s = mean_std([0.9, 0.95, 1.0])
    assert s["mean"] == pytest.approx(0.95) and s["std"] == pytest.approx(0.05) and s["runs"] == [0.9, 0.95, 1.0]
    assert mean_std([0.8])["std"] == 0.0 and pm(mean_std([0.8])) == "80.00"
    assert pm(s) == "95.00 ± 5.00"


def test_presets_build_the_papers_architectures():
    data = load("digits", n_train=20, n_test=10)
    cfg = dict(conv_preset="C4GAP", res_preset="ResNet20")
    model = build_model("conv", "dlgn", data, cfg, seed=0, gate="soft")
    assert type(model) is ConvDLGN and model.channels == [128] * 4 and model.input_shape == (1, 8, 8)
    res_view = family_view("res", data, cfg)
    assert res_view.X_train.shape == (20, 1, 8, 8) and family_view("fc", data, cfg).X_train.shape == (20, 64)
    res = build_model("res", "dgn", res_view, cfg, seed=0)
    assert type(res) is ResDGN and res.n_gated == 1 + 2 * 9 + 2
    torch.manual_seed(0)  # the seed argument, not the global RNG, decides the weights
    again = build_model("conv", "dlgn", data, cfg, seed=0, gate="soft")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


# ------------------------------------------------------------------------------------------ bad config
@pytest.mark.parametrize("name, overrides, message", [
    ("regimes", dict(regimes=["FLNPF"]), "keep 'ReLU' in regimes"),
    ("regimes", dict(regimes=["ReLU", "GaLU"]), "regimes must be a non-empty list"),
    ("regimes", dict(families=["mlp"]), "families must be a non-empty list"),
    ("regimes", dict(n_seeds=0), "n_seeds must be a positive int"),
    ("regimes", dict(conv_preset="VGG99"), "conv_preset must be null or one of"),
    ("dnn-dgn-dlgn", dict(kinds=["dnn", "cnn"]), "kinds must be a non-empty list"),
    ("gate-copy", dict(copy_epochs=[0, 4], relu_epochs=2), "relu_epochs must be an int >= the last copy epoch"),
    ("gate-copy", dict(copy_epochs=[-1, 2]), "copy_epochs must be a non-empty list of distinct epochs"),
    ("gate-copy", dict(family="mlp"), "family must be one of"),
    ("shuffle-and-ones", dict(kinds=["dnn", "dlgn"]), "kinds must be DGN / DLGN kinds"),
    ("shuffle-and-ones", dict(npk_samples=1), "npk_samples must be an int >= 2"),
])
def test_bad_config_fails_before_training(tmp_path, monkeypatch, name, overrides, message):
    monkeypatch.setattr(npk.train, "_epoch", lambda *a, **k: pytest.fail("trained before checking the config"))
    with pytest.raises(ValueError, match=message):
        run_experiment(name, tmp_path / "run", overrides=overrides, quick=True, progress=False)


@pytest.mark.parametrize("name", ["regimes", "dnn-dgn-dlgn", "gate-copy", "shuffle-and-ones"])
def test_paper_scale_configs_are_valid(name):
    """analysis/configs/<name>.json names only known keys, and its presets and lists pass the checks."""
    config = json.loads((Path(__file__).parents[1] / "analysis" / "configs" / f"{name}.json").read_text())
    cfg = merge_config(get(name), config)
    assert cfg["dataset"] == "cifar10" and cfg["device"] == "cuda" and cfg["n_train"] is None  # all of CIFAR-10
    families = cfg["families"] if "families" in cfg else [cfg["family"]]
    assert check_common(cfg, families, cfg.get("kinds", ())) == list(range(cfg["n_seeds"]))
