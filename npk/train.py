"""Minibatch training of gated models: seeded, with a progress bar, per-epoch metrics and resumable checkpoints.

Only parameters with requires_grad train (the frozen gating network of an FLNPF / FRNPF model stays
fixed, weight decay included). Outputs and labels (integer class indices):

    d_out >= 2   labels 0 .. d_out - 1;  "ce": softmax cross-entropy;  "mse": ||f(x) - onehot(y)||^2;
                 prediction argmax_k f(x)_k
    d_out == 1   labels 0 / 1;           "ce": logistic loss (BCE with logits);  "mse": (f(x) - (2y - 1))^2;
                 prediction 1{f(x) > 0}

Losses are means over samples of the per-sample loss above. Train metrics are running means over each
epoch's minibatches (the weights change during the epoch); validation and test metrics are computed after
the epoch, in batches, under torch.no_grad.

Model selection. When `data` has a validation split (data.X_val / data.y_val, e.g. from
`Dataset.hold_out`), the *selected* epoch is the first evaluated epoch with the best validation accuracy,
and with `patience` training stops once that many evaluated epochs pass without a better one (`epochs` is
then the maximum). Without a validation split the selected epoch is the best test epoch, which is an
optimistic, test-selected figure: the result says which rule chose it (`TrainResult.selected_on`). The shuffling order comes from a torch.Generator seeded with `seed`,
so a given model, data and seed always give the same history.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .files import UnreadableFile, atomic_write, load_pt

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("ce", "mse")
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_KEYS = {"epoch", "model", "optimizer", "generator", "history", "config"}


@dataclass
class TrainResult:
    """Per-epoch history of one training run (epochs are numbered from 1)."""

    train_loss: list[float] = field(default_factory=list)   # one per epoch (running means)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)    # one per evaluated epoch
    test_acc: list[float] = field(default_factory=list)
    eval_epochs: list[int] = field(default_factory=list)    # the epochs the test metrics belong to
    val_loss: list[float] = field(default_factory=list)     # one per evaluated epoch, with a validation split
    val_acc: list[float] = field(default_factory=list)
    selected_test_correct: str = ""                          # hex of the packed per-test-sample hits, selected epoch
    stopped_early: bool = False                              # patience ran out before `epochs`
    wall_time: float = 0.0                                   # seconds spent training, over all resumptions
    best_state: dict | None = None                           # state_dict at selected_epoch (keep_best=True)

    @property
    def selected_on(self) -> str:
        """"validation" when a held-out split chose the epoch, else "test" (optimistic)."""
        return "validation" if self.val_acc else "test"

    @property
    def selected_epoch(self) -> int:
        """The first evaluated epoch with the best validation accuracy (best test accuracy without one)."""
        scores = self.val_acc or self.test_acc
        return self.eval_epochs[scores.index(max(scores))]

    @property
    def selected_test_acc(self) -> float:
        """Test accuracy at the selected epoch: the honest figure when selected_on == "validation"."""
        return self.test_acc[self.eval_epochs.index(self.selected_epoch)]

    @property
    def epochs_run(self) -> int:
        return self.eval_epochs[-1] if self.eval_epochs else 0

    @property
    def best_test_acc(self) -> float:
        return max(self.test_acc)

    @property
    def best_epoch(self) -> int:
        """The first evaluated epoch with the best test accuracy."""
        return self.eval_epochs[self.test_acc.index(self.best_test_acc)]

    @property
    def final_test_acc(self) -> float:
        return self.test_acc[-1]


def train(model: nn.Module, data, *, epochs: int, lr: float, batch_size: int = 32, optimizer: str = "sgd",
          momentum: float = 0.0, weight_decay: float = 0.0, loss: str = "ce", seed: int = 0,
          device: str | torch.device = "cpu", eval_every: int = 1, eval_batch_size: int = 64,
          keep_best: bool = False, patience: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
          callback: Callable[[int, nn.Module], object] | None = None, progress: bool = True) -> TrainResult:
    """Train `model` in place on data.X_train / data.y_train, evaluating on data.X_test / data.y_test.

    optimizer: "sgd" (with `momentum`) or "adam"; weight_decay is the optimizer's L2 term. Every
    `eval_every` epochs (and after the last) the validation split (data.X_val, when present) and the test
    set are evaluated; keep_best keeps a CPU copy of the state_dict at the selected epoch (FLNPF copies
    gates from it). patience: stop after this many evaluations without a better validation accuracy
    (needs a validation split; None trains all `epochs`). callback(epoch, model) runs
    before the first epoch (epoch 0, fresh runs only) and after every epoch.

    checkpoint_dir: after every epoch the model, optimizer, shuffling RNG and history are written
    atomically to checkpoint_dir/checkpoint.pt; a rerun with the same settings resumes from it and
    ends with the same weights as an uninterrupted run. `epochs` may grow between runs. An unreadable
    checkpoint is named in a warning, deleted, and training starts again from epoch 0.
    """
    _check_options(epochs, lr, batch_size, optimizer, loss, eval_every, eval_batch_size)
    X, y, X_test, y_test = _check_data(data)
    validation = _check_validation(data, patience)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    d_out = _check_labels(model, X, y, "train")
    _check_labels(model, X_test, y_test, "test")
    if validation is not None:
        _check_labels(model, *validation, "validation")
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    generator = torch.Generator().manual_seed(seed)
    config = dict(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                  loss=loss, seed=seed, n_train=len(X), n_test=len(X_test),
                  n_val=0 if validation is None else len(validation[0]),
                  trainable=[name for name, p in model.named_parameters() if p.requires_grad])
    path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    history, start = TrainResult(), 0
    state = _checkpoint(path)
    if state is not None:
        history, start = _resume(path, state, model, opt, generator, config, epochs)
    elif callback is not None:
        callback(0, model)

    n_batches = -(-len(X) // batch_size)
    bar = tqdm(total=(epochs - start) * n_batches, desc="train", unit="batch", disable=not progress)
    postfix: dict[str, str] = {}
    for epoch in range(start + 1, epochs + 1):
        if _patience_ran_out(history, patience):
            history.stopped_early = True
            break
        t0 = time.perf_counter()
        postfix["epoch"] = str(epoch)
        train_loss, train_acc = _epoch(model, opt, X, y, batch_size, loss, d_out, generator, bar, postfix)
        history.train_loss.append(train_loss)
        history.train_acc.append(train_acc)
        if epoch % eval_every == 0 or epoch == epochs:
            if validation is not None:
                val_loss, val_acc = evaluate(model, *validation, loss=loss, batch_size=eval_batch_size)
                history.val_loss.append(val_loss)
                history.val_acc.append(val_acc)
                postfix["val"] = f"{val_acc:.4f}"
            test_loss, hits = _loss_and_hits(model, X_test, y_test, loss, eval_batch_size)
            history.test_loss.append(test_loss)
            history.test_acc.append(float(hits.mean()))
            history.eval_epochs.append(epoch)
            if history.selected_epoch == epoch:
                history.selected_test_correct = pack_hits(hits)
                if keep_best:
                    history.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            postfix["test"] = f"{history.test_acc[-1]:.4f}"
        history.wall_time += time.perf_counter() - t0
        if path is not None:
            _save(path, dict(epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(),
                             generator=generator.get_state(), history=dataclasses.asdict(history), config=config))
        if callback is not None:
            callback(epoch, model)
    bar.close()
    return history


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, loss: str = "ce",
             batch_size: int = 1024) -> tuple[float, float]:
    """(mean loss, accuracy) of `model` on (X, y), computed in batches under torch.no_grad."""
    mean_loss, hits = _loss_and_hits(model, X, y, loss, batch_size)
    return mean_loss, float(hits.mean())


@torch.no_grad()
def _loss_and_hits(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: str,
                   batch_size: int) -> tuple[float, np.ndarray]:
    """(mean loss, per-sample correctness as a bool array) of `model` on (X, y), in eval mode."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    d_out = _check_labels(model, X, y, "evaluation")
    was_training = model.training
    model.eval()
    total_loss, hits = 0.0, []
    for i in range(0, len(X), batch_size):
        out = model(_to_model(model, X[i:i + batch_size]))
        yb = y[i:i + batch_size].to(out.device)
        total_loss += float(_loss_sum(out, yb, loss, d_out))
        hits.append((_predictions(out, d_out) == yb).cpu().numpy())
    model.train(was_training)
    return total_loss / len(X), np.concatenate(hits)


