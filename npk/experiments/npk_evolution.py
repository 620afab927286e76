"""npk-evolution: how the NPK of a ReLU net's gates changes during training (arXiv 2006.10529, NeurIPS 2020).

A bias-free ReLU net (default depth 6, width 100) with weights +-sqrt(2 / fan_in) is trained on a binary
task (digits 4 vs 7 by default, d_out = 1) and on the multi-class task (d_out = number of classes). Every
`record_every` epochs the NPK H_t of its current gates is computed on a fixed seeded subset of the
training set (`n_kernel` samples), and with the +-1 one-vs-rest targets Y (one column for the binary task,
one per class otherwise):

    nu_t = trace(Y^T (H_t / tr H_t + eps I)^{-1} Y)     (the paper's nu_t = y^T (H_t / tr H_t)^{-1} y at eps = 0)
    A_t  = <H_t, Y Y^T>_F / (||H_t||_F ||Y Y^T||_F)      and its centred version (npk.kernels.linalg)

nu_t is small when the targets lie in the top eigendirections of H_t; the paper reports that it falls
during training. The ridge eps (config nu_eps) keeps nu finite when H_t is singular; H_t / tr H_t has
trace 1, so eps is relative to the mean eigenvalue 1 / n_kernel.

Resuming: training runs up to each recorded epoch in turn, from one checkpoint folder per task (model,
optimizer and shuffling state carry over, so the run is the same as one uninterrupted call); the weights
and the numbers of each recorded epoch are cached, keyed by what they depend on (see `evolve`): an
interruption anywhere loses at most the epoch in progress, and a changed n_kernel or nu_eps reuses the
training.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import data as datasets
from ..kernels.linalg import alignment, centered_alignment, nu, spectrum
from ..models.init import init_weights
from ..plots import curves, new_figure, save_figure, spectrum_plot
from .base import experiment
from .common import kernel_subset, load_data, make_model, model_fingerprint, npk_fn, train_net

INIT_TEXT = {"bernoulli": "+-sqrt(2 / fan_in) with random signs", "gaussian": "N(0, 2 / fan_in)"}


def one_vs_rest(y: torch.Tensor, n_out: int) -> torch.Tensor:
    """+-1 targets: one column (label 1 vs 0) for n_out = 1, else one column per class (class c vs the rest)."""
    if n_out == 1:
        return (2.0 * y.double() - 1.0)[:, None]
    return 2.0 * torch.nn.functional.one_hot(y, n_out).double() - 1.0


def record_epochs(epochs: int, every: int) -> list[int]:
    """0, every, 2 every, ... and the last epoch."""
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"record_every must be a positive int, got {every!r}")
    return sorted(set(range(0, epochs + 1, every)) | {epochs})


def npk_numbers(model, X: torch.Tensor, Y: torch.Tensor, eps: float) -> dict:
    """nu, alignment, centred alignment and the spectrum of the NPK of `model`'s gates on X (float64)."""
    H = npk_fn(model)(X.double())
    return {"nu": nu(H, Y, eps=eps), "alignment": alignment(H, Y), "centered_alignment": centered_alignment(H, Y),
            "spectrum": spectrum(H).tolist()}


