"""demo: the tour. Short versions of several experiments on one data set, in one report."""
from __future__ import annotations

from .base import EXPERIMENTS, experiment

# What each section of the tour overrides in its experiment's defaults (sized for 2 CPU cores).
SECTIONS = {
    "kernels-vs-network": dict(kinds=["dnn", "dgn", "dlgn"], widths=[128, 128, 128], epochs=15,
                               kernels=["npk-init", "npk-learnt", "ntk-init", "ntk-end", "ntk-inf"]),
    "dnn-dgn-dlgn": dict(families=["conv"], epochs=8),
    "theorems": dict(image_shifts=64),  # every shift of an 8x8 image; 64 sampled shifts on larger ones
    "spectral": dict(depths=[2, 4], widths=[128]),
}
SHARED = ("dataset", "data_root", "n_train", "n_test", "seed")


@experiment(
    "demo",
    "A tour of the dual view on one data set: the networks against their kernels, the theorem checks, "
    "and the spectra of the learnt kernels.",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0,
                  sections=list(SECTIONS)),
    quick=dict(n_train=300, n_test=100),
)
def demo(cfg: dict, run) -> dict:
    unknown = sorted(set(cfg["sections"]) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown demo sections {unknown}; choose from {list(SECTIONS)}")
    results = {}
    for name in cfg["sections"]:
        exp = EXPERIMENTS[name]
        sub = {**exp.defaults, **SECTIONS[name], **(exp.quick if run.quick else {}), **{k: cfg[k] for k in SHARED}}
        results[name] = exp.body(sub, run)
    return results
