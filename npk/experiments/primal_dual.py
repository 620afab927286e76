"""primal-dual: the DLGN's two linearities, and its learnt NPK against a DNN's (2110.03403's closing question:
"Is DLGN a universal spectral approximator?").

Primal side (`npk.interpret`): a DLGN's gates are half-spaces, q_l(x) = A_l x + b_l. Shown: the rows of A_l of
the fully connected DLGN as images per layer (checked: A_l x + b_l = q_l(x) on the test set), a conv DLGN's
effective filters per layer, and on scikit-learn's two moons the gates' zero lines, the regions they cut and
the learnt function, DLGN against DNN.

Dual side: a DLGN (soft gates, as in the authors' code) and a DNN of the same widths, trained on the same data.
On a seeded subset of n_kernel training samples (and the test set) the NPK is built layer by layer,

    H = (X X^T) ⊙ prod_l O_l,   O_l = G_l G_l^T   (checked against npk_gram),

for the DLGN (its soft gates, and its hard gates), the DNN, and both at initialisation. Compared:
    eigenvalue decay    lambda_i / lambda_1; the slope of log lambda_i against log i over i = 2..100
    principal angles    mean cosine between the top-k eigenspaces of two kernels (1: the same subspace)
    alignment           centred kernel-target alignment of each kernel, and of each layer's O_l and partial product
    top-k ridge         kernel ridge on the top-k kernel principal components only: K_k = U_k S_k U_k^T for
                        training and K_test U_k U_k^T for testing (a linear ridge on the features
                        K(x, X) U_k S_k^{-1/2}), for growing k; k = N is the full kernel
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from ..data import Dataset
from ..fit import kernel_ridge
from ..interpret import effective_filters, gating_map, on_grid
from ..kernels.linalg import centered_alignment, principal_angles, spectrum
from ..kernels.npk import npk_gram
from ..plots import arrangement, filter_grid, layer_kernels, new_figure, save_figure, spectrum_plot, versus_k
from ..report import markdown_table
from .base import experiment
from .common import kernel_subset, load_data, make_model, train_net

PAIRS = (("DLGN NPK", "DNN NPK"), ("DLGN NPK (hard gates)", "DNN NPK"), ("DLGN NPK (init)", "DNN NPK"),
         ("DNN NPK (init)", "DNN NPK"), ("inputs X X^T", "DNN NPK"), ("DLGN gates", "DNN gates"),
         ("DLGN gates (init)", "DNN gates"))


def layered_npk(model, X: torch.Tensor, Xt: torch.Tensor, kind: str | None = None) -> dict:
    """Per-layer overlaps O_l = G_l G_l^T on X, partial products (X X^T) ⊙ O_1 ⊙ ... ⊙ O_l, and the NPK Grams
    (train (N, N), test (M, N)) of a fully connected model, in float64; kind picks hard or soft gates."""
    model = copy.deepcopy(model).double().eval()
    device = next(model.parameters()).device
    X, Xt = X.double().to(device), Xt.double().to(device)
    with torch.no_grad():
        G, Gt = model.gates(X, kind), model.gates(Xt, kind)
    overlaps = [g @ g.T for g in G]
    H, Ht, partial = X @ X.T, Xt @ X.T, []
    for g, gt, O in zip(G, Gt, overlaps):
        H, Ht = H * O, Ht * (gt @ g.T)
        partial.append(H)
    error = ((H - npk_gram(model, X, gates=kind)).abs().max() / H.abs().max()).item()
    return {"overlaps": [O.cpu() for O in overlaps], "partial": [P.cpu() for P in partial],
            "gates": torch.stack(overlaps).prod(0).cpu(), "train": H.cpu(), "test": Ht.cpu(), "npk_gram_rel_error": error}


def top_k_ridge(K: torch.Tensor, K_test: torch.Tensor, y, y_test, ks: list[int], seed: int) -> dict:
    """Test accuracy of kernel ridge on the top-k kernel principal components, for each k."""
    s, U = torch.linalg.eigh(K)
    s, U = s.flip(0), U.flip(1)
    out = {}
    for k in ks:
        Uk = U[:, :k]
        out[k] = kernel_ridge((Uk * s[:k]) @ Uk.T, y, (K_test @ Uk) @ Uk.T, y_test, seed=seed).accuracy
    return out


def decay_slope(values: np.ndarray, lo: int = 2, hi: int = 100) -> float:
    """Least-squares slope of log lambda_i against log i over i = lo..hi (positive eigenvalues only)."""
    i = np.arange(1, len(values) + 1)
    keep = (i >= lo) & (i <= hi) & (values > 0)
    return float(np.polyfit(np.log(i[keep]), np.log(values[keep]), 1)[0])


def kernel_numbers(grams: dict, gates: dict, y, y_test, ks: list[int], angle_ks: list[int], seed: int) -> dict:
    """Spectrum, decay, alignment and top-k ridge of each (K_train, K_test) in grams; mean principal-angle cosines
    of PAIRS (among grams and the gate-only kernels prod_l O_l in gates)."""
    kernels = {}
    for name, (K, Kt) in grams.items():
        s = spectrum(K)
        kernels[name] = {"spectrum": (s[:300] / s[0]).tolist(), "decay_slope": decay_slope(s),
                         "lambda_10": float(s[min(9, len(s) - 1)] / s[0]), "centered_alignment": centered_alignment(K, y),
                         "top_k_ridge": top_k_ridge(K, Kt, y, y_test, ks, seed)}
    train = {**{name: K for name, (K, _) in grams.items()}, **gates}
    pairs = {f"{a} vs {b}": {k: float(np.cos(principal_angles(train[a], train[b], k)).mean()) for k in angle_ks}
             for a, b in PAIRS}
    return {"kernels": kernels, "pairs": pairs}


def moons(cfg: dict) -> Dataset:
    """scikit-learn's two moons (noise 0.2): toy_n training and toy_n test points, seeded."""
    from sklearn.datasets import make_moons
    X, y = make_moons(2 * cfg["toy_n"], noise=0.2, random_state=cfg["seed"])
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    n = cfg["toy_n"]
    return Dataset(X[:n], y[:n], X[n:], y[n:], "moons", [0, 1], (2,))


