"""Theorem checks of the dual view; each returns a `CheckResult` (numbers, tolerance, pass/fail, plot)."""
from .result import CheckResult
from .duality import duality
from .ntk_vs_npk import ntk_vs_npk

__all__ = ["CheckResult", "duality", "ntk_vs_npk"]
