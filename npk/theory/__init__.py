"""Theorem checks of the dual view; each returns a `CheckResult` (numbers, tolerance, pass/fail, plot)."""
from .result import CheckResult
from .duality import duality

__all__ = ["CheckResult", "duality"]
