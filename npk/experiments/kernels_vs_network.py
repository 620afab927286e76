"""kernels-vs-network: kernel ridge regression with the network's own kernels against the network.

For each model kind: the NPK of the gates at initialisation and after training, and (optionally) the
empirical NTK at initialisation and at the end of training and the infinite-width NTK of a fully
connected ReLU net with as many hidden layers as the model has gated layers (`infinite_ntk`), each used
as a precomputed kernel in kernel ridge regression, next to the trained network's test accuracy.
`kernels` lists them for every kind; `kernels_by_kind` ({kind: list}) overrides it per kind.

gram_store "memory" keeps the float64 Grams (cached in the run folder) and plots their spectra.
gram_store "disk" is for whole data sets (`common.streamed_kernel_ridge`): each kernel's Grams are written
as `gram_dtype` files tile by tile (resumable), fitted by the streamed CG solver with the ridge chosen on
the validation split the network's epoch was chosen on (val_fraction), and deleted before the next kernel's
(unless keep_grams); the report adds the wall time of every stage and the peak anonymous memory.
"""
from __future__ import annotations

import torch

from ..kernels.gram import format_bytes
from ..kernels.linalg import spectrum
from ..memory import PeakMemory
from ..plots import gram_heatmap, spectrum_plot
from .base import experiment
from .common import (fit_network, gated_opts, grams, infinite_ntk_fn, input_view, kernel_accuracy, load_data,
                     make_model, npk_fn, ntk_fn, streamed_kernel_ridge)

KERNELS = ("npk-init", "npk-learnt", "ntk-init", "ntk-end", "ntk-inf")
STORES = ("memory", "disk")


def infinite_ntk_of(model, progress: bool = False, exact_angles: bool = True):
    """The infinite-width NTK (a kernel function) of a fully connected ReLU net as deep as `model`: as many
    hidden layers as `model` has gated layers (`infinite_ntk` counts hidden layers, not weight layers)."""
    return infinite_ntk_fn(model.n_gated, progress, exact_angles)


def kernels_of(cfg: dict, kind: str) -> list:
    """The kernels to fit for `kind`: cfg["kernels_by_kind"][kind] if there, else cfg["kernels"]."""
    return list(cfg["kernels_by_kind"].get(kind, cfg["kernels"]))


