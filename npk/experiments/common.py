"""Building blocks the experiments share: data, models, training, Grams and kernel accuracy."""
from __future__ import annotations

import copy

import torch

from .. import data as datasets
from .. import models
from ..fit import kernel_ridge
from ..kernels.infinite import infinite_ntk
from ..kernels.npk import npk_gram
from ..kernels.ntk import ntk_gram
from ..train import train
from .base import Run

FAMILIES = ("fc", "conv", "res")


def load_data(cfg: dict, flatten: bool, run: Run | None = None) -> datasets.Dataset:
    """The data set named by cfg (dataset, data_root, n_train, n_test, seed, binary); with `run`, its
    checksum goes into the run's results.json (provenance)."""
    data = datasets.load(cfg["dataset"], root=cfg.get("data_root"), n_train=cfg.get("n_train"),
                         n_test=cfg.get("n_test"), binary=cfg.get("binary"), seed=cfg.get("seed", 0),
                         flatten=flatten)
    if run is not None:
        sums = dict(run.dir.results.get("data_checksums", {}))
        sums[f"{data.name} binary={cfg.get('binary')}"] = data.checksum()
        run.dir.save_results(data_checksums=sums)
    return data


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
    """Train `model` in place (checkpointed under cache/<key>, so a rerun resumes); return its accuracies."""
    result = train(model, data, epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
                   optimizer=cfg["optimizer"], seed=cfg.get("seed", 0), device=cfg.get("device", "cpu"),
                   progress=run.progress,
                   checkpoint_dir=run.checkpoint_dir(f"train-{key}"))
    return {"best_test_acc": result.best_test_acc, "final_test_acc": result.final_test_acc,
            "best_epoch": result.best_epoch, "test_acc": result.test_acc, "train_acc": result.train_acc}


def grams(run: Run, key: str, gram_fn, data: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(K_train, K_test_train) of a kernel function gram_fn(X, Y=None), in float64, cached under `key`."""
    def compute():
        X, Xt = data.X_train.double(), data.X_test.double()
        return gram_fn(X), gram_fn(Xt, X)
    return run.cached(f"gram-{key}", compute)


def npk_fn(model: models.GatedNet, progress: bool = False):
    """The NPK of `model`'s current gates as a kernel function (X, Y=None) -> Gram."""
    return on_model_device(npk_gram, model, progress=progress)


def ntk_fn(model: models.GatedNet, progress: bool = False):
    """The empirical NTK (all parameters) of `model`'s current weights as a kernel function."""
    return on_model_device(ntk_gram, model, params="all", progress=progress)


def infinite_ntk_fn(depth: int):
    """The infinite-width NTK of a fully connected ReLU net with `depth` hidden layers, on flattened inputs."""
    return lambda X, Y=None: infinite_ntk(X.flatten(1), None if Y is None else Y.flatten(1), depth=depth)


def on_model_device(kernel, model: torch.nn.Module, **options):
    """kernel(frozen, X, Y, **options) on a float64 copy of `model` (later training must not change it),
    computed on the model's device and returned on the CPU."""
    frozen = copy.deepcopy(model).double().eval()
    device = next(frozen.parameters()).device

    def gram(X, Y=None):
        Y = None if Y is None else Y.to(device)
        return kernel(frozen, X.to(device), Y, **options).cpu()
    return gram


def kernel_accuracy(K_train: torch.Tensor, K_test: torch.Tensor, data: datasets.Dataset, seed: int = 0) -> float:
    """Test accuracy of kernel ridge regression (one-vs-rest, ridge chosen on a validation split)."""
    return kernel_ridge(K_train, data.y_train, K_test, data.y_test, seed=seed).accuracy
