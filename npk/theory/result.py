"""CheckResult: what every theorem check returns."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class CheckResult:
    """The outcome of a theorem check.

    statistic is the one number compared with the tolerance (passed = statistic <= tolerance unless the
    check says otherwise); details holds every measured number (JSON-serialisable); plotter draws the
    check's figure on a matplotlib Axes.
    """

    name: str
    claim: str
    statistic: float
    tolerance: float
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    plotter: Callable[["CheckResult", Any], None] | None = field(default=None, repr=False)

    def plot(self, ax=None, path=None):
        """Draw the check's figure; return the matplotlib Figure (saved as PNG when `path` is given)."""
        import matplotlib
        if path is not None and ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
        else:
            fig = ax.figure
        if self.plotter is None:
            raise ValueError(f"the check {self.name!r} has no figure")
        self.plotter(self, ax)
        ax.set_title(f"{self.name}: {'PASS' if self.passed else 'FAIL'} "
                     f"({self.statistic:.3g} vs tolerance {self.tolerance:.3g})", fontsize=9)
        if path is not None:
            fig.savefig(path, dpi=150)
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "claim": self.claim, "statistic": _clean(self.statistic),
                "tolerance": self.tolerance, "passed": bool(self.passed), "details": _clean(self.details)}

    def __str__(self) -> str:
        return (f"{self.name}: {'PASS' if self.passed else 'FAIL'}  statistic={self.statistic:.4g}  "
                f"tolerance={self.tolerance:.3g}  ({self.claim})")


def _clean(value):
    """Floats, lists and dicts only (tensors and numpy arrays turned into lists), for JSON."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
