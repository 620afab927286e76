"""regimes: the NPF/NPK paper's table of training regimes, as mean +- std over seeds.

    FRNPF-II   fixed random gates, gating network drawn independently of the value network
    FRNPF-DI   fixed random gates copied from the value network's initial weights
    DLNPF      decoupled learning: soft gates from a separate ReLU network, both networks trained
    FLNPF      fixed learnt gates copied from the trained ReLU network's *best* checkpoint, a freshly
               initialised value network (independent of the ReLU network) trained on them
    ReLU       the plain DNN

as in the NPF/NPK paper (PAPER.md section 3; sources in `npk.models.regimes`). Every regime of one seed
but FLNPF starts from the same template (the same initial value weights); FLNPF's are fresh. Each cell of
the table is the mean +- standard deviation over seeds of each run's best (and final) test accuracy.

This module also holds what the training-heavy experiments (dnn-dgn-dlgn, gate-copy,
shuffle-and-ones) share: config checks, model presets, checkpointed training, mean +- std and bars
with error bars.
"""
from __future__ import annotations

import copy
from numbers import Integral
from typing import Mapping, Sequence

import numpy as np
import torch

from .. import models
from ..models.regimes import REGIMES, make_regime
from ..plots import accuracy_bars, new_figure, save_figure
from ..train import TrainResult, train
from .base import Run, experiment
from .common import FAMILIES, load_data, make_model

KINDS = ("dnn", "dgn", "dlgn")
PRESETS = {
    "conv": {"C4GAP": models.C4GAP, "VCONV": models.VCONV, "GCONV": models.GCONV,
             "VGG16": lambda kind, **kw: models.VGG("vgg16", kind, **kw)},
    "res": {"ResNet20": lambda kind, **kw: models.resnet_preset((3, 3, 3), kind=kind, **kw),
            "ResNet110": lambda kind, **kw: models.resnet_preset((18, 18, 18), kind=kind, **kw)},
}
PAPER_ORDER = ("FRNPF-II", "FRNPF-DI", "DLNPF", "FLNPF", "ReLU")


# ------------------------------------------------------------------------------------------ shared helpers
def check_subset(name: str, values, choices: Sequence) -> list:
    """`values` as a list, or a ValueError unless it is a non-empty list of distinct entries of `choices`."""
    values = list(values) if isinstance(values, (list, tuple)) else values
    if not isinstance(values, list) or not values or len(set(values)) != len(values) \
            or any(v not in choices for v in values):
        raise ValueError(f"{name} must be a non-empty list of distinct entries of {list(choices)}, got {values!r}")
    return values


def check_common(cfg: dict, families: Sequence[str], kinds: Sequence[str] = ()) -> list[int]:
    """Check the keys every training experiment shares; return the seeds seed, seed + 1, ... (n_seeds of them).

    An experiment of one architecture has a key `family` (checked here); others list `families`."""
    if "family" in cfg and cfg["family"] not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {cfg['family']!r}")
    check_subset("families", families, FAMILIES)
    if kinds:
        check_subset("kinds", kinds, KINDS)
    for family in ("conv", "res"):
        preset = cfg.get(f"{family}_preset")
        if preset is not None and preset not in PRESETS[family]:
            raise ValueError(f"{family}_preset must be null or one of {list(PRESETS[family])}, got {preset!r}")
    n = cfg["n_seeds"]
    if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_seeds must be a positive int (the number of repetitions), got {n!r}")
    return [cfg["seed"] + i for i in range(n)]


def family_view(family: str, data, cfg: dict):
    """Images for conv nets and preset ResNets, flat vectors for the fully connected ones."""
    images = family == "conv" or (family == "res" and cfg.get("res_preset") is not None)
    return data if images else data.flat()


def family_label(family: str, cfg: dict) -> str:
    """A short name of the architecture, e.g. 'FC 6x128' or 'conv [16, 16]+GAP'."""
    preset = cfg.get(f"{family}_preset")
    if preset is not None:
        return preset
    if family == "fc":
        widths = cfg["widths"]
        return f"FC {len(widths)}x{widths[0]}" if len(set(widths)) == 1 else f"FC {widths}"
    if family == "conv":
        dense = f"+dense {cfg['dense_widths']}" if cfg.get("dense_widths") else ""
        return f"conv {cfg['channels']}+GAP{dense}"
    return f"res {cfg['res_blocks']}x{cfg['res_width']}"