def pack_hits(hits: np.ndarray) -> str:
    """Per-sample correctness (bool array) as a hex string of packed bits: 10,000 samples in 2,500 chars."""
    return np.packbits(np.asarray(hits, dtype=bool)).tobytes().hex()


def unpack_hits(text: str, n: int) -> np.ndarray:
    """The bool array of `n` samples that `pack_hits` wrote as `text`."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """The fraction of (X, y) that `model` classifies correctly (prediction rule in the module doc)."""
    return evaluate(model, X, y, batch_size=batch_size)[1]


# ------------------------------------------------------------------------------------------ one epoch
def _epoch(model, opt, X, y, batch_size, loss, d_out, generator, bar, postfix) -> tuple[float, float]:
    """One pass over (X, y) in a seeded random order; returns the running (mean loss, accuracy)."""
    model.train()
    order = torch.randperm(len(X), generator=generator)
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per batch
    total_correct = torch.zeros((), dtype=torch.float64, device=device)
    for b, i in enumerate(range(0, len(X), batch_size)):
        idx = order[i:i + batch_size]
        xb = _to_model(model, X[idx])
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        yb = y[idx].to(out.device)
        batch_loss = _loss_sum(out, yb, loss, d_out)
        (batch_loss / len(idx)).backward()
        opt.step()
        total_loss += batch_loss.detach()
        total_correct += _n_correct(out, yb, d_out)
        bar.update()
        if b % 20 == 0:
            postfix["acc"] = f"{float(total_correct) / (i + len(idx)):.4f}"
            bar.set_postfix(postfix, refresh=False)
    mean_loss = float(total_loss) / len(X)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"the training loss became {mean_loss} in epoch {postfix['epoch']}; "
                                 f"lower the learning rate")
    return mean_loss, float(total_correct) / len(X)


def _loss_sum(out: torch.Tensor, y: torch.Tensor, loss: str, d_out: int) -> torch.Tensor:
    """Sum over the batch of the per-sample loss (rules in the module doc)."""
    if d_out == 1:
        z, t = out[:, 0], y.to(out.dtype)
        if loss == "ce":
            return F.binary_cross_entropy_with_logits(z, t, reduction="sum")
        return ((z - (2 * t - 1)) ** 2).sum()
    if loss == "ce":
        return F.cross_entropy(out, y, reduction="sum")
    return ((out - F.one_hot(y, d_out).to(out.dtype)) ** 2).sum()


def _predictions(out: torch.Tensor, d_out: int) -> torch.Tensor:
    return (out[:, 0] > 0).long() if d_out == 1 else out.argmax(1)


def _n_correct(out: torch.Tensor, y: torch.Tensor, d_out: int) -> torch.Tensor:
    return (_predictions(out, d_out) == y).sum().to(torch.float64)


def _to_model(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """X on the model's device, in its dtype."""
    p = next(model.parameters())
    return X.to(device=p.device, dtype=p.dtype)


