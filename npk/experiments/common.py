"""Building blocks the experiments share: data, models, keyed training, Grams and kernel accuracy, and the
config checks, presets and mean +- std summaries of the training experiments."""
from __future__ import annotations

import copy
import hashlib
import shutil
import time
from numbers import Integral
from typing import Mapping, Sequence

import numpy as np
import torch

from .. import data as datasets
from .. import models
from ..files import UnreadableFile, load_pt
from ..fit import kernel_ridge
from ..kernels import store
from ..kernels.gram import preflight_grams
from ..kernels.infinite import infinite_ntk_gram
from ..kernels.npk import npk_gram
from ..kernels.ntk import ntk_gram
from ..memory import PeakMemory
from ..plots import accuracy_bars, new_figure, save_figure
from ..train import CHECKPOINT_FILE, TrainResult, train
from .base import Run

FAMILIES = ("fc", "conv", "res")


def load_data(cfg: dict, flatten: bool, run: Run | None = None) -> datasets.Dataset:
    """The data set named by cfg (dataset, data_root, n_train, n_test, seed, binary), with a
    validation split of val_fraction held out of the training images when that key is non-zero; with `run`, its
    checksum goes into the run's results.json (provenance) and into the input records of later stages."""
    data = datasets.load(cfg["dataset"], root=cfg.get("data_root"), n_train=cfg.get("n_train"),
                         n_test=cfg.get("n_test"), binary=cfg.get("binary"), seed=cfg.get("seed", 0),
                         flatten=flatten)
    if cfg.get("val_fraction"):
        data = data.hold_out(cfg["val_fraction"], seed=cfg.get("seed", 0))
    if run is not None:
        label = f"{data.name} binary={cfg.get('binary')}"
        run.data_seen[label] = data.checksum()
        run.dir.save_results(data_checksums={**run.dir.results.get("data_checksums", {}), label: run.data_seen[label]})
    return data