def build_model(family: str, kind: str, data, cfg: dict, seed: int, **opts) -> models.GatedNet:
    """A fresh model of `family` and `kind`, seeded by `seed`: a preset (cfg conv_preset / res_preset) or
    `common.make_model` with cfg's widths / channels (+ dense_widths for conv). `opts` go to the class."""
    preset = cfg.get(f"{family}_preset")
    if preset is None:
        if family == "conv":
            opts.setdefault("dense_widths", cfg.get("dense_widths", []))
        return make_model(family, kind, data, {**cfg, "seed": seed}, **opts)
    torch.manual_seed(seed)
    C, *spatial = data.shape
    return PRESETS[family][preset](kind, in_channels=C, input_size=tuple(spatial), d_out=data.n_classes, **opts)


def train_net(run: Run, key: str, model: torch.nn.Module, data, cfg: dict, seed: int, *, epochs: int | None = None,
              keep_best: bool = False, callback=None) -> TrainResult:
    """Train `model` in place with cfg's optimiser settings, checkpointed under cache/<key>: a rerun resumes
    (or, when finished, loads the final weights and history without training)."""
    return train(model, data, epochs=epochs or cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
                 optimizer=cfg["optimizer"], seed=seed, device=cfg["device"], keep_best=keep_best,
                 callback=callback, progress=run.progress, checkpoint_dir=run.checkpoint_dir(key))