@experiment(
    "primal-dual",
    "A DLGN's gates are half-spaces of the input (q = A x + b exactly); its learnt NPK is compared with a DNN's "
    "by eigenvalue decay, top-k eigenspaces, alignment and top-k kernel ridge (is the DLGN a universal spectral "
    "approximator?).",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0, widths=[128, 128, 128],
                  epochs=20, batch_size=32, optimizer="adam", lr=1e-3, dlgn_gate="soft", beta=4.0, n_kernel=1000,
                  ks=[1, 2, 5, 10, 20, 50, 100, 200, 500], angle_ks=[10, 20, 50, 100], conv_channels=[8, 8, 8],
                  conv_epochs=5, toy_n=300, toy_widths=[6, 6, 6], toy_epochs=150, device="cpu"),
    quick=dict(n_train=200, n_test=100, widths=[16, 16], epochs=3, lr=1e-2, n_kernel=100, ks=[1, 5, 10, 50],
               angle_ks=[5, 10], conv_channels=[4, 4], conv_epochs=1, toy_n=100, toy_widths=[4, 4], toy_epochs=10),
)
def primal_dual(cfg: dict, run) -> dict:
    for key in ("ks", "angle_ks", "widths", "conv_channels", "toy_widths"):
        if not cfg[key] or any(not isinstance(v, int) or v < 1 for v in cfg[key]):
            raise ValueError(f"{key} must be a non-empty list of positive ints, got {cfg[key]!r}")
    images = load_data(cfg, flatten=False, run=run)
    data = images.flat()
    soft = dict(gate=cfg["dlgn_gate"], beta=cfg["beta"])
    nets = {"DLGN": make_model("fc", "dlgn", data, cfg, **soft), "DNN": make_model("fc", "dnn", data, cfg)}
    inits = {name: copy.deepcopy(m) for name, m in nets.items()}
    accuracy = {name: train_net(run, f"train-{name.lower()}", m, data, cfg, cfg["seed"]).final_test_acc
                for name, m in nets.items()}
    index = kernel_subset(data, cfg["n_kernel"], cfg["seed"])
    X, y = data.X_train[index], data.y_train[index]
    N = len(index)
    ks = sorted({k for k in cfg["ks"] if k < N} | {N})
    angle_ks = sorted({k for k in cfg["angle_ks"] if k <= N})

    def compute():
        parts = {"DLGN NPK": (nets["DLGN"], None), "DLGN NPK (hard gates)": (nets["DLGN"], "hard"),
                 "DNN NPK": (nets["DNN"], None), "DLGN NPK (init)": (inits["DLGN"], None),
                 "DNN NPK (init)": (inits["DNN"], None)}
        return {name: layered_npk(m, X, data.X_test, kind) for name, (m, kind) in parts.items()}
    layers = run.cached("layered-grams", compute)
    grams = {name: (v["train"], v["test"]) for name, v in layers.items()}
    Xd = X.double()
    grams["inputs X X^T"] = (Xd @ Xd.T, data.X_test.double() @ Xd.T)
    gates = {name.replace("NPK", "gates"): layers[name]["gates"] for name in ("DLGN NPK", "DNN NPK", "DLGN NPK (init)")}
    numbers = run.cached("kernel-numbers", lambda: kernel_numbers(grams, gates, y, data.y_test, ks, angle_ks,
                                                                  cfg["seed"]))
    per_layer = {name: {"overlap": [centered_alignment(O, y) for O in v["overlaps"]],
                        "partial": [centered_alignment(P, y) for P in v["partial"]]} for name, v in layers.items()}
    primal = _primal(run, cfg, images, nets["DLGN"], inits["DLGN"], soft)
    results = {"n_kernel": N, "n_test": len(data.X_test), "ks": ks, "angle_ks": angle_ks,
               "network_accuracy": accuracy, **numbers, "per_layer_alignment": per_layer,
               "npk_gram_rel_error": {name: v["npk_gram_rel_error"] for name, v in layers.items()}, "primal": primal}
    _report(run, cfg, results, layers, y)
    return {"primal_dual": results}