def evolve(run, cfg: dict, task: str, data: datasets.Dataset) -> dict:
    """Train a fresh net on `data`, recording the NPK numbers at every recorded epoch; the history.

    Three kinds of saved stages, each keyed by what it depends on: the training checkpoint (the net, its
    initial weights, the data and the optimiser settings), the weights at each recorded epoch (the same,
    and the epoch) and the numbers at each recorded epoch (those weights, n_kernel, nu_eps, seed). A
    changed n_kernel thus recomputes the numbers from the saved weights without training again."""
    def fresh():  # the net at initialisation (the same weights every time)
        net = make_model("fc", "dnn", data, cfg)
        init_weights(net.value_layers, scheme=cfg["init"])
        return net

    model = fresh()
    index = kernel_subset(data, cfg["n_kernel"], cfg["seed"])
    n_out = model.value_layers[-1].out_features
    X, Y = data.X_train[index], one_vs_rest(data.y_train[index], n_out)
    training = {"model": model_fingerprint(model), "data": run.data_seen, "lr": cfg["lr"],
                "batch_size": cfg["batch_size"], "optimizer": cfg["optimizer"], "seed": cfg["seed"]}
    kernel = {"n_kernel": cfg["n_kernel"], "nu_eps": cfg["nu_eps"]}

    def fit(net, epochs: int):
        return train_net(run, f"evolution-train-{task}", net, data, cfg, cfg["seed"], epochs=epochs)

    def weights(epoch: int) -> dict:
        net = fresh()
        if epoch > 0:
            fit(net, epoch)
        return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    def numbers(epoch: int) -> dict:
        state = run.cached(f"evolution-{task}-weights-{epoch}", lambda: weights(epoch),
                           depends={**training, "epoch": epoch})
        model.load_state_dict(state)
        return npk_numbers(model, X, Y, cfg["nu_eps"])

    epochs = record_epochs(cfg["epochs"], cfg["record_every"])
    records = [run.cached(f"evolution-{task}-epoch-{e}", lambda e=e: numbers(e),
                          depends={**training, "epoch": e, **kernel}) for e in epochs]
    history = fit(fresh(), cfg["epochs"])   # at the last checkpoint already: returns the history only
    test_acc = dict(zip(history.eval_epochs, history.test_acc))
    series = {key: [r[key] for r in records] for key in ("nu", "alignment", "centered_alignment")}
    steps = np.diff(series["nu"])
    return {"epochs": epochs, **series, "spectra": {e: r["spectrum"] for e, r in zip(epochs, records)},
            "test_acc": [test_acc.get(e) for e in epochs], "train_loss": history.train_loss,
            "n_kernel": len(index), "n_outputs": n_out, "nu_ratio": series["nu"][-1] / series["nu"][0],
            "nu_falling_steps": float((steps < 0).mean()) if len(steps) else None,
            "final_test_acc": history.final_test_acc}


@experiment(
    "npk-evolution",
    "During training the NPK of a ReLU net's gates aligns with the labels: nu_t = y^T (H_t / tr H_t)^{-1} y falls.",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0, binary=[4, 7],
                  multiclass=True, widths=[100] * 6, init="bernoulli", epochs=30, record_every=2,
                  batch_size=32, optimizer="sgd", lr=0.01, n_kernel=500, nu_eps=1e-6, spectra_epochs=None,
                  device="cpu"),
    quick=dict(n_train=150, n_test=50, widths=[32] * 3, epochs=3, record_every=1, lr=0.05, n_kernel=100),
    nullable=("n_kernel", "binary"),
)
def npk_evolution(cfg: dict, run) -> dict:
    if cfg["init"] not in INIT_TEXT:
        raise ValueError(f"init must be one of {list(INIT_TEXT)}, got {cfg['init']!r}")
    if cfg["binary"] is None and not cfg["multiclass"]:
        raise ValueError("nothing to run: set binary to a pair of classes (e.g. [4, 7]) and/or multiclass=true")
    missing = sorted(set(cfg["spectra_epochs"] or ()) - set(record_epochs(cfg["epochs"], cfg["record_every"])))
    if missing:
        raise ValueError(f"spectra_epochs {missing} are not recorded epochs (0, every record_every-th, and the last "
                         f"= {record_epochs(cfg['epochs'], cfg['record_every'])}); pick from those")
    tasks = {}
    if cfg["binary"] is not None:
        a, b = cfg["binary"]
        tasks[f"{a} vs {b}"] = (cfg, load_data(cfg, flatten=True, run=run))
    if cfg["multiclass"]:
        multi = {**cfg, "binary": None}
        data = load_data(multi, flatten=True, run=run)
        tasks[f"{data.n_classes} classes"] = (multi, data)
    results = {name: evolve(run, task_cfg, name.replace(" ", "-"), data) for name, (task_cfg, data) in tasks.items()}
    _report(run, cfg, results)
    return {"npk_evolution": results}


