"""spectral: is the DLGN a universal spectral approximator? (the open question closing arXiv 2110.03403)

For each (depth, width) of a small grid, a DNN and a DLGN (soft gates, as in the paper's code) are
trained on the same data, and four kernels are computed on a fixed seeded subset of the training set:
the DLGN's NPK after training and at initialisation, the DNN's NPK after training and the DNN's empirical
NTK (all parameters) at the end of training. Compared:

    eigenvalue decay      lambda_i / lambda_1 against i (log-log)
    principal angles      between the top-k eigenspaces of two kernels (k = number of classes and top_k);
                          summarised by the mean cosine (1: the same subspace)
    alignment             centred kernel-target alignment with the labels
    label energy          share of the labels' energy in the top-k eigenvectors

If the DLGN's learnt NPK shares the DNN's top eigenspaces far more than the DLGN's NPK at initialisation
does, the linear gating network has learnt the spectral structure the DNN learns.
"""
from __future__ import annotations

import numpy as np
import torch

from ..kernels.linalg import centered_alignment, principal_angles, spectrum, top_k_energy
from ..plots import new_figure, save_figure, spectrum_plot
from .base import experiment
from .common import fit_network, kernel_subset, load_data, make_model, npk_fn, ntk_fn

KERNELS = ("DLGN NPK", "DLGN NPK (init)", "DNN NPK", "DNN NTK")
PAIRS = (("DLGN NPK", "DNN NPK"), ("DLGN NPK", "DNN NTK"), ("DNN NPK", "DNN NTK"), ("DLGN NPK (init)", "DNN NPK"))


def pair_name(pair) -> str:
    return f"{pair[0]} vs {pair[1]}"


def kernel_numbers(grams: dict, y: torch.Tensor, ks: list[int]) -> dict:
    """Spectra, centred alignment and top-k label energy of each Gram; mean principal-angle cosines of PAIRS."""
    kernels = {name: {"spectrum": spectrum(K).tolist(), "centered_alignment": centered_alignment(K, y),
                      "energy": {k: top_k_energy(K, y, k) for k in ks}} for name, K in grams.items()}
    pairs = {pair_name(p): {k: float(np.cos(principal_angles(grams[p[0]], grams[p[1]], k)).mean()) for k in ks}
             for p in PAIRS}
    return {"kernels": kernels, "pairs": pairs}


def grid_cell(run, cfg: dict, data, index: torch.Tensor, depth: int, width: int) -> dict:
    """Train the DNN and the DLGN of one grid cell; their kernels' numbers (every stage cached)."""
    tag = f"spectral-d{depth}-w{width}"
    cell = {**cfg, "widths": [width] * depth}
    dnn = make_model("fc", "dnn", data, cell)
    dlgn = make_model("fc", "dlgn", data, cell, gate=cfg["dlgn_gate"], beta=cfg["beta"])
    X = data.X_train[index].double()
    init = run.cached(f"{tag}-dlgn-npk-init", lambda: npk_fn(dlgn)(X))
    nets = {"DNN": fit_network(run, f"{tag}-dnn", dnn, data, cfg), "DLGN": fit_network(run, f"{tag}-dlgn", dlgn, data, cfg)}

    def grams():
        return {"DLGN NPK": npk_fn(dlgn)(X), "DLGN NPK (init)": init, "DNN NPK": npk_fn(dnn)(X),
                "DNN NTK": ntk_fn(dnn)(X)}
    ks = sorted({data.n_classes, min(cfg["top_k"], len(index))})
    numbers = run.cached(f"{tag}-numbers", lambda: kernel_numbers(run.cached(f"{tag}-grams", grams),
                                                                  data.y_train[index], ks))
    return {"depth": depth, "width": width, "ks": ks, "accuracy": {k: v["final_test_acc"] for k, v in nets.items()},
            "networks": nets, **numbers}


@experiment(
    "spectral",
    "The NPK that a DLGN learns matches the spectrum and top eigenspaces of the kernels a DNN learns "
    "(2110.03403's open question: is the DLGN a universal spectral approximator?).",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0, depths=[2, 4],
                  widths=[64, 256], epochs=10, batch_size=32, optimizer="adam", lr=1e-3, dlgn_gate="soft",
                  beta=4.0, n_kernel=400, top_k=50, device="cpu"),
    quick=dict(n_train=200, n_test=100, depths=[1, 2], widths=[16, 32], epochs=3, lr=1e-2, n_kernel=100, top_k=20),
)
def spectral(cfg: dict, run) -> dict:
    for key in ("depths", "widths"):
        values = cfg[key]
        if not values or len(set(values)) != len(values) or any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{key} must be a list of distinct positive ints (the grid; every hidden layer of a "
                             f"net has the same width), got {values!r}")
    data = load_data(cfg, flatten=True, run=run)
    index = kernel_subset(data, cfg["n_kernel"], cfg["seed"])
    cells = [grid_cell(run, cfg, data, index, d, w) for d in cfg["depths"] for w in cfg["widths"]]
    tables = _report(run, cfg, cells, data.n_classes)
    return {"spectral": {"cells": cells, "n_kernel": len(index), **tables}}


