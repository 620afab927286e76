"""Theorem checks of the dual view; each returns a `CheckResult` (numbers, tolerance, pass/fail, plot)."""
from .result import CheckResult
from .duality import duality
from .layer_permutation import layer_permutation
from .ntk_vs_npk import ntk_vs_npk
from .structure import ensemble_decomposition, rotation_invariance

__all__ = ["CheckResult", "duality", "ntk_vs_npk", "rotation_invariance", "ensemble_decomposition", "layer_permutation"]
