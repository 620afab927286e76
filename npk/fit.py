"""Kernel machines on precomputed Gram matrices: kernel ridge, kernel SVM, GP regression.

Inputs are Grams, not features: K_train (N, N) between training points and K_test (M, N) between test
and training points (torch tensors or numpy arrays; computed in float64 on K_train's device).

Classification targets (ridge, GP): labels y with C classes become one-vs-rest targets
Y = one-hot(y) - 1/C (C columns, rows sum to zero; two classes give +-1/2), and the prediction is the
class of the largest output. Subtracting 1/C shifts every column's output by the same amount, so it
changes the mse but not the predicted class.

Hyperparameters are chosen on a validation split: a seeded, class-stratified `val_fraction` of the
training set is held out, every grid value is fitted on the rest and scored on it (highest accuracy;
ties go to the lower validation mse for ridge, the smaller C for the SVM), and the chosen value is refit
on the whole training set. Grid values are relative to the Gram's scale s = tr(K)/N (the mean diagonal),
so that rescaling K does not change the result:
    ridge   lambda = r * s            (r in `lambdas`, default RIDGE_GRID)
    SVM     C      = c / s            (c in `Cs`, default SVM_GRID; SVC with K and C is SVC with aK and C/a)
A grid of one value skips validation.

Ridge solvers: alpha(lambda) = (K + lambda I)^{-1} Y by a float64 Cholesky factorisation per lambda, or by
one eigendecomposition K = U diag(s) U^T, alpha(lambda) = U diag(1 / (s + lambda)) U^T Y, each further
lambda costing matrix products only. One eigendecomposition costs about as much as EIGH_BREAK_EVEN
Cholesky factorisations on a CPU (LAPACK syevd vs potrf), so solver="auto" uses it only for longer grids.

Grams larger than memory (solver="cg", `npk.solvers`): K_train and K_test stay on disk (`.npy` paths or
memmaps) and are read in row blocks; every ridge value of the grid and every one-vs-rest column is solved
by Nyström-preconditioned CG in the same passes over the Gram, the validation fit on the rows of the split
(no sub-Gram is formed), and the test scores K_test alpha are one streamed pass. solver="auto" takes this
path when the dense one (float64 copies of the Grams, `solvers.dense_bytes`) would not fit the memory
available. The SVM and the GP stay dense, and refuse a Gram that does not fit with a MemoryError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import os
import warnings

import numpy as np
import torch

from . import solvers
from .kernels.gram import available_memory, format_bytes
from .kernels.linalg import as_float64, check_gram, check_psd, cholesky, label_codes, shifted
from .validate import finite_values, nonempty_samples

RIDGE_GRID = tuple(10.0 ** np.arange(-6, 2))   # lambda / (tr K / N)
SVM_GRID = tuple(10.0 ** np.arange(-2, 5))     # C * (tr K / N)
EIGH_BREAK_EVEN = 20
SOLVERS = ("auto", "cholesky", "eigh", "cg")
METHODS = ("ridge", "svm", "gp")


@dataclass
class FitResult:
    """What every fit returns.

    param is the chosen hyperparameter as the solver used it (lambda, C or the noise variance) and
    param_relative the same in units of the Gram's scale (see the module docstring). scores are the
    (M, C) outputs (ridge: regression outputs; GP: posterior mean; SVM: one-vs-rest decision values,
    (-d, d) for two classes), predictions the predicted labels (original label values). accuracy and mse
    need y_test (mse: mean over all entries of (scores - targets)^2; None for the SVM). validation has
    one row per grid value: relative (the grid value), accuracy, mse (validation split). solver says how
    ridge was solved: {"name"} and, for "cg", tol, max_iter, landmarks, passes over the Gram, and per
    stage ("validation": one entry per grid value; "final") the iterations, residuals ||r||/||y|| and
    whether each converged.
    """

    method: str
    param_name: str
    param: float
    param_relative: float
    scores: np.ndarray
    predictions: np.ndarray | None
    classes: np.ndarray | None
    accuracy: float | None = None
    mse: float | None = None
    validation: list = field(default_factory=list)
    variance: np.ndarray | None = None
    solver: dict | None = None

    def to_dict(self, arrays: bool = False) -> dict:
        """JSON-ready summary (numbers only; with arrays=True also scores, predictions, variance as lists)."""
        out = {"method": self.method, "param_name": self.param_name, "param": self.param,
               "param_relative": self.param_relative, "accuracy": self.accuracy, "mse": self.mse,
               "validation": self.validation, "solver": self.solver}
        if arrays:
            out.update({k: None if v is None else v.tolist() for k, v in
                        (("scores", self.scores), ("predictions", self.predictions), ("variance", self.variance))})
        return out


@dataclass
class _Problem:
    """Checked inputs of a classification fit: Grams in float64, labels as codes 0..C-1."""
    K: torch.Tensor
    K_test: torch.Tensor
    codes: torch.Tensor
    classes: np.ndarray
    test_codes: torch.Tensor | None

    @property
    def scale(self) -> float:
        return _scale(self.K)

    def targets(self, codes: torch.Tensor) -> torch.Tensor:
        return _targets(codes, len(self.classes)).to(self.K)


def _targets(codes: torch.Tensor, C: int) -> torch.Tensor:
    """One-vs-rest targets one-hot(codes) - 1/C, float64."""
    return torch.nn.functional.one_hot(codes, C).double() - 1.0 / C


def _scale(K: torch.Tensor) -> float:
    return _mean_diagonal(torch.diagonal(K))


def _mean_diagonal(diag) -> float:
    s = float(diag.mean())
    if s <= 0:
        raise ValueError(f"the Gram's mean diagonal tr(K)/N must be positive, got {s:.4g} (an all-zero Gram?)")
    return s


def _grams(K_train, K_test, test_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """K_train checked square, symmetric and PSD; K_test checked (M, N); both float64 on K_train's device."""
    nonempty_samples("K_train", torch.as_tensor(K_train))
    K = check_gram(K_train, "K_train")
    check_psd(K, "K_train")
    return K, _check_cross(K_test, K, test_name).to(K.device)


