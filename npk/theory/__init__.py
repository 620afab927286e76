"""Theorem checks of the dual view; each returns a `CheckResult` (numbers, tolerance, pass/fail, plot)."""
from .result import CheckResult

__all__ = ["CheckResult"]