def mean_std(values: Sequence[float]) -> dict:
    """{"mean", "std", "runs"}: the sample standard deviation (ddof 1), 0 for a single run."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "runs": a.tolist()}


def pm(stats: Mapping) -> str:
    """A mean +- std of accuracies as a percentage string, e.g. '97.12 ± 0.31' (just '97.12' for one run)."""
    if len(stats["runs"]) == 1:
        return f"{100 * stats['mean']:.2f}"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def accuracy_summary(results: Sequence[TrainResult]) -> dict:
    """Mean +- std over runs of the best and the final test accuracy."""
    return {"best": mean_std([r.best_test_acc for r in results]),
            "final": mean_std([r.final_test_acc for r in results])}


def bars_with_errors(stats: Mapping[str, Mapping[str, Mapping]], path, title: str):
    """Grouped accuracy bars (stats[group][series] = {"mean", "std"}) with +- std error bars (none where std = 0)."""
    table = {g: {s: v["mean"] for s, v in row.items()} for g, row in stats.items()}
    n_series = len({s for row in stats.values() for s in row})
    fig, ax = new_figure(None, path, figsize=(min(12.0, max(4.5, 1.5 + 0.6 * len(stats) * n_series)), 4.0))
    accuracy_bars(table, ax=ax, title=title)
    series = list(dict.fromkeys(s for row in stats.values() for s in row))
    for name, bars in zip(series, list(ax.containers)):
        stds = [row[name]["std"] for row in stats.values() if name in row]
        if not any(stds):
            continue
        centres = [b.get_x() + b.get_width() / 2 for b in bars]
        ax.errorbar(centres, [b.get_height() for b in bars], yerr=[100 * s for s in stds], fmt="none",
                    ecolor="black", elinewidth=0.8, capsize=2)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------ the experiment
@torch.no_grad()
def gate_agreement(a: models.GatedNet, b: models.GatedNet, X: torch.Tensor) -> float:
    """The fraction of gates (over samples, units and positions) on which models a and b agree."""
    a, b = copy.deepcopy(a).cpu(), copy.deepcopy(b).cpu()
    pairs = list(zip(a.gates(X), b.gates(X)))
    return float(sum((ga == gb).sum() for ga, gb in pairs) / sum(ga.numel() for ga, _ in pairs))


def run_regimes(run: Run, family: str, data, cfg: dict, seed: int) -> tuple[dict, float | None]:
    """Train every regime of one seed; return ({regime: TrainResult}, FLNPF-vs-ReLU gate agreement)."""
    template = build_model(family, "dnn", data, cfg, seed)
    results, trained_dnn, agreement = {}, None, None
    for name in sorted(cfg["regimes"], key=lambda r: r != "ReLU"):  # ReLU first: FLNPF copies its gates
        torch.manual_seed(seed)  # the fresh gating networks of DLNPF / FRNPF-II, FLNPF's fresh value network
        model = make_regime(name, template, trained_dnn)
        results[name] = train_net(run, f"regimes-{family}-{name}-s{seed}", model, data, cfg, seed,
                                  keep_best=name == "ReLU")
        if name == "ReLU":
            trained_dnn = copy.deepcopy(model).cpu()
            trained_dnn.load_state_dict(results[name].best_state)
        if name == "FLNPF":
            agreement = gate_agreement(model, trained_dnn, data.X_test)
    return results, agreement


def interpret(label: str, acc: Mapping[str, float]) -> str:
    """One sentence per family: learnt against random gates, and each regime against ReLU."""
    parts = [f"{name} {100 * acc[name]:.2f}%" for name in PAPER_ORDER if name in acc]
    text = f"**{label}** (mean best test accuracy): " + ", ".join(parts) + "."
    learnt = [acc[n] for n in ("FLNPF", "DLNPF") if n in acc]
    random = [acc[n] for n in ("FRNPF-II", "FRNPF-DI") if n in acc]
    if learnt and random:
        gap = 100 * (min(learnt) - max(random))
        verdict = ("learnt gates beat random gates, as in the paper" if gap > 0
                   else "here learnt gates do not beat random gates, unlike the paper")
        text += f" The worse learnt-gate regime minus the better random-gate one: {gap:+.2f} points: {verdict}."
    if "ReLU" in acc and "FLNPF" in acc:
        text += (f" Fixed learnt gates with a value network trained from scratch reach "
                 f"{acc['FLNPF'] / acc['ReLU']:.1%} of the ReLU network's accuracy.")
    return text


@experiment(
    "regimes",
    "Learning the gates is what matters: a value network trained on fixed learnt gates (FLNPF) or with "
    "decoupled learnt gates (DLNPF) comes close to the ReLU network, while fixed random gates (FRNPF-II, "
    "FRNPF-DI) fall behind (the NPF/NPK paper's table).",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0, n_seeds=2,
                  families=["fc", "conv"], regimes=list(PAPER_ORDER), widths=[128] * 6, channels=[16] * 4,
                  dense_widths=[], padding="zero", res_width=64, res_blocks=3, conv_preset=None, res_preset=None,
                  epochs=10, batch_size=32, optimizer="adam", lr=3e-3, device="cpu"),
    quick=dict(n_train=200, n_test=100, widths=[32, 32], channels=[4, 4], res_width=16, res_blocks=2, epochs=3,
               lr=1e-2),
)
def regimes_table(cfg: dict, run) -> dict:
    seeds = check_common(cfg, cfg["families"])
    check_subset("regimes", cfg["regimes"], REGIMES)
    if "FLNPF" in cfg["regimes"] and "ReLU" not in cfg["regimes"]:
        raise ValueError("FLNPF copies the gates of the trained ReLU network: keep 'ReLU' in regimes")
    data = load_data(cfg, flatten=False, run=run)
    order = [name for name in PAPER_ORDER if name in cfg["regimes"]]
    summary, agreement, rows_best, rows_final, paragraphs = {}, {}, [], [], []
    for family in cfg["families"]:
        fdata = family_view(family, data, cfg)
        per_seed = [run_regimes(run, family, fdata, cfg, seed) for seed in seeds]
        summary[family] = {name: accuracy_summary([res[name] for res, _ in per_seed]) for name in order}
        agreement[family] = [a for _, a in per_seed if a is not None]
        label = f"{family_label(family, cfg)} ({cfg['dataset']})"
        rows_best.append([label, *[pm(summary[family][n]["best"]) for n in order]])
        rows_final.append([label, *[pm(summary[family][n]["final"]) for n in order]])
        paragraphs.append(interpret(label, {n: summary[family][n]["best"]["mean"] for n in order}))
    columns = ["net (data)", *order]
    report = run.report
    report.heading(f"Training regimes ({len(seeds)} seed{'s' * (len(seeds) > 1)}, {cfg['epochs']} epochs, "
                   f"{cfg['optimizer']} lr {cfg['lr']}, batch {cfg['batch_size']})")
    report.paragraph("Best test accuracy over epochs (%, mean ± std over seeds):")
    report.table(rows_best, columns)
    report.paragraph("Final test accuracy (%, mean ± std over seeds):")
    report.table(rows_final, columns)
    figure = run.figure_path("regimes.png")
    bars_with_errors({family_label(f, cfg): {n: summary[f][n]["best"] for n in order} for f in cfg["families"]},
                     figure, "Best test accuracy per training regime (mean ± std over seeds)")
    report.figure(figure, "Best test accuracy of each training regime (error bars: ± std over seeds)")
    for text in paragraphs:
        report.paragraph(text)
    if any(agreement.values()):
        low = min(min(a) for a in agreement.values() if a)
        report.paragraph(f"FLNPF check: its frozen gates agree with the best ReLU checkpoint's gates on "
                         f"{low:.2%} of (test sample, unit) pairs (must be 100%).")
    return {"regimes": summary, "flnpf_gate_agreement": agreement,
            "table": {"columns": columns, "rows": rows_best}, "seeds": seeds}