def _primal(run, cfg: dict, images: Dataset, dlgn, init, soft: dict) -> dict:
    """The primal maps: the FC DLGN's A_l rows as images (and what training changed in them), a conv DLGN's
    effective filters, the moons arrangement."""
    model, init = copy.deepcopy(dlgn).double(), copy.deepcopy(init).double()
    Xt = images.flat().X_test.double().to(next(model.parameters()).device)
    maps = [gating_map(model, layer) for layer in range(model.n_gated)]
    before = [gating_map(init, layer)[0] for layer in range(model.n_gated)]
    with torch.no_grad():
        qs = model.gating_preactivations(Xt)
    check = max(((Xt @ A.T + b - q).abs().max() / q.abs().max()).item() for (A, b), q in zip(maps, qs))
    path = run.figure_path("primal-fc-maps.png")
    rows = {}
    for l, ((A, _), A0) in enumerate(zip(maps, before)):
        rows[f"layer {l + 1}"] = A.reshape(len(A), *images.shape).cpu()
        rows[f"layer {l + 1}, learnt\n(A_l - A_l at init)"] = (A - A0.to(A)).reshape(len(A), *images.shape).cpu()
    filter_grid(rows, path, title=f"DLGN ({images.name}): rows of A_l, the normals of the gates' hyperplanes "
                                  f"in input space")
    conv = make_model("conv", "dlgn", images, {**cfg, "channels": cfg["conv_channels"]}, **soft)
    conv_acc = train_net(run, "train-conv-dlgn", conv, images, {**cfg, "epochs": cfg["conv_epochs"]},
                         cfg["seed"]).final_test_acc
    conv = conv.double()
    filters = [effective_filters(conv, layer) for layer in range(conv.n_gated)]
    conv_path = run.figure_path("primal-conv-filters.png")
    filter_grid({f"layer {l + 1} ({'x'.join(map(str, f.weights.shape[2:]))})": f.weights.cpu() for l, f in enumerate(filters)},
                conv_path, title=f"Conv DLGN {cfg['conv_channels']} ({images.name}): effective filter of each channel")
    return {"map_check_rel_error": check, "conv_dlgn_accuracy": conv_acc, **_moons(run, cfg, soft)}


def _moons(run, cfg: dict, soft: dict) -> dict:
    toy = moons(cfg)
    toy_cfg = {**cfg, "widths": cfg["toy_widths"], "epochs": cfg["toy_epochs"], "lr": 1e-2}
    nets = {"DLGN": make_model("fc", "dlgn", toy, toy_cfg, bias=True, **soft),
            "DNN": make_model("fc", "dnn", toy, toy_cfg, bias=True)}
    acc = {name: train_net(run, f"train-moons-{name.lower()}", m, toy, toy_cfg, cfg["seed"]).final_test_acc
           for name, m in nets.items()}
    lo, hi = toy.X_train.min(0).values - 0.5, toy.X_train.max(0).values + 0.5
    panels = {name: on_grid(m, (lo[0].item(), hi[0].item()), (lo[1].item(), hi[1].item()), 200) for name, m in nets.items()}
    arrangement(panels, toy.X_train, toy.y_train, run.figure_path("primal-moons.png"),
                title="Two moons: every gate's zero line over the learnt function (top), regions of equal gates (bottom)")
    regions = {name: len(np.unique(np.concatenate([(q > 0).reshape(len(q), -1).numpy() for q in p["qs"]]).T, axis=0))
               for name, p in panels.items()}
    return {"moons_accuracy": acc, "moons_regions": regions}


