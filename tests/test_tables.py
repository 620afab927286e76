"""npk tables: README tables rebuilt from committed results, with paired-bootstrap intervals."""
import json

import numpy as np
import pytest

from npk import cli
from npk.tables import bootstrap_ratio, build, rebuild_readme
from npk.train import pack_hits


def test_bootstrap_of_identical_networks_is_exactly_one():
    hits = np.random.default_rng(0).random((3, 500)) < 0.6
    assert bootstrap_ratio(hits, hits, n_boot=200) == (1.0, 1.0)


def test_bootstrap_interval_matches_the_delta_method():
    """One seed, independent hits with p = 0.6 and 0.5 on n = 10,000 images: the ratio's standard error is
    r sqrt((1 - pa) / (n pa) + (1 - pb) / (n pb)) = 0.0155, so the 95% interval is about +-0.0304."""
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 10_000)) < 0.6, rng.random((1, 10_000)) < 0.5
    low, high = bootstrap_ratio(a, b, n_boot=2000)
    r = a.mean() / b.mean()
    se = r * np.sqrt(0.4 / (1e4 * 0.6) + 0.5 / (1e4 * 0.5))
    assert low < r < high
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.12)


def fake_run(folder, seed, accs, n_test=400, finished=True, experiment="dnn-dgn-dlgn"):
    """A results.json of a dnn-dgn-dlgn (or regimes) seed whose nets hit acc * n_test test images."""
    rng = np.random.default_rng(seed)
    record = {}
    for kind, acc in accs.items():
        hits = np.zeros(n_test, bool)
        hits[rng.permutation(n_test)[:int(acc * n_test)]] = True
        record[kind] = {"runs": [{"selected_epoch": 7, "epochs_run": 13, "stopped_early": True,
                                  "selected_test_acc": hits.mean(), "best_test_acc": hits.mean() + 0.01,
                                  "test_hits": pack_hits(hits), "wall_time_s": 12.0}]}
    cfg = {"dataset": "cifar10", "n_train": 1000, "n_test": n_test, "val_fraction": 0.1, "families": ["conv"],
           "epochs": 40, "lr": 3e-4, "batch_size": 32, "bias": True, "patience": 6, "seed": seed}
    names, key = ("kinds", "accuracy") if experiment == "dnn-dgn-dlgn" else ("regimes", "regimes")
    cfg[names] = list(accs)
    path = folder / f"seed-{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"experiment": experiment, "finished": finished, "config": cfg, key: {"conv": record}}))


def test_tables_come_from_the_results_and_check_catches_drift(tmp_path, capsys):
    results = tmp_path / "results"
    for seed, dlgn in enumerate([0.50, 0.55, 0.45]):
        fake_run(results / "cifar10" / "dnn-dgn-dlgn", seed, {"dnn": 0.6, "dgn": 0.55, "dlgn": dlgn})
    fake_run(results / "cifar10" / "dnn-dgn-dlgn", 3, {"dnn": 0.1, "dgn": 0.1, "dlgn": 0.1}, finished=False)
    lines, numbers = build(results, "cifar10/dnn-dgn-dlgn")
    assert numbers["seeds"] == [0, 1, 2]                       # the unfinished seed is left out
    ratio = numbers["nets"]["dlgn"]["ratio"]
    assert ratio["value"] == pytest.approx(0.5 / 0.6)
    assert ratio["interval_95"][0] < ratio["value"] < ratio["interval_95"][1]
    assert "| test accuracy at the validation-selected epoch (%) | 60.00 ± 0.00 | 55.00 ± 0.00 | 50.00 ± 5.00 |" in lines

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- npk-table: cifar10/dnn-dgn-dlgn -->\nstale\n<!-- /npk-table -->\nend\n")
    args = ["tables", "--readme", str(readme), "--results", str(results)]
    assert cli.main(args + ["--check"]) == 1
    assert cli.main(args) == 0
    assert readme.read_text().startswith("intro\n<!-- npk-table: cifar10/dnn-dgn-dlgn -->\n|  | DNN | DGN | DLGN |")
    assert rebuild_readme(readme, results, check=True) == []
    assert cli.main(args + ["--check"]) == 0


