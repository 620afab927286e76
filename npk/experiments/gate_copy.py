"""gate-copy: how good are the gates of a ReLU network after k epochs of training?

A ReLU network trains for `relu_epochs` epochs; its state after every epoch up to the last copy epoch
is saved (through train's callback, each state a cached stage). For every k in `copy_epochs` the gates
of its best checkpoint so far (the epoch <= k of highest test accuracy; k = 0: the initial state) are
frozen and a freshly initialised value network, independent of the ReLU network, is trained on them
(FLNPF, `npk.models.regimes.gate_copy`). So k = 0 is FRNPF-II: random gates independent of the values.
This is the protocol of the NPF/NPK paper's gate-copying study (PAPER.md section 3), which (GCONV,
CIFAR-10) finds the value network's accuracy rising with k, from 67.1% (k = 0) to 79.4% (k = 60), close
to the ReLU network's own 80.3%: most of what the ReLU network learns is in its gates.

The default runs on a 5,000-image Fashion-MNIST subset (`make data` or `apt-get install
dataset-fashion-mnist`): on the 8x8 digits even random gates (k = 0) reach about 96%, leaving nothing to see.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np
import torch

from ..models import regimes
from ..plots import new_figure, save_figure, styled
from ..train import accuracy
from .base import experiment
from .common import accuracy_summary, build_model, check_common, family_label, family_view, load_data, pm, train_net


def check_epochs(copy_epochs, relu_epochs) -> tuple[list[int], int]:
    """The sorted copy epochs and the ReLU network's number of epochs (default: the last copy epoch)."""
    if not isinstance(copy_epochs, (list, tuple)) or not copy_epochs or len(set(copy_epochs)) != len(copy_epochs) \
            or any(not isinstance(k, Integral) or isinstance(k, bool) or k < 0 for k in copy_epochs):
        raise ValueError(f"copy_epochs must be a non-empty list of distinct epochs >= 0 (0: the gates at "
                         f"initialisation), got {copy_epochs!r}")
    ks = sorted(int(k) for k in copy_epochs)
    n = max(ks[-1], 1) if relu_epochs is None else relu_epochs
    if not isinstance(n, Integral) or isinstance(n, bool) or n < max(ks[-1], 1):
        raise ValueError(f"relu_epochs must be an int >= the last copy epoch ({ks[-1]}) and >= 1, or null "
                         f"(then the last copy epoch), got {relu_epochs!r}")
    return ks, int(n)


def state_key(seed: int, epoch: int) -> str:
    return f"gate-copy-relu-s{seed}-epoch{epoch}"


def state_inputs(run, seed: int, epoch: int) -> dict:
    """What the saved state after `epoch` depends on: the ReLU network's training, and the epoch."""
    return {"training": run.records[f"gate-copy-relu-s{seed}"], "epoch": epoch}


def train_relu(run, template, data, cfg: dict, seed: int, ks: list[int], epochs: int):
    """Train the ReLU network from `template`, caching its state_dict after every epoch up to max(ks)
    (0: before training)."""
    def save_state(epoch, model):
        if epoch <= ks[-1]:
            run.cached(state_key(seed, epoch), lambda: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                       depends=state_inputs(run, seed, epoch))
    return train_net(run, f"gate-copy-relu-s{seed}", regimes.relu(template), data, cfg, seed, epochs=epochs,
                     callback=save_state)


def saved_state(run, seed: int, epoch: int) -> dict:
    def missing():
        raise RuntimeError(f"the ReLU network's state after epoch {epoch} (seed {seed}) was not saved (the run "
                           f"stopped between that epoch's checkpoint and its callback); delete "
                           f"{run.path / 'cache' / f'gate-copy-relu-s{seed}'} and rerun")
    return run.cached(state_key(seed, epoch), missing, depends=state_inputs(run, seed, epoch))


def best_so_far(result, k: int) -> int:
    """The epoch <= k of the highest test accuracy (the first one on a tie); 0 (the initial state) for k = 0."""
    scores = [(acc, -epoch) for epoch, acc in zip(result.eval_epochs, result.test_acc) if epoch <= k]
    return -max(scores)[1] if k > 0 and scores else 0


@styled
def copy_plot(ks, flnpf: list[dict], relu_epochs, relu_acc, relu_best: float, path):
    """FLNPF accuracy against the copy epoch, with the ReLU network's own test accuracy for reference."""
    fig, ax = new_figure(None, path, figsize=(6.0, 4.0))
    ax.errorbar(ks, [100 * s["mean"] for s in flnpf], yerr=[100 * s["std"] for s in flnpf], marker="o", capsize=3,
                label="value network on gates copied at epoch k (FLNPF), best")
    ax.plot(relu_epochs[1:], 100 * np.asarray(relu_acc[1:]), ls="--", marker=".",  # epoch 0: chance, off the scale
            label="ReLU network at epoch k (k >= 1)")
    ax.axhline(100 * relu_best, color="gray", ls=":", label="ReLU network, best")
    ax.set_xlabel("epochs of ReLU training before the gates were copied (k)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Gate copying: accuracy of a value network trained on copied gates")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


