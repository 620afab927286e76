"""The kernel-heavy experiments (theorems, npk-evolution, spectral) on their quick settings: numbers that
could fail, figures, report, resuming and bad configs."""
import json
import math

import numpy as np
import pytest
import torch

from npk.experiments import npk_evolution as evolution_module
from npk.files import load_pt
from npk.experiments import run_experiment
from npk.experiments.base import get, merge_config
from npk.experiments.common import kernel_subset, load_data, make_model
from npk.experiments.npk_evolution import one_vs_rest, record_epochs
from npk.kernels.linalg import nu
from npk.kernels.npk import npk_gram
from npk.models.init import init_weights

EXPECTED_FAIL = {"ntk-wrong", "rotation-zero-padding", "rotation-flatten", "layer-permutation-conv"}


def run_quick(path, name, **overrides):
    folder = run_experiment(name, path, overrides=overrides, quick=True, progress=False)
    return folder, json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def theorems_run(tmp_path_factory):
    return run_quick(tmp_path_factory.mktemp("theorems") / "run", "theorems")


@pytest.fixture(scope="module")
def evolution_run(tmp_path_factory):
    return run_quick(tmp_path_factory.mktemp("evolution") / "run", "npk-evolution")


@pytest.fixture(scope="module")
def spectral_run(tmp_path_factory):
    return run_quick(tmp_path_factory.mktemp("spectral") / "run", "spectral")


def figures_in_report(folder, names):
    report = (folder / "report.md").read_text()
    for name in names:
        png = folder / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert f"figures/{name}" in report, name
    return report


# ------------------------------------------------------------------------------------------ theorems
def test_theorems_pass_where_they_hold_and_fail_where_broken(theorems_run):
    folder, results = theorems_run
    checks = {c["slug"]: c for c in results["theorems"]["checks"]}
    assert results["theorems"]["all_as_expected"] and results["theorems"]["n_checks"] == len(checks) == 16
    for slug, c in checks.items():
        assert c["passed"] == (slug not in EXPECTED_FAIL) == c["expected_pass"], slug
        assert c["passed"] == (c["statistic"] <= c["tolerance"]) or c["check"] == "ntk_vs_npk"
    for slug in ("duality-fc", "duality-conv", "duality-res", "rotation-1d", "rotation-2d", "rotation-images",
                 "ensemble-1", "ensemble-2", "layer-permutation-fc"):
        assert checks[slug]["statistic"] < 1e-12 and checks[slug]["details"]["n_samples"] >= 2
    zero = checks["rotation-zero-padding"]["details"]
    assert zero["deviation"][zero["shifts"].index([0])] == 0.0 and min(zero["deviation"][1:]) > 1e-3
    flat = checks["rotation-flatten"]["details"]
    assert max(flat["deviation_both_sides"]) < 1e-12 < 1e-2 < max(flat["deviation_one_side"])
    images = checks["rotation-images"]["details"]
    assert images["spatial_shape"] == [8, 8] and len(images["shifts"]) == 12 and images["shifts"][0] == [0, 0]
    for slug in ("ntk-fc", "ntk-conv", "ntk-res"):
        d = checks[slug]["details"]
        assert d["ratio_ci"][0] <= 1 <= d["ratio_ci"][1] and abs(d["slope"] + 0.5) <= d["slope_tolerance"]
        assert d["deviation"][0] > d["deviation"][-1]
    assert checks["layer-permutation-conv"]["statistic"] > 1e-3
    assert checks["layer-permutation-fc"]["details"]["output_change"] > 0.05
    # the claim without the factor d = 4 is off by that factor
    assert 3.0 < checks["ntk-wrong"]["details"]["ratio_mean"] < 5.0
    for slug in ("ensemble-1", "ensemble-2"):
        share = checks[slug]["details"]["depth_share"]
        assert len(share) == checks[slug]["details"]["n_blocks"] + 1 and abs(sum(share) - 1) < 1e-10
        assert checks[slug]["details"]["reference_error"] < 1e-12   # every H^J against its path enumeration
    report = figures_in_report(folder, [c["figure"] for c in checks.values()])
    assert report.count("| expected to fail |") == len(EXPECTED_FAIL) and "16 of 16 checks" in report