def test_the_regimes_table_has_the_papers_order_ratios_to_relu_and_the_2020_row(tmp_path):
    accs = {"ReLU": 0.5, "FLNPF": 0.45, "DLNPF": 0.4, "FRNPF-DI": 0.35, "FRNPF-II": 0.3}   # run order: ReLU first
    for seed in range(3):
        fake_run(tmp_path / "cifar10" / "regimes", seed, accs, experiment="regimes")
    lines, numbers = build(tmp_path, "cifar10/regimes")
    assert lines[0] == "|  | FRNPF-II | FRNPF-DI | DLNPF | FLNPF | ReLU |"
    assert numbers["nets"]["FLNPF"]["ratio"]["value"] == pytest.approx(0.9)
    assert numbers["nets"]["FRNPF-II"]["ratio"]["value"] == pytest.approx(0.6)
    assert "| ratio to ReLU (95% interval) | 0.600 [" in lines[3]
    assert lines[7].endswith("| 0.835 | 0.835 | 0.960 | 0.992 | 1 |")            # 67.09 / 80.32, ..., 79.68 / 80.32


def test_a_kernels_vs_network_table_has_one_row_per_network_and_kernel_with_binomial_errors(tmp_path):
    """One run in results/<name>/results.json (no seed folders): 0.84 on 10,000 test images has the standard
    error sqrt(0.84 * 0.16 / 10,000) = 0.37 points; the sizes come from the full 60,000 split 54,000 + 6,000."""
    fit = {"accuracy": 0.84, "fit": {"param_relative": 0.1}, "seconds": {"gram train": 100.0, "fit": 20.5}}
    net = {"selected_test_acc": 0.9, "selected_epoch": 12, "epochs_run": 18, "wall_time_s": 300.0}
    cfg = {"dataset": "fashion-mnist", "n_train": None, "n_test": None, "val_fraction": 0.1, "family": "fc",
           "widths": [256, 256], "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 40, "patience": 6,
           "gram_dtype": "float32", "cg_tol": 1e-6, "landmarks": 4000}
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({
        "experiment": "kernels-vs-network", "finished": True, "config": cfg, "peak_anon": 3 * 2**30,
        "kernels_vs_network": {"dnn": {"network": net, "kernels": {"npk-learnt": fit, "ntk-inf": fit}}},
        "timings": [{"seconds": 300.0}, {"seconds": 120.5}, {"seconds": 120.5}]}))
    lines, numbers = build(tmp_path, "fashion-mnist")
    assert lines[0] == "| 54,000 training images | test accuracy (%, ± s.e.) | chosen on validation | wall time (s) |"
    assert lines[2] == "| DNN network | 90.00 ± 0.30 | epoch 12 of 18 | 300 |"
    assert lines[3] == "| DNN kernel ridge, NPK of the learnt gates | 84.00 ± 0.37 | ridge 0.1 x tr(K)/N | 120 |"
    assert lines[4].startswith("| DNN kernel ridge, infinite-width NTK of the same depth |")
    assert "54,000 training, 6,000 validation and 10,000 test images" in lines[-1]
    assert "All stages 541 s, peak anonymous memory 3.00 GiB." in lines[-1]
    assert numbers == {"dnn network": 0.9, "dnn npk-learnt": 0.84, "dnn ntk-inf": 0.84}


def test_a_table_without_finished_seeds_says_so(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- npk-table: cifar10/regimes -->\n<!-- /npk-table -->\n")
    assert cli.main(["tables", "--readme", str(readme), "--results", str(tmp_path)]) == 0
    assert "No seed of `cifar10/regimes` has finished yet" in readme.read_text()


def test_the_readme_tables_match_the_committed_results():
    """The README's marked tables are what `npk tables` builds from results/ (run it after committing a seed)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    assert "<!-- npk-table: cifar10/dnn-dgn-dlgn -->" in (root / "README.md").read_text()
    assert rebuild_readme(root / "README.md", root / "results", check=True) == []
