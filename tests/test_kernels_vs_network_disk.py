"""kernels-vs-network with gram_store="disk": Grams written to files, fitted by the streamed solver, deleted."""
import json

import numpy as np
import pytest

from npk.experiments import run_experiment
from npk.experiments.common import load_data
from npk.fit import kernel_ridge
from npk.kernels.infinite import infinite_ntk

SETTINGS = dict(gram_store="disk", kinds=["dnn"], kernels=["npk-learnt", "ntk-inf"], val_fraction=0.2, n_train=250,
                n_test=80, widths=[16, 16], epochs=2, patience=None, lambdas=[1e-3, 1e-1, 10.0], landmarks=50)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = run_experiment("kernels-vs-network", tmp_path_factory.mktemp("kvn") / "run", overrides=SETTINGS,
                          quick=True, progress=False)
    return path, json.loads((path / "results.json").read_text())


def test_each_kernel_is_fitted_from_files_that_are_deleted_afterwards(run):
    path, results = run
    fits = results["kernels_vs_network"]["dnn"]["kernels"]
    assert set(fits) == {"npk-learnt", "ntk-inf"}
    for fit in fits.values():
        assert 0.6 < fit["accuracy"] <= 1
        assert fit["fit"]["solver"]["name"] == "cg" and all(fit["fit"]["solver"]["validation"]["converged"])
        assert set(fit["seconds"]) == {"gram train", "gram val", "gram test", "fit"}
    assert not list((path / "cache").glob("grams-*"))
    report = (path / "report.md").read_text()
    assert "Wall time and memory" in report and "KRR ntk-inf" in report


def test_the_streamed_fit_is_the_dense_fit_on_the_same_float32_grams(run):
    _, results = run
    data = load_data({**SETTINGS, "dataset": "digits", "seed": 0}, flatten=True)
    X, Xv, Xt = (a.double() for a in (data.X_train, data.X_val, data.X_test))
    gram = lambda A: infinite_ntk(A.float(), X.float(), depth=2, exact_angles=False).double()  # noqa: E731 (as on disk)
    dense = kernel_ridge(gram(X), data.y_train, gram(Xt), data.y_test, K_val=gram(Xv), y_val=data.y_val,
                         lambdas=SETTINGS["lambdas"], solver="cholesky")
    streamed = results["kernels_vs_network"]["dnn"]["kernels"]["ntk-inf"]
    assert streamed["accuracy"] == dense.accuracy
    assert streamed["fit"]["param_relative"] == dense.param_relative
    assert [r["mse"] for r in streamed["fit"]["validation"]] == pytest.approx([r["mse"] for r in dense.validation],
                                                                              rel=1e-4)


def test_the_full_fashion_mnist_config_is_valid():
    from pathlib import Path
    from npk.experiments.base import get, merge_config
    from npk.experiments.kernels_vs_network import KERNELS, kernels_of
    config = json.loads((Path(__file__).parents[1] / "analysis/configs/fashion-mnist-full.json").read_text())
    cfg = merge_config(get("kernels-vs-network"), config)
    assert cfg["dataset"] == "fashion-mnist" and cfg["n_train"] is None and cfg["gram_store"] == "disk"
    assert {k for kind in cfg["kinds"] for k in kernels_of(cfg, kind)} == set(KERNELS) - {"ntk-init"}