# ------------------------------------------------------------------------------------------ checks
def _check_options(epochs, lr, batch_size, optimizer, loss, eval_every, eval_batch_size) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    for name, value in dict(epochs=epochs, batch_size=batch_size, eval_every=eval_every,
                            eval_batch_size=eval_batch_size).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")


def _check_data(data) -> tuple[torch.Tensor, ...]:
    """(X_train, y_train, X_test, y_test) as tensors; labels must be integer class indices."""
    names = ("X_train", "y_train", "X_test", "y_test")
    missing = [n for n in names if not hasattr(data, n)]
    if missing:
        raise TypeError(f"data must have attributes {', '.join(names)} (e.g. an npk.data.Dataset); "
                        f"{type(data).__name__} lacks {', '.join(missing)}")
    X, y, X_test, y_test = (torch.as_tensor(getattr(data, n)) for n in names)
    for split, (a, b) in dict(train=(X, y), test=(X_test, y_test)).items():
        if b.dim() != 1 or len(a) != len(b) or len(a) == 0:
            raise ValueError(f"{split}: need X of shape (N, ...) and labels of shape (N,) with N > 0, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
    return X, y, X_test, y_test


def _check_validation(data, patience) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(X_val, y_val) when `data` carries a validation split, else None; patience needs one."""
    X_val, y_val = getattr(data, "X_val", None), getattr(data, "y_val", None)
    if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
        raise ValueError(f"patience must be None or a positive int (evaluations without a better validation "
                         f"accuracy before stopping), got {patience!r}")
    if X_val is None or y_val is None:
        if patience is not None:
            raise ValueError("patience needs a validation split: hold one out with Dataset.hold_out(fraction) "
                             "(config key val_fraction) or pass patience=None")
        return None
    X_val, y_val = torch.as_tensor(X_val), torch.as_tensor(y_val)
    if y_val.dim() != 1 or len(X_val) != len(y_val) or len(X_val) == 0:
        raise ValueError(f"validation: need X_val of shape (N, ...) and y_val of shape (N,) with N > 0, got "
                         f"{tuple(X_val.shape)} and {tuple(y_val.shape)}")
    return X_val, y_val


def _patience_ran_out(history: TrainResult, patience: int | None) -> bool:
    """True once `patience` evaluations have passed since the selected (best validation) epoch."""
    if patience is None or not history.val_acc:
        return False
    return len(history.eval_epochs) - 1 - history.eval_epochs.index(history.selected_epoch) >= patience


def _check_labels(model: nn.Module, X: torch.Tensor, y: torch.Tensor, split: str) -> int:
    """The model's output width d_out, after checking that y holds valid class indices for it."""
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1 or len(y) != len(X) or not len(y):
        raise ValueError(f"{split} labels must be an integer tensor of class indices of shape ({len(X)},), "
                         f"got dtype {y.dtype} and shape {tuple(y.shape)}")
    with torch.no_grad():
        out = model(_to_model(model, X[:1]))
    d_out = out.shape[1]
    n_classes = 2 if d_out == 1 else d_out
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        rule = ("a model with one output takes labels 0 / 1" if d_out == 1
                else f"a model with d_out = {d_out} outputs takes labels 0 .. {d_out - 1}")
        raise ValueError(f"{split} labels range over {lo} .. {hi}, but {rule}; relabel the classes "
                         f"(e.g. npk.data.load(..., classes=...)) or build the model with d_out = the number of classes")
    return d_out


# ------------------------------------------------------------------------------------------ checkpoints
def _save(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _checkpoint(path: Path | None) -> dict | None:
    """The checkpoint saved at `path`; None when there is none, or when it is unreadable (then it is
    deleted with a warning naming it, and training starts again from epoch 0)."""
    if path is None or not path.exists():
        return None
    try:
        state = load_pt(path)
        if isinstance(state, dict) and CHECKPOINT_KEYS <= set(state):
            return state
        problem = f"{path} is not an npk training checkpoint (it lacks {sorted(CHECKPOINT_KEYS)})"
    except UnreadableFile as e:
        problem = str(e)
    warnings.warn(f"{problem}; deleting it and training from epoch 0", stacklevel=3)
    path.unlink()
    return None


def _resume(path: Path, state: dict, model, opt, generator, config: dict, epochs: int) -> tuple[TrainResult, int]:
    """Load the checkpoint `state` (read from `path`) into model, optimizer and RNG; return its history and epoch."""
    changed = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if changed:
        raise ValueError(f"{path} was written with other settings (checkpoint vs now: {changed}); "
                         f"rerun with the same settings or use another checkpoint_dir")
    if state["epoch"] > epochs:
        raise ValueError(f"{path} is already at epoch {state['epoch']} > epochs = {epochs}; "
                         f"ask for at least {state['epoch']} epochs or use another checkpoint_dir")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return TrainResult(**state["history"]), state["epoch"]
