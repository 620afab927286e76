"""shuffle-and-ones: what a DLGN / DGN needs from its value network's input and its gates' order (2203.16455).

For each kind (DLGN, DGN) and seed, from one template (the same initial weights):
    x         the model trained with the value network reading x
    ones      the model trained with the value network reading an all-ones input (value_input="ones")
    fixed     the x model's trained gates frozen, its value network retrained from its initial weights
    shuffled  the x model's trained gates with the units (channels) of every gated layer permuted, the
              same way for every input (`npk.models.regimes.shuffled_gates`); evaluated with the trained
              value weights, then with the value network retrained from its initial weights
and the NPK of the shuffled against the unshuffled gates on `npk_samples` training inputs (float64).
A permutation P of the units leaves every overlap unchanged, sum_i G(x)_{pi(i)} G(x')_{pi(i)} =
sum_i G(x)_i G(x')_i (in matrix form G P (G P)^T = G G^T), so the NPK, which depends on the gates only
through these overlaps, is unchanged: exactly for fully connected nets, and for convolutions, whose
overlaps sum over channels at each pair of positions.
"""
from __future__ import annotations

import copy

import torch

from ..kernels.npk import npk_gram
from ..models.regimes import freeze, shuffled_gates
from ..train import accuracy
from .base import experiment
from .common import gated_opts, load_data
from .regimes_table import (accuracy_summary, bars_with_errors, build_model, check_common, family_label,
                            family_view, mean_std, pm, train_net)

SETTINGS = {"x": "value input x", "ones": "value input ones", "fixed": "gates fixed, values retrained",
            "shuffled-as-is": "gates shuffled, trained values", "shuffled": "gates shuffled, values retrained"}


def retrain_values(run, key: str, model, init_values: dict, data, cfg: dict, seed: int):
    """A copy of `model` with frozen gates and the value network reset to `init_values`, then trained."""
    model = copy.deepcopy(model)
    freeze(model.gating_layers)
    model.value_layers.load_state_dict(init_values)
    return train_net(run, key, model, data, cfg, seed)


def npk_change(model, shuffled, X: torch.Tensor, device: str = "cpu") -> dict:
    """max |H - H_shuffled| and that over max |H|, with both NPK Grams computed in float64 on `device`."""
    X = X.to(device=device, dtype=torch.float64)
    H, Hs = (npk_gram(copy.deepcopy(m).to(device).double(), X) for m in (model, shuffled))
    diff = float((H - Hs).abs().max())
    return {"max_abs_diff": diff, "relative": diff / float(H.abs().max())}


def run_kind(run, family: str, kind: str, data, cfg: dict, seed: int) -> dict:
    """Every setting of SETTINGS for one kind and seed: {setting: TrainResult or accuracy, "npk": ...}."""
    prefix = f"shuffle-{family}-{kind}-s{seed}"
    model = build_model(family, kind, data, cfg, seed, **gated_opts(kind, {**cfg, "value_input": "x"}))
    init_values = copy.deepcopy(model.value_layers.state_dict())
    out = {"x": train_net(run, f"{prefix}-x", model, data, cfg, seed)}
    ones = build_model(family, kind, data, cfg, seed, **gated_opts(kind, {**cfg, "value_input": "ones"}))
    out["ones"] = train_net(run, f"{prefix}-ones", ones, data, cfg, seed)
    out["fixed"] = retrain_values(run, f"{prefix}-fixed", model, init_values, data, cfg, seed)
    shuffled = shuffled_gates(model, seed=seed)
    out["shuffled-as-is"] = accuracy(shuffled, data.X_test, data.y_test)
    out["shuffled"] = retrain_values(run, f"{prefix}-shuffled", shuffled, init_values, data, cfg, seed)
    out["npk"] = run.cached(f"{prefix}-npk", lambda: npk_change(model, shuffled, data.X_train[:cfg["npk_samples"]],
                                                                cfg["device"]))
    return out


