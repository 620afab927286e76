"""Duality check: the network is a kernel machine on its neural path features.

For a tiny network, enumerate its paths (`npk.kernels.reference`) and check both halves of the dual view:
    (a) model(x) = <phi_x, v>                  the output is feature times value, summed over path classes
    (b) npk_gram(model, X) = Phi Phi^T         the pair-propagation NPK is the features' Gram matrix
Each is measured as max |a - b| / max(max |a|, max |b|) (the error relative to the largest entry); the
statistic is the larger of the two, compared with 1e-10 in float64 and 1e-4 in float32.
"""
from __future__ import annotations

import torch

from ..kernels.npk import npk_gram
from ..kernels.reference import DEFAULT_MAX_CLASSES, path_features, path_values
from ..models.base import GatedNet, check_input
from .result import CheckResult

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}


def duality(model: GatedNet, X: torch.Tensor, tol: float | None = None,
            max_classes: int = DEFAULT_MAX_CLASSES) -> CheckResult:
    """Check model(X) = Phi v and npk_gram(model, X) = Phi Phi^T by brute-force path enumeration.

    Runs in the model's dtype (X is cast to it); tol defaults to 1e-10 (float64) or 1e-4 (float32).
    Raises a ValueError when the network has more than `max_classes` partial path classes.
    """
    if not isinstance(model, GatedNet):
        raise TypeError(f"duality needs an npk gated model (npk.models.*), got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    X = check_input(X, model.input_shape, "X").to(dtype)
    tol = TOLERANCES.get(dtype, 1e-4) if tol is None else float(tol)
    phi, classes = path_features(model, X, max_classes=max_classes)
    v = path_values(model, classes)
    with torch.no_grad():
        out = model(X)
        H = npk_gram(model, X)
    dual, K = phi @ v, phi @ phi.T
    output_error, gram_error = relative_error(out, dual), relative_error(H, K)
    statistic = max(output_error, gram_error)

    def plotter(result, ax):
        for ref, fast, label, marker in ((dual, out, "output vs <phi, v>", "o"),
                                         (K, H, "npk_gram vs Phi Phi^T", "x")):
            scale = max(ref.abs().max().item(), 1e-300)
            ax.scatter((ref / scale).flatten().cpu(), (fast / scale).flatten().cpu(), s=12, marker=marker,
                       label=label)
        ax.plot([-1, 1], [-1, 1], color="grey", lw=0.8, zorder=0)
        ax.set_xlabel("path enumeration (scaled by its largest |entry|)")
        ax.set_ylabel("network / npk_gram (same scale)")
        ax.legend(fontsize=8)

    return CheckResult(
        name="duality",
        claim="model(x) = <phi_x, v> and npk_gram = Phi Phi^T (max error relative to the largest entry)",
        statistic=statistic, tolerance=tol, passed=statistic <= tol,
        details={"output_error": output_error, "gram_error": gram_error, "n_samples": len(X),
                 "n_path_classes": len(classes), "d_out": v.shape[1], "dtype": str(dtype)},
        plotter=plotter)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |a|, max |b|); 0 when both are zero."""
    scale = max(a.abs().max().item(), b.abs().max().item())
    return (a - b).abs().max().item() / scale if scale > 0 else 0.0