@experiment(
    "kernels-vs-network",
    "Kernel ridge regression with the NPK of the learnt gates recovers most of the trained network's "
    "accuracy, and does better than the NPK of the gates at initialisation.",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, binary=None, seed=0,
                  family="fc", kinds=["dnn", "dgn", "dlgn"], widths=[128, 128, 128], channels=[32, 32],
                  padding="circular", res_width=64, res_blocks=3, device="cpu",
                  gate="soft", beta=4.0, eps=0.0, value_input="x",
                  epochs=20, batch_size=32, optimizer="adam", lr=1e-3, val_fraction=0.0, patience=None,
                  kernels=["npk-init", "npk-learnt"], kernels_by_kind={},
                  gram_store="memory", gram_dtype="float32", keep_grams=False, lambdas=None, cg_tol=1e-6,
                  cg_max_iter=500, landmarks=1000),
    quick=dict(n_train=300, n_test=100, widths=[32, 32], channels=[4, 4], epochs=2, res_width=16, res_blocks=2),
)
def kernels_vs_network(cfg: dict, run) -> dict:
    unknown = sorted({k for kind in cfg["kinds"] for k in kernels_of(cfg, kind)} - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown kernels {unknown}; choose from {list(KERNELS)}")
    if cfg["gram_store"] not in STORES:
        raise ValueError(f"gram_store must be one of {STORES}, got {cfg['gram_store']!r}")
    if cfg["gram_store"] == "disk":
        return _on_disk(cfg, run)
    data = input_view(cfg["family"], load_data(cfg, flatten=False, run=run))
    spectra, results = {}, {}
    for kind in cfg["kinds"]:
        chosen = kernels_of(cfg, kind)
        model = make_model(cfg["family"], kind, data, cfg, **gated_opts(kind, cfg))
        kernels = {}
        if "npk-init" in chosen:
            kernels["npk-init"] = grams(run, f"{kind}-npk-init", npk_fn(model), data)
        if "ntk-init" in chosen:
            kernels["ntk-init"] = grams(run, f"{kind}-ntk-init", ntk_fn(model), data)
        net = fit_network(run, kind, model, data, cfg)
        if "npk-learnt" in chosen:
            kernels["npk-learnt"] = grams(run, f"{kind}-npk-learnt", npk_fn(model), data)
        if "ntk-end" in chosen:
            kernels["ntk-end"] = grams(run, f"{kind}-ntk-end", ntk_fn(model), data)
        if "ntk-inf" in chosen:
            kernels["ntk-inf"] = grams(run, f"ntk-inf-{model.n_gated}", infinite_ntk_of(model), data.flat())
        accs = {name: kernel_accuracy(Ktr, Kte, data, cfg["seed"]) for name, (Ktr, Kte) in kernels.items()}
        results[kind] = {"network": net, "kernel_acc": accs}
        spectra.update({f"{kind.upper()} {name}": spectrum(K[0]) for name, K in kernels.items()})
        if kind == cfg["kinds"][-1] and "npk-learnt" in kernels:
            heatmap = run.figure_path(f"gram-{kind}-npk-learnt.png")
            gram_heatmap(kernels["npk-learnt"][0], data.y_train, path=heatmap,
                         title=f"{kind.upper()} NPK, learnt gates (train set)")
    names = [k for k in KERNELS if any(k in r["kernel_acc"] for r in results.values())]
    columns = ["network", "net best acc", "net final acc", *[f"KRR {k}" for k in names]]
    rows = [[kind.upper(), r["network"]["best_test_acc"], r["network"]["final_test_acc"],
             *[r["kernel_acc"].get(k, "-") for k in names]] for kind, r in results.items()]
    report = run.report
    report.heading(f"Kernels against the network ({cfg['family']}, {cfg['dataset']})")
    report.table(rows, columns)
    spectrum_path = run.figure_path("spectra.png")
    spectrum_plot({k: v for k, v in spectra.items() if "npk" in k}, path=spectrum_path)
    report.figure(spectrum_path, "Normalised eigenvalue decay of the kernels (train Gram)")
    if "npk-learnt" in kernels_of(cfg, cfg["kinds"][-1]):
        report.figure(heatmap, "NPK Gram of the learnt gates, samples sorted by class")
    return {"kernels_vs_network": results, "table": {"columns": columns, "rows": rows}}


def _on_disk(cfg: dict, run) -> dict:
    """gram_store "disk": one stage after another (Gram files, streamed fit, deletion), timed, with the peak
    anonymous memory of the whole run; no spectra (the Grams are not kept in memory)."""
    data = input_view(cfg["family"], load_data(cfg, flatten=False, run=run))
    dtype = getattr(torch, cfg["gram_dtype"])
    results, timings, rows = {}, [], []
    with PeakMemory() as peak:
        def kernel(name: str, key: str, fn, view) -> None:
            fits[name] = out = streamed_kernel_ridge(run, key, fn, view, cfg)   # its seconds survive a resumed run
            timings.append({"stage": f"{key}: Grams + fit", "seconds": sum(out["seconds"].values()),
                            "steps": out["seconds"], "peak_anon": out["peak_anon"]})

        for kind in cfg["kinds"]:
            chosen, fits = kernels_of(cfg, kind), {}
            model = make_model(cfg["family"], kind, data, cfg, **gated_opts(kind, cfg))
            if "npk-init" in chosen:
                kernel("npk-init", f"{kind}-npk-init", npk_fn(model, run.progress, dtype), data)
            if "ntk-init" in chosen:
                kernel("ntk-init", f"{kind}-ntk-init", ntk_fn(model, run.progress, dtype), data)
            net = fit_network(run, kind, model, data, cfg)
            timings.append({"stage": f"train {kind}", "seconds": net["wall_time_s"], "peak_anon": peak.anon})
            if "npk-learnt" in chosen:
                kernel("npk-learnt", f"{kind}-npk-learnt", npk_fn(model, run.progress, dtype), data)
            if "ntk-end" in chosen:
                kernel("ntk-end", f"{kind}-ntk-end", ntk_fn(model, run.progress, dtype), data)
            if "ntk-inf" in chosen:
                fast = dtype != torch.float64    # angles from a GEMM: ~1e-8 near t = 0, below float32 rounding
                kernel("ntk-inf", f"ntk-inf-{model.n_gated}", infinite_ntk_of(model, run.progress, not fast), data.flat())
            results[kind] = {"network": net, "kernels": fits}
            rows += [[kind.upper(), "network", net["selected_test_acc"], f"epoch {net['selected_epoch']} "
                      f"of {net['epochs_run']} ({net['selected_on']})"]]
            rows += [[kind.upper(), f"KRR {name}", fit["accuracy"],
                      f"ridge {fit['fit']['param_relative']:g} x tr(K)/N"] for name, fit in fits.items()]
    report = run.report
    report.heading(f"Kernels against the network on {len(data.X_train):,} training images "
                   f"({cfg['family']}, {cfg['dataset']})")
    report.table(rows, ["network", "model", "test acc", "chosen on validation"])
    report.heading("Wall time and memory")
    report.table([[t["stage"], f"{t['seconds']:.0f}", ", ".join(f"{k} {v:.0f}" for k, v in t.get("steps", {}).items()),
                   format_bytes(t["peak_anon"])] for t in timings],
                 ["stage", "seconds", "steps (s)", "peak anonymous memory"])
    report.paragraph(f"All stages: {sum(t['seconds'] for t in timings):.0f} s; peak anonymous memory of this "
                     f"process {format_bytes(peak.anon)} (RssAnon sampled every 20 ms; the Gram files are page "
                     f"cache, not anonymous memory).")
    return {"kernels_vs_network": results, "table": {"columns": ["network", "model", "test acc", "chosen"],
                                                     "rows": rows},
            "timings": timings, "peak_anon": peak.anon}
