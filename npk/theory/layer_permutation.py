"""Layer-permutation invariance of the NPK: which networks' gating masks can be shuffled across layers.

Let gated layer l take the gates of layer pi(l), the same for every input (`npk.models.regimes.shuffled_gates`
with over="layers"). A fully connected net's NPK is a product over its gated layers,
    H(x, x') = <x, x'> prod_l overlap_l(x, x'),   overlap_l = sum_i G_l(x)_i G_l(x')_i,
so reordering the factors leaves it exactly unchanged when the widths agree (the gates fit every layer).
A convolution sums over kernel offsets between consecutive gated layers, so a conv net's NPK couples
the layers' gates through their positions and a layer permutation changes it: there the check is
expected to fail, and its statistic measures by how much. The network's output changes in both cases
(details['output_change']), so an invariance found is the kernel's, not a permutation that did nothing.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from .. import graph
from ..kernels.npk import npk_gram
from ..models.base import GatedNet, check_input
from ..models.regimes import shuffled_gates
from .duality import relative_error
from .result import CheckResult


def layer_permutation(model: GatedNet, X: torch.Tensor, order: Sequence[int] | None = None, seed: int = 0,
                      tol: float | None = None) -> CheckResult:
    """Check npk_gram(model with layer l gated by layer order[l]'s gates) = npk_gram(model) on all pairs of X.

    Args:
        model: a gated network with at least two gated layers whose gates have equal shapes (a DNN is read
            as the DGN with its own gates).
        X: inputs (N, *model.input_shape).
        order: the layer permutation; None draws one that moves a layer (seeded by `seed`).
        tol: defaults to 1e-12 in float64 (X and the model), else 1e-5.

    Returns:
        A CheckResult; statistic max |H_perm - H| / max |H|. details: the order, 'fully_connected' (whether
        the invariance is expected), 'output_change' (relative change of the outputs, showing that the
        permutation changes the network), and the per-pair deviations for the figure.

    Example:
        >>> layer_permutation(DGN(10, [16, 16, 16], 2).double(), torch.randn(20, 10, dtype=torch.float64)).passed
        True
    """
    if not isinstance(model, GatedNet):
        raise TypeError(f"layer_permutation needs an npk gated model (npk.models.*), got {type(model).__name__}")
    X = check_input(X, model.input_shape, "X")
    double = X.dtype == torch.float64 and next(model.parameters()).dtype == torch.float64
    tol = (1e-12 if double else 1e-5) if tol is None else float(tol)
    permuted = shuffled_gates(model, seed=seed, over="layers")
    if order is not None:
        permuted.set_layer_order(order)
    base = copy.deepcopy(permuted)  # the same gates in their own order (for a DNN: the DGN with its own gates)
    base.set_layer_order(None)
    with torch.no_grad():
        H, H_perm = npk_gram(base, X, progress=False), npk_gram(permuted, X, progress=False)
        output_change = relative_error(permuted(X), base(X))
    scale = float(H.abs().max())
    if scale == 0:
        raise ValueError("the NPK of X is zero for every pair (no path is active); use other inputs or gates")
    deviation = ((H_perm - H).abs() / scale).flatten()
    statistic = float(deviation.max())
    fully_connected = not any(isinstance(op, graph.Linear) and op.is_conv for op in graph.walk(model.ops))
    return CheckResult(
        name="layer_permutation",
        claim="permuting the gated layers' gates leaves the NPK unchanged (fully connected nets of equal widths; "
              "conv nets are expected to fail)",
        statistic=statistic, tolerance=tol, passed=statistic <= tol,
        details={"order": permuted.layer_order, "fully_connected": fully_connected, "output_change": output_change,
                 "deviation": deviation.tolist(), "n_samples": len(X)},
        plotter=_plot_deviation)


def _plot_deviation(result: CheckResult, ax) -> None:
    dev = sorted(result.details["deviation"], reverse=True)
    ax.plot(range(1, len(dev) + 1), dev, ".", markersize=3)
    ax.axhline(result.tolerance, color="grey", ls="--", label="tolerance")
    ax.set_yscale("symlog", linthresh=result.tolerance)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"pairs (x, x'), sorted; layer order {result.details['order']}")
    ax.set_ylabel("|H_perm - H| / max |H|")
    ax.legend(fontsize=8)