def _report(run, cfg: dict, results: dict) -> None:
    report = run.report
    report.heading(f"NPK evolution during training ({cfg['dataset']}, widths {cfg['widths']})")
    report.paragraph(f"nu_t = trace(Y^T (H_t / tr H_t + eps I)^(-1) Y) with eps = {cfg['nu_eps']:g} (a ridge for "
                     f"singular H_t; H_t / tr H_t has mean eigenvalue 1 / n_kernel), Y the +-1 one-vs-rest targets, "
                     f"H_t the NPK of the gates after t epochs on a fixed subset of the training set; "
                     f"initial weights {INIT_TEXT[cfg['init']]}, no biases, {cfg['optimizer']} lr {cfg['lr']}.")
    rows = [[name, r["n_kernel"], r["nu"][0], r["nu"][-1], r["nu_ratio"], r["nu_falling_steps"],
             r["centered_alignment"][0], r["centered_alignment"][-1], r["final_test_acc"]] for name, r in results.items()]
    report.table(rows, ["task", "n_kernel", "nu_0", "nu_T", "nu_T / nu_0", "share of falling steps",
                        "centred alignment 0", "centred alignment T", "final test acc"], floatfmt=".4g")
    names = list(results)
    nu_path = run.figure_path("npk-evolution-nu.png")
    curves({"epoch": results[names[0]]["epochs"], **{f"nu_t, {n}": results[n]["nu"] for n in names}},
           path=nu_path, labels={f"nu_t, {n}": "nu_t" for n in names}, logy=[f"nu_t, {n}" for n in names],
           title="nu_t of the NPK during training (lower: labels in the top eigendirections)")
    report.figure(nu_path, "nu_t = trace(Y^T (H_t / tr H_t + eps I)^-1 Y) against the training epoch")
    align_path = run.figure_path("npk-evolution-alignment.png")
    curves({"epoch": results[names[0]]["epochs"],
            **{f"{kind}, {n}": results[n][key] for n in names
               for kind, key in (("alignment", "alignment"), ("centred alignment", "centered_alignment"))}},
           path=align_path, title="Kernel-target alignment of the NPK during training")
    report.figure(align_path, "Alignment and centred alignment of H_t with the one-vs-rest targets against the epoch")
    spectra_path = run.figure_path("npk-evolution-spectra.png")
    fig, axes = new_figure(path=spectra_path, figsize=(5.0 * len(names), 4.0), ncols=len(names))
    for ax, n in zip(np.atleast_1d(axes).ravel(), names):
        r = results[n]
        shown = cfg["spectra_epochs"] or sorted({r["epochs"][0], r["epochs"][len(r["epochs"]) // 2], r["epochs"][-1]})
        spectrum_plot({f"epoch {e}": r["spectra"][e] for e in shown}, ax=ax, title=f"NPK spectrum, {n}")
    save_figure(fig, spectra_path)
    report.figure(spectra_path, "Normalised eigenvalue decay of H_t at a few epochs")
    report.table([[e, *[results[n][k][i] for n in names for k in ("nu", "centered_alignment", "test_acc")]]
                  for i, e in enumerate(results[names[0]]["epochs"])],
                 ["epoch", *[f"{k}, {n}" for n in names for k in ("nu", "centred alignment", "test acc")]],
                 floatfmt=".4g")
    verdict = "; ".join(f"{n}: nu_T / nu_0 = {r['nu_ratio']:.3f}, nu fell in {100 * r['nu_falling_steps']:.0f}% of "
                        f"the recorded steps, centred alignment {r['centered_alignment'][0]:.3f} -> "
                        f"{r['centered_alignment'][-1]:.3f}" for n, r in results.items())
    falls = all(r["nu_ratio"] < 1 for r in results.values())
    report.paragraph(f"{verdict}. The claim (nu_t falls during training) is "
                     f"{'borne out' if falls else 'NOT borne out'} on this run: the gates the network learns "
                     f"make a kernel whose top eigendirections carry {'more' if falls else 'not more'} of the labels.")
