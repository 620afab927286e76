"""kernels-vs-network: kernel ridge regression with the network's own kernels against the network.

For each model kind: the NPK of the gates at initialisation and after training, and (optionally) the
empirical NTK at initialisation and at the end of training and the infinite-width NTK of a fully
connected ReLU net with as many hidden layers as the model has gated layers (`infinite_ntk`), each used
as a precomputed kernel in kernel ridge regression, next to the trained network's test accuracy.
"""
from __future__ import annotations

from ..kernels.linalg import spectrum
from ..plots import gram_heatmap, spectrum_plot
from .base import experiment
from .common import (fit_network, gated_opts, grams, infinite_ntk_fn, input_view, kernel_accuracy, load_data,
                     make_model, npk_fn, ntk_fn)

KERNELS = ("npk-init", "npk-learnt", "ntk-init", "ntk-end", "ntk-inf")


def infinite_ntk_of(model):
    """The infinite-width NTK (a kernel function) of a fully connected ReLU net as deep as `model`: as many
    hidden layers as `model` has gated layers (`infinite_ntk` counts hidden layers, not weight layers)."""
    return infinite_ntk_fn(model.n_gated)


@experiment(
    "kernels-vs-network",
    "Kernel ridge regression with the NPK of the learnt gates recovers most of the trained network's "
    "accuracy, and does better than the NPK of the gates at initialisation.",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, binary=None, seed=0,
                  family="fc", kinds=["dnn", "dgn", "dlgn"], widths=[128, 128, 128], channels=[32, 32],
                  padding="circular", res_width=64, res_blocks=3, device="cpu",
                  gate="soft", beta=4.0, eps=0.0, value_input="x",
                  epochs=20, batch_size=32, optimizer="adam", lr=1e-3, kernels=["npk-init", "npk-learnt"]),
    quick=dict(n_train=300, n_test=100, widths=[32, 32], channels=[4, 4], epochs=2, res_width=16, res_blocks=2),
)
def kernels_vs_network(cfg: dict, run) -> dict:
    unknown = sorted(set(cfg["kernels"]) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown kernels {unknown}; choose from {list(KERNELS)}")
    data = input_view(cfg["family"], load_data(cfg, flatten=False, run=run))
    rows, spectra, results = [], {}, {}
    for kind in cfg["kinds"]:
        model = make_model(cfg["family"], kind, data, cfg, **gated_opts(kind, cfg))
        kernels = {}
        if "npk-init" in cfg["kernels"]:
            kernels["npk-init"] = grams(run, f"{kind}-npk-init", npk_fn(model), data)
        if "ntk-init" in cfg["kernels"]:
            kernels["ntk-init"] = grams(run, f"{kind}-ntk-init", ntk_fn(model), data)
        net = fit_network(run, kind, model, data, cfg)
        if "npk-learnt" in cfg["kernels"]:
            kernels["npk-learnt"] = grams(run, f"{kind}-npk-learnt", npk_fn(model), data)
        if "ntk-end" in cfg["kernels"]:
            kernels["ntk-end"] = grams(run, f"{kind}-ntk-end", ntk_fn(model), data)
        if "ntk-inf" in cfg["kernels"]:
            kernels["ntk-inf"] = grams(run, f"ntk-inf-{model.n_gated}", infinite_ntk_of(model), data.flat())
        accs = {name: kernel_accuracy(Ktr, Kte, data, cfg["seed"]) for name, (Ktr, Kte) in kernels.items()}
        results[kind] = {"network": net, "kernel_acc": accs}
        rows.append([kind.upper(), net["best_test_acc"], net["final_test_acc"], *[accs[k] for k in kernels]])
        spectra.update({f"{kind.upper()} {name}": spectrum(K[0]) for name, K in kernels.items()})
        if kind == cfg["kinds"][-1] and "npk-learnt" in kernels:
            heatmap = run.figure_path(f"gram-{kind}-npk-learnt.png")
            gram_heatmap(kernels["npk-learnt"][0], data.y_train, path=heatmap,
                         title=f"{kind.upper()} NPK, learnt gates (train set)")
    columns = ["network", "net best acc", "net final acc", *[f"KRR {k}" for k in kernels]]
    report = run.report
    report.heading(f"Kernels against the network ({cfg['family']}, {cfg['dataset']})")
    report.table(rows, columns)
    spectrum_path = run.figure_path("spectra.png")
    spectrum_plot({k: v for k, v in spectra.items() if "npk" in k}, path=spectrum_path)
    report.figure(spectrum_path, "Normalised eigenvalue decay of the kernels (train Gram)")
    if cfg["kernels"] and "npk-learnt" in cfg["kernels"]:
        report.figure(heatmap, "NPK Gram of the learnt gates, samples sorted by class")
    return {"kernels_vs_network": results, "table": {"columns": columns, "rows": rows}}