def _problem(K_train, y_train, K_test, y_test, test_name: str = "K_test", entry: str = "kernel_ridge") -> _Problem:
    _require_dense(K_train, K_test, entry)
    K, K_test = _grams(_loaded(K_train), _loaded(K_test), test_name)
    classes, codes, test_codes = _labels(y_train, y_test, len(K), len(K_test))
    return _Problem(K, K_test, codes.to(K.device), classes, test_codes)


def _labels(y_train, y_test, n: int, m: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """(classes, codes of y_train, codes of y_test or None), checked against n training and m test points."""
    classes, codes = label_codes(y_train, "y_train")
    if len(codes) != n:
        raise ValueError(f"y_train has {len(codes)} labels but K_train is {n} x {n}: one label per training point")
    if len(classes) < 2:
        raise ValueError(f"y_train needs at least two classes, got only {classes.tolist()}")
    return classes, codes, None if y_test is None else _test_codes(y_test, classes, m)


def _check_cross(K_test, K: torch.Tensor, name: str) -> torch.Tensor:
    K_test = as_float64(K_test, name)
    _cross_shape(tuple(K_test.shape), len(K), name)
    return K_test


def _cross_shape(shape: tuple, n: int, name: str) -> None:
    if shape[1] != n:
        hint = " (is it K(train, test)? pass its transpose)" if shape[0] == n else ""
        raise ValueError(f"{name} must be (M, N) = kernel between test and training points with N = {n}, "
                         f"got shape {shape}{hint}")


def _loaded(K):
    """K, with a .npy path or a memmap read into memory as float64 (the dense path)."""
    if isinstance(K, (str, os.PathLike)):
        K = solvers.StreamedGram(K).open()
    return np.array(K, dtype=np.float64) if isinstance(K, np.memmap) else K


def _dense_fits(K_train, K_test) -> tuple[bool, int, int]:
    """(fits, bytes needed, bytes available) for the dense path on these Grams."""
    need = solvers.dense_bytes(solvers.gram_shape(K_train), solvers.gram_shape(K_test))
    have = available_memory()
    return need <= have, need, have


def _require_dense(K_train, K_test, entry: str) -> None:
    fits, need, have = _dense_fits(K_train, K_test)
    if not fits:
        raise MemoryError(f"{entry} works on the Grams in memory (dense, float64) and needs about {format_bytes(need)}, "
                          f"but only {format_bytes(have)} is available; kernel_ridge(..., solver='cg') streams a "
                          f"Gram from disk (a .npy path or memmap)")


def _test_codes(y_test, classes: np.ndarray, m: int) -> torch.Tensor:
    test_classes, codes = label_codes(y_test, "y_test")
    if len(codes) != m:
        raise ValueError(f"y_test has {len(codes)} labels but K_test has {m} rows: one label per test point")
    unknown = np.setdiff1d(test_classes, classes)
    if len(unknown):
        raise ValueError(f"y_test has labels {unknown.tolist()} that y_train lacks (classes {classes.tolist()}); "
                         f"a classifier cannot predict them: drop those test points")
    return torch.as_tensor(np.searchsorted(classes, test_classes)[codes.numpy()])


def _metrics(scores: torch.Tensor, codes: torch.Tensor | None, Y: torch.Tensor | None) -> tuple:
    """(accuracy, mse) of (M, C) scores against label codes and targets Y (None where not given)."""
    if codes is None:
        return None, None
    acc = (scores.argmax(1).cpu() == codes.cpu()).double().mean().item()
    mse = None if Y is None else ((scores - Y) ** 2).mean().item()
    return acc, mse


def _split(codes: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded class-stratified split of range(N) into (fit, validation) indices."""
    from sklearn.model_selection import train_test_split
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    c = codes.cpu().numpy()
    stratify = c if np.bincount(c).min() >= 2 else None
    try:
        fit, val = train_test_split(np.arange(len(c)), test_size=val_fraction, random_state=seed, stratify=stratify)
    except ValueError as e:
        raise ValueError(f"cannot hold out val_fraction={val_fraction} of {len(c)} training points for validation "
                         f"({e}); use more training points, another val_fraction, or a grid of one value") from e
    return torch.as_tensor(np.sort(fit)), torch.as_tensor(np.sort(val))


def _grid(values, default: Sequence[float], name: str) -> np.ndarray:
    """The grid as sorted, distinct positive floats (a ValueError otherwise)."""
    g = np.atleast_1d(np.asarray(default if values is None else values, dtype=np.float64))
    if g.ndim != 1 or len(g) == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError(f"{name} must be positive finite numbers (relative to tr(K)/N), got {values!r}")
    return np.unique(g)


def _search(codes: torch.Tensor, targets: Callable, grid: np.ndarray, val_fraction: float, seed: int,
            scorer: Callable[[torch.Tensor, torch.Tensor, np.ndarray], list], use_mse: bool) -> tuple[float, list]:
    """Pick a relative grid value on a validation split; return it with one row per grid value.

    codes are the training labels' codes, targets(codes) their targets. scorer(fit, val, grid) returns the
    (n_val, C) validation scores for every grid value, or None for a value that cannot be chosen (a CG
    solve that did not converge). The best row has the highest accuracy, then (use_mse) the lowest mse,
    then the smallest value.
    """
    if len(grid) == 1:
        return float(grid[0]), []
    fit, val = (i.to(codes.device) for i in _split(codes, val_fraction, seed))
    rows = _rows(grid, scorer(fit, val, grid), codes[val], targets, use_mse)
    return rows[_best(rows)]["relative"], rows


def _rows(grid: np.ndarray, scores: list, codes: torch.Tensor, targets: Callable, use_mse: bool) -> list:
    """One validation row per grid value: relative value, accuracy, mse (None where scores is None)."""
    rows = []
    for r, s in zip(grid, scores):
        acc, mse = (None, None) if s is None else _metrics(s, codes, targets(codes) if use_mse else None)
        rows.append({"relative": float(r), "accuracy": acc, "mse": mse})
    return rows


def _best(rows: list) -> int:
    """Index of the best row: highest accuracy, then lowest mse, then the smallest value."""
    ok = [i for i, row in enumerate(rows) if row["accuracy"] is not None]
    if not ok:
        raise ValueError("no grid value could be fitted on the validation split (no CG solve converged): raise "
                         "max_iter or landmarks, or use larger lambdas")
    return max(ok, key=lambda i: (rows[i]["accuracy"], -(rows[i]["mse"] or 0.0), -i))


# ------------------------------------------------------------------------------------------ ridge
def ridge_solve(K, Y, lam: float) -> torch.Tensor:
    """alpha = (K + lam I)^{-1} Y by a float64 Cholesky factorisation (K symmetric PSD, Y (N,) or (N, k))."""
    K = as_float64(K, "K")
    return _cholesky_solve(K, torch.as_tensor(Y, dtype=torch.float64, device=K.device), lam)


def _cholesky_solve(K: torch.Tensor, Y: torch.Tensor, lam: float) -> torch.Tensor:
    L = cholesky(shifted(K, lam), f"K + {lam:.3g} I; use a larger lambda or compute K in float64")
    return torch.cholesky_solve(Y.reshape(len(K), -1), L).reshape(Y.shape)


def ridge_path(K, Y, lambdas: Sequence[float], solver: str = "auto") -> torch.Tensor:
    """alpha(lambda) = (K + lambda I)^{-1} Y for every lambda: a (len(lambdas), *Y.shape) tensor.

    solver "eigh": one eigendecomposition K = U diag(s) U^T, then alpha = U diag(1/(s + lambda)) U^T Y;
    "cholesky": one factorisation per lambda; "auto": eigh for more than EIGH_BREAK_EVEN lambdas.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    K = as_float64(K, "K")
    Y = torch.as_tensor(Y, dtype=torch.float64, device=K.device)
    lambdas = [float(lam) for lam in lambdas]
    if solver == "cholesky" or (solver == "auto" and len(lambdas) <= EIGH_BREAK_EVEN):
        return torch.stack([_cholesky_solve(K, Y, lam) for lam in lambdas])
    s, U = torch.linalg.eigh(K)
    UtY = U.T @ Y.reshape(len(K), -1)
    return torch.stack([U @ (UtY / (s + lam)[:, None]) for lam in lambdas]).reshape(len(lambdas), *Y.shape)


def kernel_ridge(K_train, y_train, K_test, y_test=None, lambdas: Sequence[float] | None = None,
                 val_fraction: float = 0.2, seed: int = 0, solver: str = "auto", *, K_val=None, y_val=None,
                 tol: float = solvers.TOL, max_iter: int = solvers.MAX_ITER,
                 landmarks: int = solvers.LANDMARKS) -> FitResult:
    """Kernel ridge regression on one-vs-rest targets: scores = K_test (K_train + lambda I)^{-1} Y.

    Args:
        K_train (N, N), K_test (M, N): tensors, arrays, np.memmap or .npy paths.
        lambdas: relative to tr(K)/N (default RIDGE_GRID), chosen on a validation split.
        K_val (V, N), y_val: an explicit validation set (e.g. the one a network's epoch was chosen on):
            every lambda is fitted on all of K_train and scored on it, and the chosen fit is kept (no
            refit); without it, val_fraction of the training points are held out and the chosen
            lambda is refit on all of them.
        solver: "cholesky" / "eigh" (dense: `ridge_path` for the grid, one Cholesky solve for the refit),
            "cg" (streamed, `npk.solvers.ridge_cg`: the Grams are read in row blocks, never copied), or
            "auto": "cg" when the dense path would not fit the memory available.
        tol, max_iter, landmarks: of "cg": relative residual, iterations (= passes over the Gram), Nyström rank.

    Example:
        >>> r = kernel_ridge("K_train.npy", y_train, "K_test.npy", y_test, solver="cg")   # doctest: +SKIP
        >>> r.accuracy, r.solver["final"]["iterations"]                                     # doctest: +SKIP
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    grid = _grid(lambdas, RIDGE_GRID, "lambdas")
    if (K_val is None) != (y_val is None):
        raise ValueError("K_val and y_val go together: pass both (an explicit validation set) or neither")
    if solver == "cg" or (solver == "auto" and not _dense_fits(K_train, K_test)[0]):
        return _kernel_ridge_cg(K_train, y_train, K_test, y_test, grid, val_fraction, seed,
                                dict(tol=tol, max_iter=max_iter, landmarks=landmarks, seed=seed), K_val, y_val)
    P = _problem(K_train, y_train, K_test, y_test)
    if K_val is not None:
        K_val = _check_cross(_loaded(K_val), P.K, "K_val").to(P.K.device)
        alphas = ridge_path(P.K, P.targets(P.codes), grid * P.scale, solver)
        rows = _rows(grid, K_val @ alphas, _test_codes(y_val, P.classes, len(K_val)).to(P.K.device), P.targets, True)
        r, alpha = grid[_best(rows)], alphas[_best(rows)]
    else:
        def scorer(fit, val, grid):
            Kf = P.K[fit][:, fit]
            alphas = ridge_path(Kf, P.targets(P.codes[fit]), grid * _scale(Kf), solver)
            return P.K[val][:, fit] @ alphas

        r, rows = _search(P.codes, P.targets, grid, val_fraction, seed, scorer, use_mse=True)
        alpha = _cholesky_solve(P.K, P.targets(P.codes), r * P.scale)
    lam = r * P.scale
    scores = P.K_test @ alpha
    Y_test = None if P.test_codes is None else P.targets(P.test_codes.to(P.K.device))
    return _result(P.classes, P.test_codes, "ridge", "lambda", lam, r, scores, rows, Y_test,
                   solver={"name": solver})


def _kernel_ridge_cg(K_train, y_train, K_test, y_test, grid: np.ndarray, val_fraction: float, seed: int,
                     options: dict, K_val=None, y_val=None) -> FitResult:
    """kernel_ridge by `solvers.ridge_cg` on the streamed Grams: the grid on the fit rows of the validation
    split (all grid values in the same passes), validation scores K[val, fit] alpha in one pass, the
    chosen value refit on all rows, test scores K_test alpha in one pass. With K_val: the grid on all rows,
    validation scores K_val alpha in one pass, no refit."""
    G, Gt = solvers.StreamedGram(K_train, "K_train"), solvers.StreamedGram(K_test, "K_test")
    N = G.shape[0]
    if G.shape[1] != N:
        raise ValueError(f"K_train must be a square (N, N) Gram matrix of one sample set, got shape {G.shape}")
    _cross_shape(Gt.shape, N, "K_test")
    classes, codes, test_codes = _labels(y_train, y_test, N, Gt.shape[0])
    C = len(classes)
    diag = G.diagonal()
    info = {"name": "cg", **{k: options[k] for k in ("tol", "max_iter", "landmarks")}}
    if K_val is not None:
        Gv = solvers.StreamedGram(K_val, "K_val")
        _cross_shape(Gv.shape, N, "K_val")
        val_codes = _test_codes(y_val, classes, Gv.shape[0])
        alphas, cg = solvers.ridge_cg(G, _targets(codes, C), grid * _mean_diagonal(diag), **options)
        info["validation"] = cg.to_dict()
        scores = Gv.matmul(alphas.permute(1, 0, 2).reshape(N, -1)).reshape(-1, len(grid), C)
        rows = _rows(grid, _converged(scores, cg), val_codes, lambda c: _targets(c, C), True)
        best = _best(rows)
        scores = Gt.matmul(alphas[best])
        info["passes"] = G.passes + Gv.passes + Gt.passes
        return _cg_result(classes, test_codes, grid[best] * _mean_diagonal(diag), grid[best], scores, rows, info)

    def scorer(fit, val, grid):
        f = fit.numpy()
        alphas, cg = solvers.ridge_cg(G, _targets(codes[fit], C), grid * _mean_diagonal(diag[f]), rows=f, **options)
        info["validation"] = cg.to_dict()
        flat = alphas.permute(1, 0, 2).reshape(len(f), -1)                    # (n_fit, L C)
        scores = G.matmul(solvers.padded(flat, f, N), val.numpy()).reshape(len(val), len(grid), C)
        return _converged(scores, cg)

    r, rows = _search(codes, lambda c: _targets(c, C), grid, val_fraction, seed, scorer, use_mse=True)
    lam = r * _mean_diagonal(diag)
    alpha, cg = solvers.ridge_cg(G, _targets(codes, C), [lam], **options)
    info["final"] = cg.to_dict()
    if not cg.converged[0]:
        warnings.warn(f"kernel_ridge(solver='cg'): the refit at lambda {lam:.3g} stopped at relative residual "
                      f"{cg.residuals[0]:.3g} > tol {cg.tol:g} after {cg.max_iter} iterations; raise max_iter or "
                      f"landmarks", RuntimeWarning)
    scores = Gt.matmul(alpha[0])
    info["passes"] = G.passes + Gt.passes
    return _cg_result(classes, test_codes, lam, r, scores, rows, info)


def _converged(scores: torch.Tensor, cg: solvers.CGInfo) -> list:
    """The (n, C) scores of each ridge value from (n, L, C), None where its CG did not converge."""
    return [s if ok else None for s, ok in zip(scores.unbind(1), cg.converged)]


def _cg_result(classes, test_codes, lam: float, relative: float, scores: torch.Tensor, rows: list, info: dict):
    Y_test = None if test_codes is None else _targets(test_codes, len(classes))
    return _result(classes, test_codes, "ridge", "lambda", lam, relative, scores, rows, Y_test, solver=info)


def _result(classes: np.ndarray, test_codes: torch.Tensor | None, method: str, name: str, value: float,
            relative: float, scores: torch.Tensor, rows: list, Y_test: torch.Tensor | None,
            variance: torch.Tensor | None = None, solver: dict | None = None) -> FitResult:
    acc, mse = _metrics(scores, test_codes, Y_test)
    return FitResult(method=method, param_name=name, param=float(value), param_relative=float(relative),
                     scores=scores.cpu().numpy(), predictions=classes[scores.argmax(1).cpu().numpy()],
                     classes=classes, accuracy=acc, mse=mse, validation=rows,
                     variance=None if variance is None else variance.cpu().numpy(), solver=solver)


# ------------------------------------------------------------------------------------------ SVM
def _svc(K: torch.Tensor, codes: torch.Tensor, C: float):
    from sklearn.svm import SVC
    return SVC(kernel="precomputed", C=C, decision_function_shape="ovr", break_ties=True).fit(K.cpu().numpy(), codes.cpu().numpy())


def _decision(svc, K_test: torch.Tensor) -> torch.Tensor:
    """(M, C) one-vs-rest decision values of a fitted SVC; (-d, d) for two classes."""
    d = torch.as_tensor(svc.decision_function(K_test.cpu().numpy()), dtype=torch.float64)
    return torch.stack([-d, d], 1) if d.dim() == 1 else d


def kernel_svm(K_train, y_train, K_test, y_test=None, Cs: Sequence[float] | None = None,
               val_fraction: float = 0.2, seed: int = 0) -> FitResult:
    """scikit-learn's SVC(kernel="precomputed", break_ties=True): one-vs-one inside, one-vs-rest decision
    values, predicting their argmax. C is relative to N / tr(K) (default SVM_GRID), chosen on a validation
    split."""
    P = _problem(K_train, y_train, K_test, y_test, entry="kernel_svm")
    grid = _grid(Cs, SVM_GRID, "Cs")

    def scorer(fit, val, grid):
        Kf = P.K[fit][:, fit]
        return [_decision(_svc(Kf, P.codes[fit], c / _scale(Kf)), P.K[val][:, fit]) for c in grid]

    c, rows = _search(P.codes, P.targets, grid, val_fraction, seed, scorer, use_mse=False)
    C = c / P.scale
    scores = _decision(_svc(P.K, P.codes, C), P.K_test)
    return _result(P.classes, P.test_codes, "svm", "C", C, c, scores, rows, None)


# ------------------------------------------------------------------------------------------ GP
def gp_posterior(K_train, y_train, K_test_train, k_test_diag, noise: float, y_test=None) -> FitResult:
    """Gaussian-process regression posterior of the latent function at the test points.

        mean     = K_* (K + noise I)^{-1} Y
        variance = k_** - diag(K_* (K + noise I)^{-1} K_*^T)     (add `noise` for the variance of a new y)

    K_* = K_test_train (M, N), k_** = k_test_diag (M,) = k(x, x) at the test points, noise the observation
    noise variance (>= 0; 0 needs a positive definite K). Integer labels y become one-vs-rest targets and
    predictions; float targets (N,) or (N, k) are regressed as given (predictions None, mse against a
    float y_test). Variances below zero by round-off (> -1e-8 max k_**) are set to 0; more negative ones
    mean k_test_diag is not the diagonal of the same kernel, and raise an error.
    """
    y = y_train if isinstance(y_train, torch.Tensor) else torch.as_tensor(np.asarray(y_train))
    if not y.is_floating_point():
        P = _problem(K_train, y_train, K_test_train, y_test, "K_test_train", entry="gp_posterior")
        mean, var = _gp(P.K, P.K_test, k_test_diag, P.targets(P.codes), noise)
        Y_test = None if P.test_codes is None else P.targets(P.test_codes.to(P.K.device))
        return _result(P.classes, P.test_codes, "gp", "noise", noise, noise / P.scale, mean, [], Y_test, var)
    _require_dense(K_train, K_test_train, "gp_posterior")
    K, Ks = _grams(_loaded(K_train), _loaded(K_test_train), "K_test_train")
    y = y.to(device=K.device, dtype=torch.float64)
    finite_values("y_train", y)
    if len(y) != len(K) or y.dim() > 2:
        raise ValueError(f"float y_train must be (N,) or (N, k) with N = {len(K)}, got shape {tuple(y.shape)}")
    mean, var = _gp(K, Ks, k_test_diag, y.reshape(len(K), -1), noise)
    mean = mean.reshape(len(Ks), *y.shape[1:])
    mse = None
    if y_test is not None:
        yt = torch.as_tensor(np.asarray(y_test), dtype=torch.float64, device=K.device)
        if yt.shape != mean.shape:
            raise ValueError(f"y_test must have shape {tuple(mean.shape)}, got {tuple(yt.shape)}")
        mse = ((mean - yt) ** 2).mean().item()
    return FitResult(method="gp", param_name="noise", param=float(noise), param_relative=float(noise) / _scale(K),
                     scores=mean.cpu().numpy(), predictions=None, classes=None, mse=mse, variance=var.cpu().numpy())


def _gp(K: torch.Tensor, Ks: torch.Tensor, k_test_diag, Y: torch.Tensor, noise: float) -> tuple:
    """(posterior mean (M, k), latent variance (M,)) by one Cholesky factorisation of K + noise I."""
    kss = torch.as_tensor(k_test_diag, dtype=torch.float64, device=K.device).reshape(-1)
    if len(kss) != len(Ks) or not torch.isfinite(kss).all():
        raise ValueError(f"k_test_diag must hold k(x, x) (finite) for each of the {len(Ks)} test points, "
                         f"got shape {tuple(torch.as_tensor(k_test_diag).shape)}")
    if not noise >= 0:
        raise ValueError(f"noise is a variance and must be >= 0, got {noise}")
    L = cholesky(shifted(K, noise), f"K_train + {noise:g} I; use a positive noise variance")
    V = torch.linalg.solve_triangular(L, Ks.T, upper=False)
    var = kss - (V * V).sum(0)
    if var.min().item() < -1e-8 * kss.abs().max().item():
        raise ValueError(f"posterior variance {var.min().item():.4g} < 0: k_test_diag must be k(x, x) at the test "
                         f"points for the same kernel as K_train and K_test_train")
    return Ks @ torch.cholesky_solve(Y, L), var.clamp_min(0)


# ------------------------------------------------------------------------------------------ convenience
def evaluate_kernel(gram_fn: Callable, data, method: str = "ridge", block: int = 256, **kwargs) -> FitResult:
    """Compute K_train = gram_fn(X_train) and K_test = gram_fn(X_test, X_train), then fit.

    gram_fn(X, Y=None) -> Gram (e.g. lambda X, Y=None: npk_gram(model, X, Y)); data has X_train, y_train,
    X_test, y_test attributes (an npk.data.Dataset) or is a tuple in that order. method "ridge" and "svm"
    pass kwargs to kernel_ridge / kernel_svm; "gp" needs noise=... and computes k(x, x) at the test points
    from diagonal blocks of `block` test points.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(data, (tuple, list)):
        if len(data) != 4:
            raise ValueError(f"data must be (X_train, y_train, X_test, y_test), got a sequence of {len(data)}")
        X_train, y_train, X_test, y_test = data
    else:
        X_train, y_train, X_test, y_test = data.X_train, data.y_train, data.X_test, data.y_test
    K_train, K_test = gram_fn(X_train), gram_fn(X_test, X_train)
    if method == "ridge":
        return kernel_ridge(K_train, y_train, K_test, y_test, **kwargs)
    if method == "svm":
        return kernel_svm(K_train, y_train, K_test, y_test, **kwargs)
    if "noise" not in kwargs:
        raise ValueError("method='gp' needs the observation noise variance: evaluate_kernel(..., noise=1e-3)")
    diag = torch.cat([torch.diagonal(torch.as_tensor(gram_fn(X_test[i:i + block], X_test[i:i + block])))
                      for i in range(0, len(X_test), block)])
    return gp_posterior(K_train, y_train, K_test, diag, kwargs["noise"], y_test)