# ------------------------------------------------------------------------------------------ npk-evolution
def test_npk_evolution_numbers(evolution_run):
    folder, results = evolution_run
    tasks = results["npk_evolution"]
    assert list(tasks) == ["4 vs 7", "10 classes"]
    for name, r in tasks.items():
        assert r["epochs"] == [0, 1, 2, 3] and len(r["nu"]) == len(r["alignment"]) == 4
        assert all(v > 0 for v in r["nu"]) and all(-1 <= a <= 1 for a in r["alignment"] + r["centered_alignment"])
        assert r["nu_ratio"] == pytest.approx(r["nu"][-1] / r["nu"][0], rel=1e-12)
        assert r["test_acc"][0] is None and all(0 <= a <= 1 for a in r["test_acc"][1:])
        spectrum = r["spectra"]["3"]
        assert len(spectrum) == r["n_kernel"] == 100 and spectrum == sorted(spectrum, reverse=True)
    assert tasks["4 vs 7"]["n_outputs"] == 1 and tasks["10 classes"]["n_outputs"] == 10
    assert tasks["4 vs 7"]["final_test_acc"] > 0.8 and tasks["10 classes"]["final_test_acc"] > 0.2   # chance: 0.5, 0.1
    report = figures_in_report(folder, ["npk-evolution-nu.png", "npk-evolution-alignment.png",
                                        "npk-evolution-spectra.png"])
    assert "eps = 1e-06" in report


def test_npk_evolution_nu_at_initialisation_is_recomputable(evolution_run):
    """nu_0 of the binary task from scratch: same data subset, same seeded net with +-sqrt(2/fan_in) weights."""
    _, results = evolution_run
    cfg = merge_config(get("npk-evolution"), {}, quick=True)
    data = load_data(cfg, flatten=True)
    model = make_model("fc", "dnn", data, cfg)
    init_weights(model.value_layers, scheme="bernoulli")
    weights = [m.weight.abs() for m in model.value_layers]
    assert all(torch.allclose(w, torch.full_like(w, math.sqrt(2 / w.shape[1]))) for w in weights)
    index = kernel_subset(data, cfg["n_kernel"], cfg["seed"])
    H = npk_gram(model.double(), data.X_train[index].double())
    expected = nu(H, one_vs_rest(data.y_train[index], 1), eps=cfg["nu_eps"])
    assert results["npk_evolution"]["4 vs 7"]["nu"][0] == pytest.approx(expected, rel=1e-10)


def test_evolution_helpers():
    assert record_epochs(7, 3) == [0, 3, 6, 7] and record_epochs(4, 2) == [0, 2, 4]
    y = torch.tensor([0, 2, 1])
    assert one_vs_rest(y, 3).tolist() == [[1, -1, -1], [-1, -1, 1], [-1, 1, -1]]
    assert one_vs_rest(torch.tensor([1, 0]), 1).tolist() == [[1.0], [-1.0]]
    data = load_data({"dataset": "digits", "n_train": 50, "n_test": 20}, flatten=True)
    index = kernel_subset(data, 20, seed=3)
    assert len(set(index.tolist())) == 20 and index.tolist() == sorted(index.tolist())
    assert torch.equal(index, kernel_subset(data, 20, seed=3)) and len(kernel_subset(data, None, 0)) == 50
    with pytest.raises(ValueError, match="record_every must be a positive int"):
        record_epochs(4, 0)
    with pytest.raises(ValueError, match="n_kernel must be None"):
        kernel_subset(data, 1, 0)


