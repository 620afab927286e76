"""scikit-learn estimators on precomputed Grams, and the NPK Gram as a Pipeline step.

The estimators take Grams where scikit-learn's take features, as `SVC(kernel="precomputed")` does:
`fit(K_train, y)` with K_train (N, N) between training points, `predict(K_test)` with K_test (M, N)
between test and training points. They are tagged pairwise, so `GridSearchCV` and `cross_val_score`
slice a Gram K[train][:, train] and K[test][:, train]. Each wraps a function of `npk.fit` (same checks,
same numbers); hyperparameter grids stay relative to tr(K)/N (see `npk.fit`).

    KernelRidgeClassifier   kernel ridge, one-vs-rest, ridge chosen on a validation split (`kernel_ridge`)
    KernelSVMClassifier     scikit-learn's SVC on the Gram, C chosen on a validation split (`kernel_svm`)
    KernelGPRegressor       the GP posterior mean / variance for float targets (`gp_posterior`)
    NPKGram                 X -> npk_gram(model, X, X_fit): a transformer from inputs to the Gram

Example (inputs in, labels out, a ridge grid searched by 3-fold cross-validation):
    >>> pipe = make_pipeline(NPKGram(model, normalize="cosine"), KernelRidgeClassifier())
    >>> GridSearchCV(pipe, {"kernelridgeclassifier__lambdas": [[1e-3], [1e-1]]}, cv=3).fit(X, y)
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from .fit import gp_posterior, kernel_ridge, kernel_svm, ridge_solve
from .kernels.linalg import as_float64
from .kernels.npk import npk_gram
from .validate import finite_number


class _GramEstimator(BaseEstimator):
    """Pairwise tag: cross-validation slices the Gram on both axes (rows and columns)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = True
        return tags

    def _scores(self, K_test) -> np.ndarray:
        """K_test (M, N) @ dual_coef_ (N, k), in float64."""
        check_is_fitted(self, "dual_coef_")
        K_test = as_float64(K_test, "K_test")
        if K_test.shape[1] != len(self.dual_coef_):
            raise ValueError(f"K_test must be (M, N) with N = {len(self.dual_coef_)} training points, "
                             f"got shape {tuple(K_test.shape)}")
        return (K_test @ self.dual_coef_).numpy()


class KernelRidgeClassifier(ClassifierMixin, _GramEstimator):
    """Kernel ridge on one-vs-rest targets Y = one-hot(y) - 1/C: scores = K_test (K + lambda I)^{-1} Y.

    Args:
        lambdas: ridge grid relative to tr(K)/N (None: `npk.fit.RIDGE_GRID`); one value skips validation.
        val_fraction, seed, solver: as for `npk.fit.kernel_ridge`.
    Attributes after fit: classes_, lambda_ (absolute), lambda_relative_, validation_ (one row per grid
    value), dual_coef_ (N, C) = (K + lambda I)^{-1} Y.
    """

    def __init__(self, lambdas=None, val_fraction: float = 0.2, seed: int = 0, solver: str = "auto"):
        self.lambdas, self.val_fraction, self.seed, self.solver = lambdas, val_fraction, seed, solver

    def fit(self, K, y):
        result = kernel_ridge(K, y, K, lambdas=self.lambdas, val_fraction=self.val_fraction, seed=self.seed,
                              solver=self.solver)
        self.classes_, self.validation_ = result.classes, result.validation
        self.lambda_, self.lambda_relative_ = result.param, result.param_relative
        codes = torch.as_tensor(np.searchsorted(self.classes_, np.asarray(y)))
        Y = torch.nn.functional.one_hot(codes, len(self.classes_)).double() - 1.0 / len(self.classes_)
        self.dual_coef_ = ridge_solve(K, Y, self.lambda_).cpu()
        return self

    def decision_function(self, K_test) -> np.ndarray:
        """(M, C) one-vs-rest scores."""
        return self._scores(K_test)

    def predict(self, K_test) -> np.ndarray:
        return self.classes_[self.decision_function(K_test).argmax(1)]


