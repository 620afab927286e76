"""npk: the dual view of ReLU networks.

A ReLU network is gates times linear maps. npk splits it into a gating network and a value network,
computes the neural path kernel (NPK) of its gates exactly, its neural tangent kernels, and checks the
theorems that link them.
"""
from ._version import __version__
from . import data, estimators, fit, graph, interpret, kernels, models, plots, report, theory, train
from .estimators import KernelGPRegressor, KernelRidgeClassifier, KernelSVMClassifier, NPKGram
from .fit import FitResult, evaluate_kernel, gp_posterior, kernel_ridge, kernel_svm
from .kernels.npk import npk_gram
from .kernels.ntk import ntk_gram
from .train import TrainResult, accuracy, evaluate

__all__ = ["data", "estimators", "fit", "graph", "interpret", "kernels", "models", "plots", "report", "theory", "train",
           "npk_gram", "ntk_gram", "FitResult", "evaluate_kernel", "gp_posterior", "kernel_ridge", "kernel_svm",
           "TrainResult", "accuracy", "evaluate", "KernelRidgeClassifier", "KernelSVMClassifier",
           "KernelGPRegressor", "NPKGram", "__version__"]