def test_npk_evolution_resumes_without_recomputing(tmp_path, monkeypatch, evolution_run):
    """Interrupt after two cached epochs; the rerun computes only the other six and ends with the same numbers."""
    real, calls, state = evolution_module.npk_numbers, [], {"interrupt": True}

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and state["interrupt"]:
            raise RuntimeError("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(evolution_module, "npk_numbers", counting)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_quick(tmp_path / "run", "npk-evolution")
    assert len(list((tmp_path / "run" / "cache").glob("evolution-*-epoch-*.pt"))) == 2
    calls.clear()
    state["interrupt"] = False
    _, results = run_quick(tmp_path / "run", "npk-evolution")
    assert len(calls) == 6                                   # 2 tasks x 4 epochs, 2 of them cached
    for name, r in results["npk_evolution"].items():
        expected = evolution_run[1]["npk_evolution"][name]
        np.testing.assert_allclose(r["nu"], expected["nu"], rtol=1e-10)
        assert r["test_acc"] == expected["test_acc"]


# ------------------------------------------------------------------------------------------ spectral
def test_spectral_numbers(spectral_run):
    folder, results = spectral_run
    s = results["spectral"]
    cells = s["cells"]
    assert [(c["depth"], c["width"]) for c in cells] == [(1, 16), (1, 32), (2, 16), (2, 32)]
    assert len(s["kernel_table"]["rows"]) == 4 * len(cells) and len(s["pair_table"]["rows"]) == 4 * len(cells)
    for c in cells:
        assert c["ks"] == [10, 20] and all(0.3 < a <= 1 for a in c["accuracy"].values())   # chance: 0.1
        for name, k in c["kernels"].items():
            spectrum = k["spectrum"]
            assert len(spectrum) == s["n_kernel"] == 100 and spectrum == sorted(spectrum, reverse=True)
            assert spectrum[-1] > -1e-8 * spectrum[0]                        # PSD up to rounding
            assert 0 < k["energy"]["10"] <= k["energy"]["20"] <= 1 + 1e-12     # nested eigenspaces
            assert -1 <= k["centered_alignment"] <= 1
        for pair, cos in c["pairs"].items():
            assert all(0 <= v <= 1 + 1e-12 for v in cos.values()), pair
    figures_in_report(folder, ["spectral-decay.png", "spectral-angles.png"])


def test_spectral_angles_are_those_of_the_cached_grams(spectral_run):
    """The mean cosine of the principal angles, recomputed from the cached Grams with numpy."""
    folder, results = spectral_run
    cell = results["spectral"]["cells"][0]
    grams = load_pt(folder / "cache" / "spectral-d1-w16-grams.pt")["value"]
    top = {name: np.linalg.eigh(K.numpy())[1][:, ::-1][:, :10] for name, K in grams.items()}
    cos = np.linalg.svd(top["DLGN NPK"].T @ top["DNN NTK"], compute_uv=False)
    assert cell["pairs"]["DLGN NPK vs DNN NTK"]["10"] == pytest.approx(cos.mean(), abs=1e-8)
    assert torch.equal(grams["DLGN NPK (init)"],
                       load_pt(folder / "cache" / "spectral-d1-w16-dlgn-npk-init.pt")["value"])


# ------------------------------------------------------------------------------------------ bad configs
@pytest.mark.parametrize("name, overrides, message", [
    ("spectral", {"depths": [2, 2]}, "depths must be a list of distinct positive ints"),
    ("spectral", {"widths": []}, "widths must be a list of distinct positive ints"),
    ("npk-evolution", {"binary": None, "multiclass": False}, "nothing to run"),
    ("npk-evolution", {"init": "he"}, "init must be one of"),
    ("npk-evolution", {"spectra_epochs": [5]}, "spectra_epochs \\[5\\] are not recorded epochs"),
    ("theorems", {"ntk_widths": []}, "ntk_widths and ensemble_blocks must be non-empty"),
    ("theorems", {"image_shifts": 1}, "image_shifts must be None"),
])
def test_bad_configs_fail_clearly(tmp_path, name, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_quick(tmp_path / "run", name, **overrides)
