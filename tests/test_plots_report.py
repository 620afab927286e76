"""Figures and run folders: labelled PNGs, exact markdown, refusal to overwrite a finished run."""
import json

import numpy as np
import pytest
import torch

from npk.plots import accuracy_bars, curves, gram_heatmap, spectrum_plot
from npk.report import RunDir, data_checksum, markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_gram():
    rng = np.random.default_rng(0)
    y = np.array([2, 0, 1, 0, 2, 1, 1, 0])
    X = rng.standard_normal((8, 3)) + 3 * np.eye(3)[y]
    return X @ X.T, y


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000


def test_gram_heatmap_labels_and_class_ticks(tmp_path):
    K, y = tiny_gram()
    fig = gram_heatmap(K, y, path=tmp_path / "gram.png", title="tiny")
    assert_png(tmp_path / "gram.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "sample x' (sorted by class)" and ax.get_ylabel() == "sample x (sorted by class)"
    assert ax.get_title() == "tiny"
    # sorted labels 0 0 0 1 1 1 2 2: class centres at 1, 4, 6.5, boundaries (lines) at 2.5 and 5.5
    assert list(ax.get_xticks()) == [1.0, 4.0, 6.5]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    lines = sorted({round(float(line.get_xdata()[0]), 2) for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]})
    assert lines == [2.5, 5.5]
    assert fig.axes[1].get_ylabel() == "K(x, x')"  # the colorbar
    img = ax.images[0].get_array()
    order = np.argsort(y, kind="stable")
    np.testing.assert_array_equal(img, K[np.ix_(order, order)])


def test_gram_heatmap_subsamples_large_grams():
    K = torch.eye(30, dtype=torch.float64)
    fig = gram_heatmap(K, torch.arange(30) % 3, max_points=10, class_names=["a", "b", "c"])
    assert fig.axes[0].images[0].get_array().shape == (10, 10)
    assert fig.axes[0].get_title() == "Gram matrix (1 in 3 samples shown)"
    with pytest.raises(ValueError, match="square Gram"):
        gram_heatmap(np.ones((3, 4)), [0, 1, 2])


def test_spectrum_plot_normalised_loglog(tmp_path):
    fig = spectrum_plot({"a": [4.0, 2.0, 1.0, 1e-20, -1e-16], "b": np.array([9.0, 1.0])}, path=tmp_path / "s.png")
    assert_png(tmp_path / "s.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    a = ax.lines[0]
    assert list(a.get_xdata()) == [1, 2, 3] and list(a.get_ydata()) == [1.0, 0.5, 0.25]  # round-off dropped
    assert "lambda_i / \\lambda_1" in ax.get_ylabel()
    with pytest.raises(ValueError, match="positive largest eigenvalue"):
        spectrum_plot({"bad": [-1.0, -2.0]})


def test_accuracy_bars(tmp_path):
    table = {"DNN": {"network": 0.97, "NPK ridge": 0.95}, "DLGN": {"network": 0.9, "NPK ridge": None}}
    fig = accuracy_bars(table, tmp_path / "acc.png")
    assert_png(tmp_path / "acc.png")
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [90.0, 95.0, 97.0]
    assert ax.get_ylabel() == "test accuracy (%)"
    with pytest.raises(ValueError, match="fractions in"):
        accuracy_bars({"DNN": {"network": 97.0}})


def test_curves_one_panel_per_key(tmp_path):
    history = {"epoch": [1, 2, 3, 4], "loss": [1.0, 0.5, 0.3, 0.2], "nu": [50.0, 40.0, None, 20.0]}
    fig = curves(history, tmp_path / "c.png", labels={"nu": "nu_t (dimensionless)"}, logy=["loss"])
    assert_png(tmp_path / "c.png")
    ax_loss, ax_nu = fig.axes[:2]
    assert ax_loss.get_yscale() == "log" and ax_nu.get_ylabel() == "nu_t (dimensionless)"
    assert ax_nu.get_xlabel() == "epoch" and list(ax_nu.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert np.isnan(ax_nu.lines[0].get_ydata()[2])
    with pytest.raises(ValueError, match="has 2 values"):
        curves({"epoch": [1, 2, 3], "loss": [1.0, 2.0]})


def test_markdown_table_exact_text():
    rows = [{"model": "DNN", "acc": 0.97, "n": 10}, {"model": "DL|GN", "acc": None, "n": 5}]
    assert markdown_table(rows) == ("| model | acc | n |\n"
                                    "|---|---:|---:|\n"
                                    "| DNN | 0.9700 | 10 |\n"
                                    "| DL\\|GN |  | 5 |")
    assert markdown_table([["a", 1.23456], ["b", np.float32(2.5)]], ["k", "v"], floatfmt={"v": ".2f"}) == (
        "| k | v |\n|---|---:|\n| a | 1.23 |\n| b | 2.50 |")
    with pytest.raises(ValueError, match="need `columns`"):
        markdown_table([[1, 2]])
    with pytest.raises(ValueError, match=r"rows \[1\] do not have 2 cells"):
        markdown_table([[1, 2], [3]], ["a", "b"])


def test_run_dir_writes_everything(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config({"seed": 0, "lambdas": np.array([0.1, 1.0])})
    run.save_results(accuracy=np.float64(0.975), gram_min=torch.tensor(-0.5), bad=float("nan"))
    fig = gram_heatmap(*tiny_gram())
    png = run.save_figure(fig, "gram")
    report = run.report("Tiny run").heading("Results").paragraph("Ridge on a tiny Gram.")
    report.table([{"method": "ridge", "accuracy": 0.975}]).figure(png, "Gram sorted by class")
    md = report.write()
    run.mark_finished()

    assert_png(tmp_path / "run" / "figures" / "gram.png")
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"seed": 0, "lambdas": [0.1, 1.0]}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results == {"accuracy": 0.975, "gram_min": -0.5, "bad": "nan", "finished": True}
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert versions["torch"] == torch.__version__ and versions["npk"] and versions["python"].count(".") == 2
    assert md.read_text() == ("# Tiny run\n\n## Results\n\nRidge on a tiny Gram.\n\n"
                              "| method | accuracy |\n|---|---:|\n| ridge | 0.9750 |\n\n"
                              "![Gram sorted by class](figures/gram.png)\n\n*Figure 1: Gram sorted by class*\n")
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_run_dir_refuses_finished_run_unless_forced(tmp_path):
    run = RunDir(tmp_path)
    run.save_results(step=1)
    again = RunDir(tmp_path)   # unfinished: reopened, results kept for a resume
    assert again.results == {"step": 1, "finished": False}
    again.mark_finished()
    with pytest.raises(FileExistsError, match="finished run .* force=True"):
        RunDir(tmp_path)
    forced = RunDir(tmp_path, force=True)
    assert forced.results == {"finished": False} and not forced.finished
    assert json.loads((tmp_path / "results.json").read_text()) == {"finished": False}
    (tmp_path / "results.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunDir(tmp_path)


def test_data_checksum():
    from npk.data import load
    d = load("digits", n_train=50, n_test=20)
    arrays = {k: getattr(d, k) for k in ("X_train", "y_train", "X_test", "y_test")}
    assert data_checksum(arrays) == d.checksum()
    a = data_checksum([np.arange(4), np.ones(2)])
    assert len(a) == 64 and a == data_checksum([torch.arange(4), torch.ones(2, dtype=torch.float64)])
    assert a != data_checksum([np.arange(4).astype(np.int32), np.ones(2)])   # dtype matters
    assert a != data_checksum([np.ones(2), np.arange(4)])                     # order matters