@experiment(
    "shuffle-and-ones",
    "The value network of a DLGN / DGN can read a constant all-ones input instead of x without a large loss, "
    "and permuting the units of each gated layer leaves the NPK unchanged, so a value network retrained "
    "on shuffled gates does as well as on the original ones (2203.16455).",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0, n_seeds=1, family="fc",
                  kinds=["dlgn", "dgn"], widths=[128] * 3, channels=[16] * 4, dense_widths=[], padding="zero",
                  res_width=64, res_blocks=3, conv_preset=None, res_preset=None, gate="soft", beta=4.0, eps=0.0,
                  epochs=10, batch_size=32, optimizer="adam", lr=3e-3, npk_samples=300, device="cpu"),
    quick=dict(n_train=200, n_test=100, widths=[32, 32], channels=[4, 4], res_width=16, res_blocks=2, epochs=2,
               lr=1e-2, npk_samples=50),
)
def shuffle_and_ones(cfg: dict, run) -> dict:
    seeds = check_common(cfg, [cfg["family"]], cfg["kinds"])
    if "dnn" in cfg["kinds"]:
        raise ValueError("kinds must be DGN / DLGN kinds ('dgn', 'dlgn'): a DNN's value network must read x "
                         "and its gates are its own activations")
    if not isinstance(cfg["npk_samples"], int) or cfg["npk_samples"] < 2:
        raise ValueError(f"npk_samples must be an int >= 2 (training inputs for the NPK comparison), "
                         f"got {cfg['npk_samples']!r}")
    data = family_view(cfg["family"], load_data(cfg, flatten=False, run=run), cfg)
    summary, stats, rows = {}, {}, []
    for kind in cfg["kinds"]:
        runs = [run_kind(run, cfg["family"], kind, data, cfg, seed) for seed in seeds]
        acc = {s: accuracy_summary([r[s] for r in runs]) for s in SETTINGS if s != "shuffled-as-is"}
        acc["shuffled-as-is"] = {"best": mean_std([r["shuffled-as-is"] for r in runs])}
        npk = {"max_abs_diff": max(r["npk"]["max_abs_diff"] for r in runs),
               "relative": max(r["npk"]["relative"] for r in runs)}
        summary[kind] = {**acc, "npk": npk}
        stats[kind.upper()] = {SETTINGS[s]: acc[s]["best"] for s in SETTINGS}
        rows.append([kind.upper(), *[pm(acc[s]["best"]) for s in SETTINGS], npk["max_abs_diff"], npk["relative"]])
    report = run.report
    label = family_label(cfg["family"], cfg)
    report.heading(f"All-ones value input and shuffled gates ({label}, {cfg['dataset']}, {cfg['epochs']} epochs, "
                   f"{cfg['gate']} gates, {len(seeds)} seed{'s' * (len(seeds) > 1)})")
    report.paragraph("Best test accuracy (%, mean ± std over seeds; 'trained values' is a single evaluation) and "
                     f"the change of the NPK Gram on {cfg['npk_samples']} training inputs when the gates are shuffled:")
    report.table(rows, ["network", *SETTINGS.values(), "NPK max abs diff", "NPK relative diff"], floatfmt=".2e")
    figure = run.figure_path("shuffle-and-ones.png")
    bars_with_errors(stats, figure, "All-ones value input and shuffled gates")
    report.figure(figure, "Best test accuracy with the value network reading x or all ones, and with the gates "
                          "fixed or shuffled (error bars: ± std over seeds)")
    for kind, s in summary.items():
        b = {k: v["best"]["mean"] for k, v in s.items() if k != "npk"}
        report.paragraph(
            f"**{kind.upper()}**: the all-ones value input gives {100 * b['ones']:.2f}% against {100 * b['x']:.2f}% "
            f"with x ({100 * (b['ones'] - b['x']):+.2f} points). Shuffling the gates changes the NPK by at most "
            f"{s['npk']['max_abs_diff']:.1e} (relative {s['npk']['relative']:.1e}: "
            + ("float rounding, the kernel is the same" if s['npk']['relative'] < 1e-10 else "the kernel changed")
            + f"). With the trained value weights the shuffled network drops to {100 * b['shuffled-as-is']:.2f}% "
            f"(the weights were learnt for the original unit order), but a value network retrained on the shuffled "
            f"gates reaches {100 * b['shuffled']:.2f}%, against {100 * b['fixed']:.2f}% on the unshuffled gates.")
    return {"accuracy": summary, "seeds": seeds}