def _report(run, cfg: dict, r: dict, layers: dict, y) -> None:
    report = run.report
    report.heading(f"The two linearities of a DLGN ({cfg['dataset']}; FC widths {cfg['widths']}; NPKs on "
                   f"{r['n_kernel']} training samples, tested on {r['n_test']})")
    p = r["primal"]
    report.paragraph(f"Primal: q_l(x) = A_l x + b_l holds on the test set to {p['map_check_rel_error']:.1e} (relative, "
                     f"float64). Networks' test accuracy: DLGN {r['network_accuracy']['DLGN']:.4f}, DNN "
                     f"{r['network_accuracy']['DNN']:.4f}; conv DLGN {cfg['conv_channels']} {p['conv_dlgn_accuracy']:.4f}; "
                     f"two moons DLGN {p['moons_accuracy']['DLGN']:.3f}, DNN {p['moons_accuracy']['DNN']:.3f} "
                     f"({p['moons_regions']['DLGN']} and {p['moons_regions']['DNN']} gate patterns on the grid).")
    for name, caption in (("primal-fc-maps.png", "Rows of A_l of the fully connected DLGN (first units of each layer), "
                                                 "and what training changed in them"),
                          ("primal-conv-filters.png", "Effective filters of a conv DLGN, per layer (channels summed "
                                                      "for grey images; RGB images scaled per filter)"),
                          ("primal-moons.png", "Two moons: gates' zero lines and regions, DLGN (lines) against DNN "
                                               "(lines bent by the gates before them)")):
        report.figure(run.figure_path(name), caption)
    ks, aks = r["ks"], r["angle_ks"]
    kernel_rows = [[name, n["centered_alignment"], n["lambda_10"], n["decay_slope"], *[n["top_k_ridge"][k] for k in ks]]
                   for name, n in r["kernels"].items()]
    report.heading("Dual: the NPKs of the learnt gates", 3)
    report.table(kernel_rows, ["kernel", "centred alignment", "lambda_10 / lambda_1", "decay slope (i = 2..100)",
                               *[f"top-{k} ridge acc" for k in ks]])
    report.table([[pair, *[v[k] for k in aks]] for pair, v in r["pairs"].items()],
                 ["kernels", *[f"mean cos, top-{k}" for k in aks]])
    figures = {"spectral-decay.png": "Normalised eigenvalue decay", "spectral-angles.png":
               "Mean cosine of the principal angles between top-k eigenspaces", "spectral-topk.png":
               "Kernel ridge on the top-k kernel principal components only", "dual-layers.png":
               "Each layer's gate-overlap kernel G_l G_l^T and the NPK (X X^T) ⊙ prod_l G_l G_l^T (samples sorted by "
               "class), and their spectra",
               "dual-alignment.png": "Centred alignment with the labels, layer by layer"}
    spectrum_plot({n: v["spectrum"] for n, v in r["kernels"].items()}, run.figure_path("spectral-decay.png"))
    versus_k(r["pairs"], run.figure_path("spectral-angles.png"), ylabel="mean cos(principal angle)",
             title="Top-k eigenspaces against the DNN's NPK")
    versus_k({n: v["top_k_ridge"] for n, v in r["kernels"].items()}, run.figure_path("spectral-topk.png"),
             ylabel="test accuracy (%)", title="Kernel ridge on the top-k eigenvectors", percent=True)
    layer_kernels({name.split()[0]: {**{f"G{l + 1} G{l + 1}^T": O for l, O in enumerate(layers[name]["overlaps"])},
                                     "NPK": layers[name]["train"]} for name in ("DLGN NPK", "DNN NPK")}, y,
                  run.figure_path("dual-layers.png"),
                  title="Gate-overlap kernels G_l G_l^T layer by layer and their product with X X^T, the NPK")
    _alignment_figure(r["per_layer_alignment"], run.figure_path("dual-alignment.png"))
    for name, caption in figures.items():
        report.figure(run.figure_path(name), caption)
    report.paragraph(_summary(r))


def _alignment_figure(per_layer: dict, path) -> None:
    fig, axes = new_figure(None, path, figsize=(9.0, 3.4), ncols=2)
    for ax, key, title in zip(axes.ravel(), ("overlap", "partial"),
                              ("layer l's overlap G_l G_l^T", "(X X^T) ⊙ O_1 ⊙ ... ⊙ O_l")):
        for name, v in per_layer.items():
            ax.plot(range(1, len(v[key]) + 1), v[key], marker="o", label=name)
        ax.set_xticks(range(1, len(v[key]) + 1))
        ax.set_xlabel("gated layer l")
        ax.set_ylabel("centred alignment with the labels")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    save_figure(fig, path)