def _report(run, cfg: dict, cells: list[dict], n_classes: int) -> dict:
    report = run.report
    ks = cells[0]["ks"]
    report.heading(f"Spectra of learnt kernels: DLGN against DNN ({cfg['dataset']}, {len(cells[0]['kernels']['DNN NPK']['spectrum'])} "
                   f"training samples)")
    net_of = {"DLGN NPK": "DLGN", "DNN NPK": "DNN", "DNN NTK": "DNN"}
    kernel_rows = [[c["depth"], c["width"], name, c["accuracy"].get(net_of.get(name)), n["centered_alignment"],
                    *[n["energy"][k] for k in ks], n["spectrum"][ks[-1] - 1] / n["spectrum"][0]]
                   for c in cells for name, n in c["kernels"].items()]
    kernel_columns = ["depth", "width", "kernel", "net test acc", "centred alignment",
                      *[f"top-{k} label energy" for k in ks], f"lambda_{ks[-1]} / lambda_1"]
    report.table(kernel_rows, kernel_columns)
    pair_rows = [[c["depth"], c["width"], name, *[v[k] for k in ks]] for c in cells for name, v in c["pairs"].items()]
    pair_columns = ["depth", "width", "kernels", *[f"mean cos, top-{k}" for k in ks]]
    report.paragraph("Mean cosine of the principal angles between the top-k eigenspaces (1: the same subspace; "
                     f"k = {n_classes} is the number of classes). The last pair is the baseline: the DLGN's NPK "
                     "before training.")
    report.table(pair_rows, pair_columns)
    decay = run.figure_path("spectral-decay.png")
    fig, axes = new_figure(path=decay, figsize=(4.2 * len(cfg["widths"]), 3.4 * len(cfg["depths"])),
                           ncols=len(cfg["widths"]), nrows=len(cfg["depths"]))
    for ax, c in zip(np.atleast_1d(axes).ravel(), cells):
        spectrum_plot({name: n["spectrum"] for name, n in c["kernels"].items()}, ax=ax,
                      title=f"depth {c['depth']}, width {c['width']}")
    save_figure(fig, decay)
    report.figure(decay, "Normalised eigenvalue decay of the four kernels in every grid cell (log-log)")
    heatmap = run.figure_path("spectral-angles.png")
    _angle_heatmap(cells, cfg, ks, heatmap)
    report.figure(heatmap, "Mean principal-angle cosine between top-k eigenspaces over the grid (rows: k; "
                           "columns: the kernel pair)")
    report.paragraph(_summary(cells, ks))
    return {"kernel_table": {"columns": kernel_columns, "rows": kernel_rows},
            "pair_table": {"columns": pair_columns, "rows": pair_rows}}


def _angle_heatmap(cells: list[dict], cfg: dict, ks: list[int], path) -> None:
    shown = [pair_name(p) for p in PAIRS if p[0].startswith("DLGN")]
    fig, axes = new_figure(path=path, figsize=(3.6 * len(shown), 3.0 * len(ks)), ncols=len(shown), nrows=len(ks))
    axes = np.array(axes, dtype=object).reshape(len(ks), len(shown))
    depths, widths = cfg["depths"], cfg["widths"]
    low = np.floor(10 * min(c["pairs"][name][k] for c in cells for name in shown for k in ks)) / 10
    for i, k in enumerate(ks):
        for j, name in enumerate(shown):
            grid = np.array([[next(c for c in cells if c["depth"] == d and c["width"] == w)["pairs"][name][k]
                              for w in widths] for d in depths])
            ax = axes[i, j]
            image = ax.imshow(grid, vmin=low, vmax=1, cmap="viridis", origin="lower", aspect="auto")
            for (a, b), v in np.ndenumerate(grid):
                ax.text(b, a, f"{v:.2f}", ha="center", va="center", color="white" if v < (low + 1) / 2 else "black", fontsize=8)
            ax.set_xticks(range(len(widths)), widths)
            ax.set_yticks(range(len(depths)), depths)
            ax.set_xlabel("width")
            ax.set_ylabel("depth (hidden layers)")
            ax.set_title(f"{name}, top-{k}", fontsize=8)
    fig.colorbar(image, ax=list(axes.ravel()), shrink=0.8, label="mean cos(principal angle)")
    save_figure(fig, path)


def _summary(cells: list[dict], ks: list[int]) -> str:
    def mean(pair, k):
        return float(np.mean([c["pairs"][pair][k] for c in cells]))
    learnt, ntk, init = (pair_name(PAIRS[i]) for i in (0, 1, 3))
    parts = [f"top-{k}: learnt DLGN NPK vs DNN NPK {mean(learnt, k):.3f} (DLGN NPK at initialisation: "
             f"{mean(init, k):.3f}, so training changed it by {mean(learnt, k) - mean(init, k):+.3f}), "
             f"vs DNN NTK {mean(ntk, k):.3f}" for k in ks]
    align = {name: float(np.mean([c["kernels"][name]["centered_alignment"] for c in cells])) for name in KERNELS}
    gains = [mean(learnt, k) - mean(init, k) for k in ks]
    verdict = ("Training moved the DLGN's NPK towards the DNN's top eigenspaces for every k"
               if min(gains) > 0 else "Training did not move the DLGN's NPK towards the DNN's top eigenspaces for every k")
    verdict += (", but by less than 0.05 in mean cosine: most of the shared eigenspace is there at initialisation, "
                "given by the inputs and the architecture rather than by what the gates learnt. "
                if max(map(abs, gains)) < 0.05 else ". ")
    return ("Means over the grid of the mean principal-angle cosine: " + "; ".join(parts) + ". " + verdict
            + "Mean centred alignment with the labels: "
            + ", ".join(f"{name} {value:.3f}" for name, value in align.items()) + ".")
