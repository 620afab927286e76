"""shuffle-and-ones: what a DLGN / DGN needs from its value network's input and its gates' order (2203.16455).

For each kind (DLGN, DGN) and seed, from one template (the same initial weights):
    x         the model trained with the value network reading x
    ones      the model trained with the value network reading an all-ones input (value_input="ones")
    fixed     the x model's trained gates frozen, its value network retrained from its initial weights
    layers    the x model's trained gates with the gated layers permuted (layer l takes the gates of
              layer pi(l)), the same way for every input (`npk.models.regimes.shuffled_gates`, over="layers");
              evaluated with the trained value weights, then with the value network retrained from its
              initial weights
    units     the same with the units (channels) of every gated layer permuted instead: the control
and the NPK of each shuffle against the unshuffled gates on `npk_samples` training inputs (float64).
A permutation P of the units leaves every overlap unchanged (G P (G P)^T = G G^T), so the NPK, which
depends on the gates only through these overlaps, cannot change: a relabelling. The fully connected
NPK <x, x'> prod_l overlap_l is also a product over the layers, so a layer permutation leaves it
unchanged when the widths agree; a conv net's NPK sums over offsets between layers, so there the layer
permutation changes it (measured; `npk.theory.layer_permutation` is the check). Reading 2203.16455's
"the gating masks can be shuffled" as the layer permutation is this project's; the layers' widths must
agree (and for conv nets their channels and positions).
"""
from __future__ import annotations

import copy

import torch

from ..kernels.npk import npk_gram
from ..models.regimes import freeze, shuffled_gates
from ..train import accuracy
from .base import experiment
from .common import (accuracy_summary, bars_with_errors, build_model, check_common, family_label, family_view,
                     gated_opts, load_data, mean_std, pm, train_net)

SHUFFLES = ("layers", "units")
SETTINGS = {"x": "value input x", "ones": "value input ones", "fixed": "gates fixed, values retrained",
            "layers-as-is": "layers shuffled, trained values", "layers": "layers shuffled, values retrained",
            "units-as-is": "units shuffled, trained values", "units": "units shuffled, values retrained"}


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
    out["npk"] = {}
    for over in SHUFFLES:
        shuffled = shuffled_gates(model, seed=seed, over=over)
        out[f"{over}-as-is"] = accuracy(shuffled, data.X_test, data.y_test)
        out[over] = retrain_values(run, f"{prefix}-{over}", shuffled, init_values, data, cfg, seed)
        out["npk"][over] = run.cached(f"{prefix}-npk-{over}", lambda: npk_change(
            model, shuffled, data.X_train[:cfg["npk_samples"]], cfg["device"]))
    return out


@experiment(
    "shuffle-and-ones",
    "The value network of a DLGN / DGN can read a constant all-ones input instead of x without a large loss, "
    "and the gating masks can be shuffled: a value network retrained on gates whose layers are permuted does "
    "about as well as on the original ones (2203.16455; permuting units within a layer is the control).",
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
        acc = {s: (accuracy_summary([r[s] for r in runs]) if not s.endswith("-as-is")
                   else {"best": mean_std([r[s] for r in runs])}) for s in SETTINGS}
        npk = {over: {"max_abs_diff": max(r["npk"][over]["max_abs_diff"] for r in runs),
                      "relative": max(r["npk"][over]["relative"] for r in runs)} for over in SHUFFLES}
        summary[kind] = {**acc, "npk": npk}
        stats[kind.upper()] = {SETTINGS[s]: acc[s]["best"] for s in SETTINGS}
        rows.append([kind.upper(), *[pm(acc[s]["best"]) for s in SETTINGS],
                     *[npk[over]["relative"] for over in SHUFFLES]])
    report = run.report
    label = family_label(cfg["family"], cfg)
    report.heading(f"All-ones value input and shuffled gates ({label}, {cfg['dataset']}, {cfg['epochs']} epochs, "
                   f"{cfg['gate']} gates, {len(seeds)} seed{'s' * (len(seeds) > 1)})")
    report.paragraph("Best test accuracy (%, mean ± std over seeds; 'trained values' is a single evaluation) and "
                     f"the change of the NPK Gram on {cfg['npk_samples']} training inputs when the gates are shuffled:")
    report.table(rows, ["network", *SETTINGS.values(), *[f"NPK relative diff, {o} shuffled" for o in SHUFFLES]],
                 floatfmt=".2e")
    figure = run.figure_path("shuffle-and-ones.png")
    bars_with_errors(stats, figure, "All-ones value input and shuffled gates")
    report.figure(figure, "Best test accuracy with the value network reading x or all ones, and with the gates "
                          "fixed or shuffled (error bars: ± std over seeds)")
    for kind, s in summary.items():
        b = {k: v["best"]["mean"] for k, v in s.items() if k != "npk"}
        text = (f"**{kind.upper()}**: the all-ones value input gives {100 * b['ones']:.2f}% against "
                f"{100 * b['x']:.2f}% with x ({100 * (b['ones'] - b['x']):+.2f} points).")
        for over in SHUFFLES:
            change = s["npk"][over]["relative"]
            text += (f" Shuffling the {over} changes the NPK by {change:.1e} relative to its largest entry ("
                     + ("float rounding: the kernel is the same" if change < 1e-10 else "the kernel changed")
                     + f"); with the trained value weights the network drops to {100 * b[over + '-as-is']:.2f}%, "
                     f"a value network retrained on these gates reaches {100 * b[over]:.2f}%.")
        report.paragraph(text + f" On the unshuffled gates the retrained value network reaches {100 * b['fixed']:.2f}%.")
    return {"accuracy": summary, "seeds": seeds}
