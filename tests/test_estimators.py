"""scikit-learn estimators on precomputed Grams: the same numbers as npk.fit, in Pipeline and GridSearchCV."""
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

import npk
from npk.data import load
from npk.estimators import KernelGPRegressor, KernelRidgeClassifier, KernelSVMClassifier, NPKGram
from npk.fit import gp_posterior, kernel_ridge, kernel_svm


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    data = load("digits", flatten=True, n_train=240, n_test=120, dtype=torch.float64)
    model = npk.models.DNN(64, [64, 64], 10).double()
    return model, data, npk.npk_gram(model, data.X_train), npk.npk_gram(model, data.X_test, data.X_train)


def test_the_ridge_estimator_gives_kernel_ridges_numbers(digits):
    _, data, K, K_test = digits
    est = KernelRidgeClassifier(lambdas=[1e-4, 1e-2, 1]).fit(K, data.y_train)
    ref = kernel_ridge(K, data.y_train, K_test, data.y_test, lambdas=[1e-4, 1e-2, 1])
    assert est.lambda_ == ref.param and est.validation_ == ref.validation
    np.testing.assert_allclose(est.decision_function(K_test), ref.scores, rtol=1e-9, atol=1e-12)
    assert (est.predict(K_test) == ref.predictions).all()
    assert est.score(K_test, data.y_test) == pytest.approx(ref.accuracy, abs=1e-15)
    assert ref.accuracy > 0.85
    assert clone(est).get_params() == {"lambdas": [1e-4, 1e-2, 1], "val_fraction": 0.2, "seed": 0, "solver": "auto"}


def test_the_svm_estimator_gives_kernel_svms_numbers(digits):
    _, data, K, K_test = digits
    est = KernelSVMClassifier(Cs=[1, 100]).fit(K, data.y_train)
    ref = kernel_svm(K, data.y_train, K_test, data.y_test, Cs=[1, 100])
    assert est.C_ == ref.param
    assert (est.predict(K_test) == ref.predictions).all()
    assert est.score(K_test, data.y_test) == pytest.approx(ref.accuracy, abs=1e-15)


def test_the_gp_estimator_gives_the_posterior(digits):
    _, data, K, K_test = digits
    y = data.X_train[:, 10].numpy()                         # a float target: one pixel
    est = KernelGPRegressor(noise=1e-2 * K.diagonal().mean().item()).fit(K, y)
    diag = torch.stack([npk.npk_gram(digits[0], x[None])[0, 0] for x in data.X_test])
    ref = gp_posterior(K, y, K_test, diag, est.noise)
    np.testing.assert_allclose(est.predict(K_test), ref.scores, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(est.predict_variance(K_test, diag), ref.variance, rtol=1e-12)
    with pytest.raises(ValueError, match="noise"):
        KernelGPRegressor(noise=-1.0).fit(K, y)


def test_grid_search_on_a_precomputed_gram_slices_both_axes(digits):
    _, data, K, _ = digits
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(KernelRidgeClassifier(), {"lambdas": [[1e-6], [1e-2], [1e3]]}, cv=folds).fit(K, data.y_train)
    y = data.y_train.numpy()
    manual = []
    for lam in (1e-6, 1e-2, 1e3):
        accs = [KernelRidgeClassifier(lambdas=[lam]).fit(K[tr][:, tr], y[tr]).score(K[te][:, tr], y[te])
                for tr, te in folds.split(K, y)]
        manual.append(np.mean(accs))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], manual, atol=1e-15)
    assert search.best_params_ == {"lambdas": [(1e-6, 1e-2, 1e3)[int(np.argmax(manual))]]}
    assert manual[2] < max(manual) - 0.05                                          # too much ridge hurts


def test_a_pipeline_from_inputs_to_labels_in_grid_search(digits):
    model, data, _, _ = digits
    pipe = make_pipeline(NPKGram(model, normalize="cosine"), KernelRidgeClassifier())
    search = GridSearchCV(pipe, {"kernelridgeclassifier__lambdas": [[1e-3], [10.0]]}, cv=3).fit(data.X_train,
                                                                                                 data.y_train)
    assert search.best_params_ == {"kernelridgeclassifier__lambdas": [1e-3]}
    acc = search.score(data.X_test, data.y_test)
    K = npk.npk_gram(model, data.X_train, normalize="cosine")
    K_test = npk.npk_gram(model, data.X_test, data.X_train, normalize="cosine")
    ref = kernel_ridge(K, data.y_train, K_test, data.y_test, lambdas=[1e-3])
    assert acc == pytest.approx(ref.accuracy, abs=1e-15) and acc > 0.85
    assert cross_val_score(pipe, data.X_train, data.y_train, cv=2).min() > 0.8


def test_estimators_refuse_a_test_gram_of_the_wrong_width(digits):
    _, data, K, K_test = digits
    est = KernelRidgeClassifier(lambdas=[1e-2]).fit(K, data.y_train)
    with pytest.raises(ValueError, match="K_test must be"):
        est.predict(K_test[:, :10])
