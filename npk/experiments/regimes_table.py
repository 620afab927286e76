"""regimes: the NPF/NPK paper's table of training regimes, as mean +- std over seeds.

    FRNPF-II   fixed random gates, gating network drawn independently of the value network
    FRNPF-DI   fixed random gates copied from the value network's initial weights
    DLNPF      decoupled learning: soft gates from a separate ReLU network, both networks trained
    FLNPF      fixed learnt gates copied from the trained ReLU network's *best* checkpoint, a freshly
               initialised value network (independent of the ReLU network) trained on them
    ReLU       the plain DNN

as in the NPF/NPK paper (PAPER.md section 3; sources in `npk.models.regimes`). Every regime of one seed
but FLNPF starts from the same template (the same initial value weights); FLNPF's are fresh. Each cell of
the table is the mean +- standard deviation over seeds of each run's test accuracy at its selected epoch:
chosen on a validation split held out of the training images when val_fraction > 0 (`patience` stops
early), else the best test epoch (optimistic, and named so). FLNPF copies the ReLU network's gates at
that selected epoch. `bias` puts biases in the value and gating networks.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch

from .. import models
from ..models.regimes import REGIMES, make_regime
from .base import Run, experiment
from .common import (accuracy_summary, bars_with_errors, build_model, check_common, check_subset, family_label,
                     family_view, load_data, pm, train_net)

PAPER_ORDER = ("FRNPF-II", "FRNPF-DI", "DLNPF", "FLNPF", "ReLU")


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
    text = f"**{label}** (mean test accuracy at the selected epoch): " + ", ".join(parts) + "."
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
                  bias=False, epochs=10, batch_size=32, optimizer="adam", lr=3e-3, val_fraction=0.0, patience=None,
                  device="cpu"),
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
    summary, agreement, rows_selected, rows_best, rows_final, paragraphs = {}, {}, [], [], [], []
    for family in cfg["families"]:
        fdata = family_view(family, data, cfg)
        per_seed = [run_regimes(run, family, fdata, cfg, seed) for seed in seeds]
        summary[family] = {name: accuracy_summary([res[name] for res, _ in per_seed]) for name in order}
        agreement[family] = [a for _, a in per_seed if a is not None]
        label = f"{family_label(family, cfg)} ({cfg['dataset']})"
        rows_best.append([label, *[pm(summary[family][n]["best"]) for n in order]])
        rows_final.append([label, *[pm(summary[family][n]["final"]) for n in order]])
        rows_selected.append([label, *[pm(summary[family][n]["selected"]) for n in order]])
        paragraphs.append(interpret(label, {n: summary[family][n]["selected"]["mean"] for n in order}))
    columns = ["net (data)", *order]
    chosen = summary[cfg["families"][0]][order[0]]["selected_on"]
    report = run.report
    report.heading(f"Training regimes ({len(seeds)} seed{'s' * (len(seeds) > 1)}, at most {cfg['epochs']} epochs, "
                   f"{cfg['optimizer']} lr {cfg['lr']}, batch {cfg['batch_size']}, bias {cfg['bias']})")
    report.paragraph(f"Test accuracy at the {chosen}-selected epoch (%, mean ± std over seeds"
                     + ("; no validation split, so an optimistic figure):" if chosen == "test" else "):"))
    report.table(rows_selected, columns)
    report.paragraph("For reference, the best test accuracy over epochs (test-selected, %):")
    report.table(rows_best, columns)
    report.paragraph("Final test accuracy (%, mean ± std over seeds):")
    report.table(rows_final, columns)
    figure = run.figure_path("regimes.png")
    bars_with_errors({family_label(f, cfg): {n: summary[f][n]["selected"] for n in order} for f in cfg["families"]},
                     figure, f"Test accuracy per training regime ({chosen}-selected epoch)")
    report.figure(figure, f"Test accuracy of each training regime at the {chosen}-selected epoch "
                          f"(error bars: ± std over seeds)")
    for text in paragraphs:
        report.paragraph(text)
    if any(agreement.values()):
        low = min(min(a) for a in agreement.values() if a)
        report.paragraph(f"FLNPF check: its frozen gates agree with the selected ReLU checkpoint's gates on "
                         f"{low:.2%} of (test sample, unit) pairs (must be 100%).")
    return {"regimes": summary, "flnpf_gate_agreement": agreement,
            "table": {"columns": columns, "rows": rows_selected}, "seeds": seeds}