def _summary(r: dict) -> str:
    k, pairs = r["kernels"], r["pairs"]
    learnt, hard, init, _, inputs, gates, gates_init = (pairs[f"{a} vs {b}"] for a, b in PAIRS)
    small, big = r["angle_ks"][0], r["angle_ks"][-1]
    ridge = {n: k[n]["top_k_ridge"] for n in ("DLGN NPK", "DNN NPK")}
    k10 = min(r["ks"], key=lambda v: abs(v - 10))
    align = ", ".join(f"{name} {v['centered_alignment']:.3f}" for name, v in k.items())
    return (f"What the numbers suggest. The learnt DLGN NPK shares the DNN's top-{small} eigenspace with mean cosine "
            f"{learnt[small]:.3f} ({hard[small]:.3f} with its hard gates; top-{big}: {learnt[big]:.3f}); the baselines "
            f"are the DLGN at initialisation, {init[small]:.3f} (top-{big}: {init[big]:.3f}), and the inputs' Gram "
            f"X X^T alone, {inputs[small]:.3f} (top-{big}: {inputs[big]:.3f}). Without the input Gram, the gates' own "
            f"kernels prod_l G_l G_l^T agree at top-{small} with mean cosine {gates[small]:.3f} (DLGN at initialisation: "
            f"{gates_init[small]:.3f}; top-{big}: {gates[big]:.3f} against {gates_init[big]:.3f}). Centred alignment with "
            f"the labels: {align}. Kernel ridge on the top-{k10} eigenvectors: DLGN {ridge['DLGN NPK'][k10]:.3f}, DNN "
            f"{ridge['DNN NPK'][k10]:.3f}; on the whole kernel {ridge['DLGN NPK'][r['n_kernel']]:.3f} and "
            f"{ridge['DNN NPK'][r['n_kernel']]:.3f}. Decay slopes (i = 2..100): DLGN {k['DLGN NPK']['decay_slope']:.2f}, "
            f"DNN {k['DNN NPK']['decay_slope']:.2f}. What they cannot settle: they compare the kernels that one "
            f"training run of each net found on one data set, at one width and depth and one seed; a DLGN matching "
            f"the DNN here is evidence that a linear gating network can reach the DNN's learnt spectrum on this task, "
            f"not that it can approximate every spectrum (universality), and a gap could come from training rather "
            f"than from what DLGN gates can express.")


def readme_table(folders) -> str:
    """The README's markdown table of finished primal-dual runs (one row per run folder's results.json)."""
    rows = []
    for folder in folders:
        saved = json.loads((Path(folder) / "results.json").read_text())
        r, cfg = saved["primal_dual"], saved["config"]
        k, net = r["kernels"], r["network_accuracy"]
        small, big = (str(v) for v in (r["angle_ks"][0], r["angle_ks"][-1]))

        def cos(pair):
            return f"{r['pairs'][pair][small]:.3f} / {r['pairs'][pair][big]:.3f}"
        ridge = [k[name]["top_k_ridge"][key] for key in (small, str(r["n_kernel"])) for name in ("DLGN NPK", "DNN NPK")]
        rows.append([cfg["dataset"], f"{r['n_kernel']} / {r['n_test']}", net["DLGN"], net["DNN"],
                     *[k[name]["centered_alignment"] for name in ("DLGN NPK", "DNN NPK", "DLGN NPK (init)", "inputs X X^T")],
                     cos("DLGN NPK vs DNN NPK"), cos("DLGN NPK (init) vs DNN NPK"), cos("inputs X X^T vs DNN NPK"),
                     cos("DLGN gates vs DNN gates"), cos("DLGN gates (init) vs DNN gates"), *ridge])
    ks = f"top-{small} / top-{big}"
    return markdown_table(rows, ["data", "N kernel / test", "DLGN net", "DNN net", "align DLGN", "align DNN",
                                 "align DLGN init", "align X X^T", f"cos DLGN-DNN, {ks}", f"cos DLGN init-DNN, {ks}",
                                 f"cos X X^T-DNN, {ks}", f"cos gates, {ks}", f"cos gates DLGN init, {ks}",
                                 f"KRR top-{small} DLGN", f"KRR top-{small} DNN", "KRR DLGN", "KRR DNN"], ".3f")