@experiment(
    "gate-copy",
    "Most of what a ReLU network learns is in its gates: a value network retrained from scratch on gates "
    "copied from a ReLU network after k epochs gets better with k and approaches the ReLU network's accuracy.",
    defaults=dict(dataset="fashion-mnist", data_root=None, n_train=5000, n_test=2000, seed=0, n_seeds=1,
                  family="fc", widths=[128] * 4, channels=[16] * 4, dense_widths=[], padding="zero", res_width=64,
                  res_blocks=3, conv_preset=None, res_preset=None, copy_epochs=[0, 1, 2, 4, 8], relu_epochs=None,
                  epochs=10, batch_size=32, optimizer="adam", lr=3e-3, device="cpu"),
    quick=dict(dataset="digits", n_train=200, n_test=100, widths=[32, 32], channels=[4, 4], copy_epochs=[0, 1, 2],
               epochs=2, lr=1e-2),
)
def gate_copy(cfg: dict, run) -> dict:
    seeds = check_common(cfg, [cfg["family"]])
    ks, relu_epochs = check_epochs(cfg["copy_epochs"], cfg["relu_epochs"])
    data = family_view(cfg["family"], load_data(cfg, flatten=False, run=run), cfg)
    relu_runs, relu_init, flnpf_runs, copied = [], [], {k: [] for k in ks}, {k: [] for k in ks}
    for seed in seeds:
        template = build_model(cfg["family"], "dnn", data, cfg, seed)
        relu_init.append(accuracy(template, data.X_test, data.y_test))
        relu_runs.append(train_relu(run, template, data, cfg, seed, ks, relu_epochs))
        for k in ks:
            copied[k].append(best_so_far(relu_runs[-1], k))
            torch.manual_seed(seed)  # the fresh value network
            model = regimes.gate_copy(template, saved_state(run, seed, copied[k][-1]))
            flnpf_runs[k].append(train_net(run, f"gate-copy-k{k}-s{seed}", model, data, cfg, seed))
    flnpf = {k: accuracy_summary(flnpf_runs[k]) for k in ks}
    relu = accuracy_summary(relu_runs)
    curve_epochs = [0, *relu_runs[0].eval_epochs]
    curve = np.mean([[a0, *r.test_acc] for a0, r in zip(relu_init, relu_runs)], axis=0).tolist()
    at_k = {k: curve[curve_epochs.index(k)] for k in ks}

    label = family_label(cfg["family"], cfg)
    report = run.report
    report.heading(f"Gate copying ({label}, {cfg['dataset']}, ReLU network {relu_epochs} epochs, value networks "
                   f"{cfg['epochs']} epochs, {len(seeds)} seed{'s' * (len(seeds) > 1)})")
    rows = [[k, ", ".join(map(str, copied[k])), 100 * at_k[k], pm(flnpf[k]["best"]), pm(flnpf[k]["final"])]
            for k in ks]
    report.table(rows, ["copy epoch k", "gates of epoch (best so far)", "ReLU net at epoch k (%)", "FLNPF best (%)",
                        "FLNPF final (%)"], floatfmt=".2f")
    figure = run.figure_path("gate-copy.png")
    copy_plot(ks, [flnpf[k]["best"] for k in ks], curve_epochs, curve, relu["best"]["mean"], figure)
    report.figure(figure, "Test accuracy of value networks trained on gates copied from a ReLU network after k "
                          "epochs, with the ReLU network's own test accuracy")
    first, last = flnpf[ks[0]]["best"]["mean"], flnpf[ks[-1]]["best"]["mean"]
    report.paragraph(
        f"Gates copied at epoch {ks[0]} give {100 * first:.2f}%, gates copied at epoch {ks[-1]} give "
        f"{100 * last:.2f}% ({100 * (last - first):+.2f} points), against {pm(relu['best'])}% for the ReLU network "
        f"itself (its best over {relu_epochs} epochs): the value network on the copied gates reaches {last / relu['best']['mean']:.1%} of it. "
        + ("The gates improve as the ReLU network trains, as in the paper." if last > first else
           "Here the later gates are not better than the early ones, unlike the paper."))
    relu.update(epochs=curve_epochs, test_acc=curve, at_copy_epochs={str(k): at_k[k] for k in ks})
    return {"copy_epochs": ks, "copied_from_epochs": {str(k): v for k, v in copied.items()}, "flnpf": {str(k): v for k, v in flnpf.items()}, "relu": relu, "seeds": seeds}