def kernel_subset(data: datasets.Dataset, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of n training samples (all of them when n is None or >= N)."""
    N = len(data.X_train)
    if n is None or n >= N:
        return torch.arange(N)
    if n < 2:
        raise ValueError(f"n_kernel must be None (every training sample) or at least 2, got {n}")
    return torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def make_model(family: str, kind: str, data: datasets.Dataset, cfg: dict, **opts) -> models.GatedNet:
    """A fresh model of `family` (fc / conv / res) and `kind` (dnn, dgn, dlgn, dlgnsf), seeded by cfg["seed"]."""
    torch.manual_seed(cfg.get("seed", 0))
    d_out = 1 if data.n_classes == 2 and cfg.get("binary") else data.n_classes
    kind = kind.lower()
    if family == "fc":
        cls = {"dnn": models.DNN, "dgn": models.DGN, "dlgn": models.DLGN, "dlgnsf": models.DLGNSF}[kind]
        return cls(data.X_train[0].numel(), cfg["widths"], d_out, **opts)
    if family == "conv":
        cls = {"dnn": models.ConvDNN, "dgn": models.ConvDGN, "dlgn": models.ConvDLGN, "dlgnsf": models.ConvDLGNSF}[kind]
        C, *spatial = data.shape
        return cls(C, cfg["channels"], padding=cfg.get("padding", "zero"), pooling="gap", d_out=d_out,
                   spatial_dims=len(spatial), input_size=tuple(spatial), **opts)
    if family == "res":
        cls = {"dnn": models.ResDNN, "dgn": models.ResDGN, "dlgn": models.ResDLGN}[kind]
        return cls(data.X_train[0].numel(), cfg["res_width"], cfg["res_blocks"], d_out=d_out, **opts)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def gated_opts(kind: str, cfg: dict) -> dict:
    """Constructor options of a DGN / DLGN (gate kind, beta, eps, value input); a DNN is a plain ReLU net.

    Soft gates are (1 + eps) sigmoid(beta q): eps = 0 is the DLGN's sigmoid(4 q) of 2110.03403's code."""
    if kind == "dnn":
        return {}
    return dict(gate=cfg["gate"], beta=cfg["beta"], eps=cfg["eps"], value_input=cfg["value_input"])


def input_view(family: str, data: datasets.Dataset) -> datasets.Dataset:
    """Images for conv nets, flat vectors for the others."""
    return data if family == "conv" else data.flat()


def fit_network(run: Run, key: str, model: torch.nn.Module, data: datasets.Dataset, cfg: dict) -> dict:
    """Train `model` in place (checkpointed under cache/train-<key>, so a rerun resumes); return its accuracies."""
    result = train_net(run, f"train-{key}", model, data, cfg, cfg.get("seed", 0))
    return {"best_test_acc": result.best_test_acc, "final_test_acc": result.final_test_acc,
            "best_epoch": result.best_epoch, "test_acc": result.test_acc, "train_acc": result.train_acc,
            "selected_test_acc": result.selected_test_acc, "selected_epoch": result.selected_epoch,
            "selected_on": result.selected_on, "epochs_run": result.epochs_run, "wall_time_s": result.wall_time}


def grams(run: Run, key: str, gram_fn, data: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(K_train, K_test_train) of a kernel function gram_fn(X, Y=None), in float64, cached under `key`."""
    n, n_test = len(data.X_train), len(data.X_test)
    preflight_grams(f"the Grams of {key}", [(n, n), (n_test, n)])   # refused up front if they cannot fit

    def compute():
        X, Xt = data.X_train.double(), data.X_test.double()
        return gram_fn(X), gram_fn(Xt, X)
    return run.cached(f"gram-{key}", compute)


def npk_fn(model: models.GatedNet, progress: bool = False, dtype: torch.dtype = torch.float64):
    """The NPK of `model`'s current gates as a kernel function (X, Y=None, **gram_options) -> Gram."""
    return on_model_device(npk_gram, model, dtype, progress=progress)


def ntk_fn(model: models.GatedNet, progress: bool = False, dtype: torch.dtype = torch.float64):
    """The empirical NTK (all parameters) of `model`'s current weights as a kernel function."""
    return on_model_device(ntk_gram, model, dtype, params="all", progress=progress)


def infinite_ntk_fn(depth: int, progress: bool = False, exact_angles: bool = True):
    """The infinite-width NTK of a fully connected ReLU net with `depth` hidden layers, on flattened inputs
    (exact_angles=False: the first layer's angles from a GEMM, for float32 Grams; see `infinite_ntk`)."""
    return lambda X, Y=None, **kw: infinite_ntk_gram(X.flatten(1), None if Y is None else Y.flatten(1), depth=depth,
                                                     exact_angles=exact_angles, progress=progress, **kw)


def on_model_device(kernel, model: torch.nn.Module, dtype: torch.dtype = torch.float64, **options):
    """kernel(frozen, X, Y, **options, **gram_options) on a copy of `model` in `dtype` (later training must not
    change it), computed on the model's device and returned on the CPU (gram_options: e.g. out=, checkpoint_dir=)."""
    frozen = copy.deepcopy(model).to(dtype).eval()
    device = next(frozen.parameters()).device

    def gram(X, Y=None, **gram_options):
        Y = None if Y is None else Y.to(device)
        return kernel(frozen, X.to(device), Y, **options, **gram_options).cpu()
    return gram


def streamed_kernel_ridge(run: Run, key: str, gram_fn, data: datasets.Dataset, cfg: dict) -> dict:
    """Kernel ridge on Grams written to disk, cached under krr-<key>.

    K(train, train), K(val, train) when the data has a validation split (the ridge is then chosen on it, as
    the network's epoch is, and not refit) and K(test, train) are written as cfg["gram_dtype"] .npy files
    tile by tile into cache/grams-<key> (an interrupted Gram resumes), fitted by `kernel_ridge(solver="cg")`
    (cfg: lambdas, cg_tol, cg_max_iter, landmarks), then deleted unless cfg["keep_grams"]. Returns the test
    accuracy, the fit's record, the seconds of each step and the peak anonymous memory of the process."""
    def compute():
        folder = run.checkpoint_dir(f"grams-{key}")
        dtype = getattr(torch, cfg["gram_dtype"])
        X = data.X_train.to(dtype)
        parts = {"train": None, "val": data.X_val, "test": data.X_test}
        seconds = {}
        with PeakMemory() as peak:
            for part, rows in parts.items():
                if part == "val" and rows is None:
                    continue
                start = time.perf_counter()
                args = (X,) if rows is None else (rows.to(dtype), X)
                gram_fn(*args, out=folder / f"{part}.npy", checkpoint_dir=folder / f"tiles-{part}")   # not kept
                seconds[f"gram {part}"] = time.perf_counter() - start
            start = time.perf_counter()
            val = {} if data.X_val is None else {"K_val": folder / "val.npy", "y_val": data.y_val}
            fit = kernel_ridge(folder / "train.npy", data.y_train, folder / "test.npy", data.y_test,
                               lambdas=cfg["lambdas"], seed=cfg["seed"], solver="cg", tol=cfg["cg_tol"],
                               max_iter=cfg["cg_max_iter"], landmarks=cfg["landmarks"], **val)
            seconds["fit"] = time.perf_counter() - start
        gram_bytes = (folder / "train.npy").stat().st_size
        if not cfg["keep_grams"]:
            shutil.rmtree(folder)
        return {"accuracy": fit.accuracy, "fit": fit.to_dict(), "seconds": seconds, "peak_anon": peak.anon,
                "gram_bytes": gram_bytes}
    return run.cached(f"krr-{key}", compute)


def kernel_accuracy(K_train: torch.Tensor, K_test: torch.Tensor, data: datasets.Dataset, seed: int = 0) -> float:
    """Test accuracy of kernel ridge regression (one-vs-rest, ridge chosen on a validation split)."""
    return kernel_ridge(K_train, data.y_train, K_test, data.y_test, seed=seed).accuracy


KINDS = ("dnn", "dgn", "dlgn")
PRESETS = {
    "conv": {"C4GAP": models.C4GAP, "VCONV": models.VCONV, "GCONV": models.GCONV,
             "VGG16": lambda kind, **kw: models.VGG("vgg16", kind, **kw)},
    "res": {"ResNet20": lambda kind, **kw: models.resnet_preset((3, 3, 3), kind=kind, **kw),
            "ResNet110": lambda kind, **kw: models.resnet_preset((18, 18, 18), kind=kind, **kw)},
}


# ------------------------------------------------------------------------------------------ training experiments
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
    opts.setdefault("bias", cfg.get("bias", False))
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
    (or, when finished, loads the final weights and history without training).

    The checkpoint is keyed by what the training depends on: the model's architecture and initial weights
    (`model_fingerprint`), the data loaded, the optimiser settings and the seed. `epochs` may grow between
    runs (training continues); a checkpoint past `epochs` is discarded and the training starts again."""
    epochs = epochs or cfg["epochs"]
    options = dict(lr=cfg["lr"], batch_size=cfg["batch_size"], optimizer=cfg["optimizer"], seed=seed,
                   keep_best=keep_best, patience=cfg.get("patience"))
    folder = run.checkpoint_dir(key, depends={"model": model_fingerprint(model), "data": run.data_seen, **options})
    saved = folder / CHECKPOINT_FILE
    if saved.exists():
        try:
            reached = load_pt(saved).get("epoch", 0)
        except (UnreadableFile, AttributeError):
            reached = 0  # train() names and replaces an unreadable checkpoint
        if reached > epochs:
            saved.unlink()
            run.stages[key] = f"recomputed: its checkpoint is at epoch {reached} > epochs = {epochs}"
    return train(model, data, epochs=epochs, device=cfg.get("device", "cpu"), callback=callback,
                 progress=run.progress, checkpoint_dir=folder, **options)


def model_fingerprint(model: torch.nn.Module) -> str:
    """`npk.kernels.store.model_fingerprint` (architecture, options, weights) and which weights train."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return hashlib.sha256(f"{store.model_fingerprint(model)}{trainable}".encode()).hexdigest()


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
    """Mean +- std over runs of the test accuracy at the selected epoch ("selected", chosen on validation
    when the data has a split), the best test accuracy over epochs ("best", test-selected) and the final
    one, plus each run's record ("runs": selected epoch, epochs run, per-test-sample hits, wall time)."""
    return {"selected": mean_std([r.selected_test_acc for r in results]),
            "best": mean_std([r.best_test_acc for r in results]),
            "final": mean_std([r.final_test_acc for r in results]),
            "selected_on": results[0].selected_on,
            "runs": [{"selected_epoch": r.selected_epoch, "epochs_run": r.epochs_run,
                      "stopped_early": r.stopped_early, "selected_test_acc": r.selected_test_acc,
                      "best_test_acc": r.best_test_acc, "val_acc": r.val_acc, "test_acc": r.test_acc,
                      "test_hits": r.selected_test_correct, "wall_time_s": r.wall_time} for r in results]}


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