class KernelSVMClassifier(ClassifierMixin, _GramEstimator):
    """scikit-learn's SVC(kernel="precomputed", break_ties=True) with C chosen as `npk.fit.kernel_svm` does.

    Args:
        Cs: grid relative to N / tr(K) (None: `npk.fit.SVM_GRID`); one value skips validation.
        val_fraction, seed: as for `npk.fit.kernel_svm`.
    Attributes after fit: classes_, C_ (absolute), C_relative_, validation_, svc_ (the fitted SVC).
    """

    def __init__(self, Cs=None, val_fraction: float = 0.2, seed: int = 0):
        self.Cs, self.val_fraction, self.seed = Cs, val_fraction, seed

    def fit(self, K, y):
        result = kernel_svm(K, y, K, Cs=self.Cs, val_fraction=self.val_fraction, seed=self.seed)
        self.classes_, self.validation_ = result.classes, result.validation
        self.C_, self.C_relative_ = result.param, result.param_relative
        self.svc_ = SVC(kernel="precomputed", C=self.C_, decision_function_shape="ovr",
                        break_ties=True).fit(as_float64(K).numpy(), np.asarray(y))
        return self

    def decision_function(self, K_test) -> np.ndarray:
        check_is_fitted(self, "svc_")
        return self.svc_.decision_function(as_float64(K_test, "K_test").numpy())

    def predict(self, K_test) -> np.ndarray:
        check_is_fitted(self, "svc_")
        return self.svc_.predict(as_float64(K_test, "K_test").numpy())


class KernelGPRegressor(RegressorMixin, _GramEstimator):
    """GP regression with a precomputed prior covariance K: mean = K_test (K + noise I)^{-1} y.

    Args:
        noise: the observation noise variance (>= 0; 0 needs a positive definite K).
    Attributes after fit: dual_coef_ (N,) or (N, k) = (K + noise I)^{-1} y. `score` is R^2.
    """

    def __init__(self, noise: float = 1e-3):
        self.noise = noise

    def fit(self, K, y):
        finite_number("noise", self.noise, 0)
        self.K_fit_, self.y_fit_ = as_float64(K, "K"), np.asarray(y, dtype=np.float64)
        self.dual_coef_ = ridge_solve(self.K_fit_, self.y_fit_, self.noise).cpu()
        return self

    def predict(self, K_test) -> np.ndarray:
        """The posterior mean at the test points."""
        return self._scores(K_test)

    def predict_variance(self, K_test, k_test_diag) -> np.ndarray:
        """The latent posterior variance k(x, x) - K_* (K + noise I)^{-1} K_*^T at the test points."""
        check_is_fitted(self, "dual_coef_")
        return gp_posterior(self.K_fit_, self.y_fit_, K_test, k_test_diag, self.noise).variance


class NPKGram(TransformerMixin, BaseEstimator):
    """The NPK Gram as a Pipeline step: fit(X) keeps X, transform(X') = npk_gram(model, X', X).

    Args:
        model: an npk gated model (cloned with the step: GridSearchCV deep-copies it).
        gates, normalize: as for `npk.npk_gram` ("cosine": unit diagonal, a fixed ridge means the same
            for every model).
    """

    def __init__(self, model, gates: str | None = None, normalize: str | None = None):
        self.model, self.gates, self.normalize = model, gates, normalize

    def fit(self, X, y=None):
        self.X_fit_ = self._tensor(X)
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "X_fit_")
        return self._gram(self._tensor(X), self.X_fit_)

    def fit_transform(self, X, y=None, **fit_params) -> np.ndarray:
        """The symmetric training Gram (only its upper tiles are computed)."""
        return self._gram(self.fit(X).X_fit_, None)

    def _tensor(self, X) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return X.to(dtype) if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X), dtype=dtype)

    def _gram(self, X: torch.Tensor, Y: torch.Tensor | None) -> np.ndarray:
        return npk_gram(self.model, X, Y, gates=self.gates, normalize=self.normalize, progress=False).cpu().numpy()
