"""Structure theorems of the NPK (PAPER.md section 2): rotational invariance and the residual ensemble.

Rotation. For circular ('wrap-around') convolutions followed by global average pooling,
    H(x, rot(x', s)) = H(x, x')   and   H(rot(x, s), rot(x', s)) = H(x, x')   for every circular shift s,
rot(x, s)(i) = x(i + s mod n) along every spatial axis. `rotation_formula_npk` evaluates the explicit
formula behind it,
    H(x, x') = (1/P^2) sum_r <x, rot(x', r)>_{Lambda(., x, rot(x', r))},
by counting paths, independently of the pair propagation of `npk.kernels.npk`.

Ensemble. With identity skips around b blocks, every path enters or skips each block, so
    H = sum over the 2^b subsets J of blocks of H^J,
H^J the NPK of the sub-network that runs through the blocks in J and skips the others, read with the
gates of the *full* network. For one-gated-layer dense blocks, H = <x, x'> prod_stem ov prod_k (1 + ov_k).
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import graph
from ..kernels.compact import model_selections
from ..kernels.npk import GatePair, kernel_gates, npk_gram, overlap, propagate
from ..kernels.reference import DEFAULT_MAX_CLASSES, check_size, path_features
from ..models.base import GatedNet, check_input
from .result import CheckResult

MAX_BLOCKS = 10        # 2^10 sub-network Grams
MAX_PATHS = 200_000    # path classes enumerated by rotation_formula_npk


# ------------------------------------------------------------------------------------ helpers
def _is_double(model: GatedNet, X: torch.Tensor) -> bool:
    return X.dtype == torch.float64 and next(model.parameters()).dtype == torch.float64


def _relative(A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor) -> float:
    return float((A - B).abs().max() / scale)


def _scale(H: torch.Tensor) -> torch.Tensor:
    scale = H.abs().max()
    if scale == 0:
        raise ValueError("the NPK of X is zero for every pair (no path is active); use other inputs or gates")
    return scale


def rotate(X: torch.Tensor, shift) -> torch.Tensor:
    """rot(x, s)(i) = x(i + s mod n) on the spatial axes of X (N, C, *spatial); s an int or one int per axis."""
    shift = (shift,) if isinstance(shift, int) else tuple(shift)
    return torch.roll(X, shifts=tuple(-s for s in shift), dims=tuple(range(2, 2 + len(shift))))


def _spatial(model: GatedNet) -> tuple[int, ...]:
    spatial = model.input_shape[1:]
    if len(spatial) not in (1, 2):
        raise ValueError(f"rotations act on 1-D or 2-D inputs (N, C, n) or (N, C, h, w); this model reads "
                         f"inputs of shape (N, {', '.join(map(str, model.input_shape))}): use a conv model")
    return spatial


def _shift_list(spatial: tuple[int, ...], shifts) -> list[tuple[int, ...]]:
    if shifts is None:
        return list(itertools.product(*map(range, spatial)))
    out = []
    for s in shifts:
        s = (s,) if isinstance(s, (int, np.integer)) else tuple(s)
        if len(s) != len(spatial) or not all(isinstance(v, (int, np.integer)) for v in s):
            raise ValueError(f"each shift must be {'an int' if len(spatial) == 1 else 'a pair of ints (a, b)'} "
                             f"for inputs with spatial shape {spatial}, got {s!r}")
        out.append(tuple(int(v) % n for v, n in zip(s, spatial)))
    if not out:
        raise ValueError("shifts is empty; pass None for every circular shift")
    return out


def _head(ops) -> str:
    kinds = {type(op) for op in graph.walk(ops)}
    return "gap" if graph.GlobalAvgPool in kinds else "flatten" if graph.Flatten in kinds else "none"


def _padding(ops) -> str:
    modes = {op.circular for op in graph.walk(ops) if isinstance(op, graph.Linear) and op.is_conv}
    return {frozenset([True]): "circular", frozenset([False]): "zero"}.get(frozenset(modes), "mixed")


def _require_no_bias(model: GatedNet, what: str) -> None:
    if any(getattr(op, "has_bias", False) for op in graph.walk(model.ops)):
        raise ValueError(f"{what} holds for bias-free networks (a bias is a path that starts inside the "
                         f"network, outside the formula); build the model with bias=False")


# ------------------------------------------------------------------------------------ rotation
def rotation_invariance(model: GatedNet, X: torch.Tensor, shifts=None, tol: float | None = None,
                        progress: bool | None = None, independent: bool | None = None,
                        max_classes: int = DEFAULT_MAX_CLASSES) -> CheckResult:
    """Check H(x, rot(x', s)) = H(x, x') and H(rot x, rot x') = H(x, x') for all pairs of X and shifts s,
    and every Gram it compares against an independent computation of the same kernel.

    shifts: None for every circular shift (1-D: 0..n-1; 2-D: every (a, b)), or a list of ints / pairs.
    Statistic: the larger of (1) the invariance deviation, max over shifts and pairs of
    |H_shifted - H| / max|H|, and (2) the reference error, max over the Grams H(X, X), H(X, rot X) and
    H(rot X, rot X) of |npk_gram - Phi Phi^T| / max|H|, Phi the path features of X and of the explicitly
    shifted inputs by `npk.kernels.reference` (path enumeration, no pair rule shared). Tolerance 1e-12 in
    float64 (X and the model), else 1e-5. (1) alone cannot fail a wrong rule that is itself shift-invariant
    (a conv rule that drops the offset sum, say); (2) catches any error of npk_gram on these inputs.
    independent=None (default) enumerates when the net has at most `max_classes` partial path classes and
    skips it otherwise (details['reference_error'] is then None: invariance only); True requires it
    (ValueError if too large); False skips it. details['deviation'][k] is (1) for shift details['shifts'][k]
    (both sides and one side also separately); the figure plots it against the shift (2-D: a heatmap).

    The theorem needs circular padding and a global-average-pooling head. Other models are checked
    all the same and are expected to fail: zero padding breaks invariance at the borders (the figure
    shows how far per shift), strided convolutions and pooling (average or max) commute only with
    shifts by multiples of their stride, and a flatten head keeps only H(rot x, rot x') = H(x, x'),
    losing the one-sided identity. details['padding'], details['head'], details['conv_strides'],
    details['n_max_pools'] and details['n_avg_pools'] say what the model has.
    """
    spatial = _spatial(model)
    X = check_input(X, model.input_shape, "X")
    shifts = _shift_list(spatial, shifts)
    tol = (1e-12 if _is_double(model, X) else 1e-5) if tol is None else float(tol)
    H = npk_gram(model, X, X, progress=False)      # Y passed explicitly: the shift-0 Grams below are the same computation
    scale = _scale(H)
    phi = _shifted_path_features(model, X, shifts, max_classes) if _enumerable(model, independent, max_classes) else None
    reference = None if phi is None else _relative(H, phi[0] @ phi[0].T, scale)
    one_side, both_sides = [], []
    for k, s in enumerate(tqdm(shifts, desc="rotations", unit="shift",
                               disable=None if progress is None else not progress)):
        Xs = rotate(X, s)
        H_one, H_both = npk_gram(model, X, Xs, progress=False), npk_gram(model, Xs, Xs, progress=False)
        one_side.append(_relative(H_one, H, scale))
        both_sides.append(_relative(H_both, H, scale))
        if phi is not None:
            p = phi[k + 1]
            reference = max(reference, _relative(H_one, phi[0] @ p.T, scale), _relative(H_both, p @ p.T, scale))
    deviation = [max(a, b) for a, b in zip(one_side, both_sides)]
    statistic = max(max(deviation), reference or 0.0)
    return CheckResult(
        name="rotation_invariance",
        claim="H(x, rot(x', s)) = H(x, x') = H(rot x, rot x') for every circular shift s "
              "(circular convolutions, global average pooling)"
              + ("; every Gram = its path enumeration on the shifted inputs" if reference is not None else ""),
        statistic=statistic, tolerance=tol, passed=statistic <= tol,
        details={"shifts": [list(s) for s in shifts], "deviation": deviation, "deviation_one_side": one_side,
                 "deviation_both_sides": both_sides, "reference_error": reference,
                 "spatial_shape": list(spatial), "head": _head(model.ops),
                 "padding": _padding(model.ops), "n_samples": len(X), **_invariance_breakers(model.ops)},
        plotter=_plot_rotation)


def _enumerable(model: GatedNet, independent: bool | None, max_classes: int) -> bool:
    """Whether to compare with path enumeration: None enumerates when the net is small enough, True
    requires it (ValueError from `check_size` if too large), False skips it."""
    if independent is None:
        try:
            check_size(model, max_classes)
        except ValueError:
            return False
        return True
    if independent:
        check_size(model, max_classes)
    return bool(independent)


def _shifted_path_features(model: GatedNet, X: torch.Tensor, shifts, max_classes: int) -> list[torch.Tensor]:
    """[Phi(X), Phi(rot(X, s)) for s in shifts] by path enumeration (`npk.kernels.reference`), in X's dtype."""
    phi, _ = path_features(model, torch.cat([X, *(rotate(X, s) for s in shifts)]), max_classes=max_classes)
    return list(phi.split(len(X)))


def _invariance_breakers(ops) -> dict:
    """The ops that break exact invariance besides zero padding: strided convs / pools and max pools."""
    strides = [list(op.module.stride) for op in graph.walk(ops)
               if isinstance(op, graph.Linear) and op.is_conv and any(s != 1 for s in op.module.stride)]
    pools = [op for op in graph.walk(ops) if isinstance(op, (graph.AvgPool, graph.MaxPool))]
    return {"conv_strides": strides, "n_max_pools": sum(isinstance(op, graph.MaxPool) for op in pools),
            "n_avg_pools": len(pools) - sum(isinstance(op, graph.MaxPool) for op in pools)}


def _plot_rotation(result: CheckResult, ax) -> None:
    d = result.details
    shifts, dev = np.array(d["shifts"]), np.array(d["deviation"])
    if len(d["spatial_shape"]) == 1:
        order = np.argsort(shifts[:, 0])
        ax.plot(shifts[order, 0], dev[order], "o-", label="max relative deviation")
        ax.axhline(result.tolerance, color="grey", ls="--", label="tolerance")
        ax.set_yscale("symlog", linthresh=result.tolerance)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("circular shift s")
        ax.set_ylabel("max |H(shifted) - H| / max |H|")
        ax.legend(fontsize=8)
        return
    grid = np.full(d["spatial_shape"], np.nan)
    grid[shifts[:, 0], shifts[:, 1]] = dev
    image = ax.imshow(grid, origin="lower", cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label="max |H(shifted) - H| / max |H|")
    ax.set_xlabel("shift b (along width)")
    ax.set_ylabel("shift a (along height)")


def _check_rotation_formula_model(model: GatedNet) -> list:
    """The convs of a model [circular Conv, Gate] * L -> GlobalAvgPool -> Readout, or a ValueError."""
    _spatial(model)
    _require_no_bias(model, "the rotation formula")
    ops = model.ops
    L = (len(ops) - 2) // 2
    shape_ok = (len(ops) == 2 * L + 2 and L >= 1 and isinstance(ops[-2], graph.GlobalAvgPool)
                and all(isinstance(a, graph.Linear) and a.circular and isinstance(b, graph.Gate)
                        for a, b in zip(ops[0:2 * L:2], ops[1:2 * L:2])))
    if not shape_ok:
        raise ValueError("rotation_formula_npk needs the op list [circular conv, Gate] * L, GlobalAvgPool, "
                         f"Readout (no pooling, flatten, skips or dense layers), got {[type(op).__name__ for op in ops]}")
    return [op.module for op in ops[0:2 * L:2]]


def _path_index(convs, spatial: tuple[int, ...]) -> list[torch.Tensor]:
    """For every path class p = (o_1, c_1, ..., o_L, c_L) and input position i, the flat index
    c_l * P + pos_l(p, i) of the unit the path visits in gated layer l, pos_l = i - o_1 - ... - o_l (mod n).

    Returns one long tensor (n_paths, P) per layer.
    """
    choices = [list(itertools.product(itertools.product(*[range(-(k // 2), k // 2 + 1) for k in c.kernel_size]),
                                      range(c.out_channels))) for c in convs]
    n_paths = math.prod(map(len, choices))
    if n_paths > MAX_PATHS:
        raise ValueError(f"the rotation formula enumerates {n_paths} path classes (more than {MAX_PATHS}); "
                         f"it is meant for tiny networks: use fewer channels or layers")
    paths = list(itertools.product(*choices))
    sizes = np.array(spatial)
    P = int(sizes.prod())
    coords = np.stack(np.unravel_index(np.arange(P), spatial), axis=1)                  # (P, d)
    position = np.broadcast_to(coords, (len(paths), P, len(spatial))).copy()          # (n_paths, P, d)
    index = []
    for layer in range(len(convs)):
        offsets = np.array([p[layer][0] for p in paths])                               # (n_paths, d)
        channels = np.array([p[layer][1] for p in paths])
        position = (position - offsets[:, None, :]) % sizes
        flat = np.ravel_multi_index(tuple(np.moveaxis(position, -1, 0)), spatial)
        index.append(torch.as_tensor(channels[:, None] * P + flat))
    return index


def _path_activity(model: GatedNet, X: torch.Tensor, index: list[torch.Tensor]) -> torch.Tensor:
    """A_x(p, i) = prod_l G_l(x)(pos_l(p, i), c_l(p)): (N, n_paths, P)."""
    A = None
    for G, idx in zip(kernel_gates(model, X, None), index):
        a = G.flatten(1)[:, idx]
        A = a if A is None else A * a
    return A


def active_path_counts(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None) -> torch.Tensor:
    """Lambda(i, x, y) for every pair (x in X, y in Y) and input position i: shape (N, M, *spatial).

    A path from input position i is a path class p = (o_1, c_1, ..., o_L, c_L) of kernel offsets and
    channels (the input channel is not part of it): it visits unit c_l at position
    pos_l = i - o_1 - ... - o_l (mod n, per axis) in gated layer l and ends at any output position.
    Lambda(i, x, y) = sum_p prod_l G_l(x)(pos_l, c_l) G_l(y)(pos_l, c_l): for hard gates the number of
    paths from i active for both x and y, for soft gates the gate-weighted count. Paths with different
    offset sequences count separately even when they wrap to the same positions.
    """
    spatial = model.input_shape[1:]
    index = _path_index(_check_rotation_formula_model(model), spatial)
    X = check_input(X, model.input_shape, "X")
    Y = X if Y is None else check_input(Y, model.input_shape, "Y")
    lam = torch.einsum("api,bpi->abi", _path_activity(model, X, index), _path_activity(model, Y, index))
    return lam.reshape(len(X), len(Y), *spatial)


def rotation_formula_npk(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None) -> torch.Tensor:
    """The NPK by the explicit rotation formula, for bias-free circular conv nets with a GAP head:

        H(x, x') = (1/P^2) sum_r <x, rot(x', r)>_{Lambda(., x, rot(x', r))},
        <x, y>_Lambda = sum_i Lambda(i, x, y) sum_c x(c, i) y(c, i),

    r over all P circular shifts (P = number of positions; 2-D: r = (a, b)), Lambda as in
    `active_path_counts` with the gates of rot(x', r) computed by the model. Derivation: with GAP,
    H = (1/P^2) sum_{i_L, i'_L} M_L(i_L, i'_L); grouping the pairs by r = i'_L - i_L, a path class in x'
    ending at i_L + r is the translate by r of the same class in rot(x', r) ending at i_L, and circular
    convolutions make the gates equivariant, G(rot(x', r))(i) = G(x')(i + r). The 1/P^2 of PAPER.md holds
    with this Lambda (brute-force checked against `npk_gram`). With an all-ones value input x is all ones.
    Cost: P rotations x n_paths x P per sample; for tiny networks.
    """
    X = check_input(X, model.input_shape, "X")
    Y = X if Y is None else check_input(Y, model.input_shape, "Y")
    spatial = _spatial(model)
    index = _path_index(_check_rotation_formula_model(model), spatial)
    P = math.prod(spatial)
    ax = _path_activity(model, X, index)
    vx = model.value_stream_input(X).flatten(2)
    H = torch.zeros(len(X), len(Y), dtype=X.dtype, device=X.device)
    for r in itertools.product(*map(range, spatial)):
        Yr = rotate(Y, r)
        lam = torch.einsum("api,bpi->abi", ax, _path_activity(model, Yr, index))
        inner = torch.einsum("aci,bci->abi", vx, model.value_stream_input(Yr).flatten(2))
        H += (lam * inner).sum(-1)
    return H / P**2


# ------------------------------------------------------------------------------------ ensemble
def residual_blocks(model: GatedNet) -> list[graph.Residual]:
    """The top-level Residual ops of the model, in forward order (nested skips stay inside their block)."""
    return [op for op in model.ops if isinstance(op, graph.Residual)]


def subnetwork_ops(ops: Sequence[graph.Op], keep) -> list[graph.Op]:
    """The op list of the sub-network that runs through the top-level blocks numbered in `keep` (0-based,
    in forward order) without their skip, and takes the skip branch (identity or projection) of the others.

    A bias is a path that starts at its layer, so it must be counted in one sub-network only: in the one
    that skips every block before it. Biases after the first kept block are dropped (the layer is read
    bias-free; the NPK does not read weights).
    """
    keep, out, k = set(keep), [], 0
    for op in ops:
        after_kept = any(j < k for j in keep)
        if isinstance(op, graph.Residual):
            branch = op.block if k in keep else op.skip
            out.extend(_bias_free(o) if after_kept else o for o in branch)
            k += 1
        else:
            out.append(_bias_free(op) if after_kept else op)
    if not keep <= set(range(k)):
        raise ValueError(f"block numbers must be in 0..{k - 1}, got {sorted(keep)}")
    return out


def _bias_free(op: graph.Op) -> graph.Op:
    """op without its bias path (a bias-free copy of the weight layer; other ops as they are)."""
    if isinstance(op, graph.Residual):
        return graph.Residual([_bias_free(o) for o in op.block], [_bias_free(o) for o in op.skip])
    if not getattr(op, "has_bias", False):
        return op
    module = copy.copy(op.module)
    module._parameters = dict(module._parameters, bias=None)
    return type(op)(module)


def subnetwork_npk(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None, keep=(),
                   gates: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None) -> torch.Tensor:
    """H^J(X, Y): the NPK of the sub-network `subnetwork_ops(model.ops, keep)` by pair propagation, with
    the gates of the full model (or `gates` = (gates of X, gates of Y), one tensor per gated layer).

    X and Y form one block: meant for the small sets of a theorem check.
    """
    X = check_input(X, model.input_shape, "X")
    Y = X if Y is None else check_input(Y, model.input_shape, "Y")
    gx, gy = gates if gates is not None else (kernel_gates(model, X, None), kernel_gates(model, Y, None))
    M = overlap(model.value_stream_input(X), model.value_stream_input(Y))
    selections = GatePair(gx, gy, model_selections(model, X), model_selections(model, Y))
    return propagate(subnetwork_ops(model.ops, keep), M, selections)


def reference_subnetwork_npk(model: GatedNet, X: torch.Tensor, keep=(), max_classes: int = DEFAULT_MAX_CLASSES
                             ) -> torch.Tensor:
    """H^J(X, X) computed independently of the pair rules: a separately built sub-network (a shallow copy of
    `model` whose op list skips the blocks not in `keep`), its paths enumerated by `npk.kernels.reference`
    with the full model's gates. For tiny networks (`max_classes` partial path classes at most)."""
    X = check_input(X, model.input_shape, "X")
    sub = copy.copy(model)                 # shares the modules; only the op list differs
    sub.ops = subnetwork_ops(model.ops, keep)
    phi, _ = path_features(sub, X, kernel_gates(model, X, None), max_classes=max_classes)
    return phi @ phi.T


def _closed_form_layers(model: GatedNet) -> tuple[list[int], list[int]] | None:
    """(top-level gate layers, block gate layers) when the closed form applies, else None."""
    stem, blocks = [], []
    for op in model.ops:
        if isinstance(op, graph.Gate):
            stem.append(op.layer)
        elif isinstance(op, graph.Residual):
            if len(op.block) != 2 or not isinstance(op.block[1], graph.Gate):
                return None
            blocks.append(op.block[1].layer)
        elif not isinstance(op, (graph.Linear, graph.Readout)) or (isinstance(op, graph.Linear) and op.is_conv):
            return None
    return stem, blocks


def ensemble_closed_form(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None) -> torch.Tensor:
    """H = <x, x'> prod_{stem gates l} ov_l prod_{blocks k} (1 + ov_k), ov_l = G_l(x) . G_l(x'), for a
    bias-free fully connected net whose residual blocks are single gated layers (stem layers optional)."""
    layers = _closed_form_layers(model)
    if layers is None:
        raise ValueError("the closed form holds for fully connected nets of [Linear, Gate] layers and "
                         "Residual([Linear, Gate]) blocks only; use ensemble_decomposition for other nets")
    _require_no_bias(model, "the closed form")
    X = check_input(X, model.input_shape, "X")
    Y = X if Y is None else check_input(Y, model.input_shape, "Y")
    gx, gy = kernel_gates(model, X, None), kernel_gates(model, Y, None)
    H = model.value_stream_input(X) @ model.value_stream_input(Y).T
    stem, blocks = layers
    for layer in stem:
        H = H * (gx[layer] @ gy[layer].T)
    for layer in blocks:
        H = H * (1 + gx[layer] @ gy[layer].T)
    return H


def ensemble_decomposition(model: GatedNet, X: torch.Tensor, tol: float | None = None,
                           independent: bool | None = None, max_classes: int = DEFAULT_MAX_CLASSES) -> CheckResult:
    """Check H = sum over the 2^b subsets J of the top-level residual blocks of H^J (`subnetwork_npk`,
    the full network's gates) on all pairs of X; every H^J against an independent computation
    (`reference_subnetwork_npk`: path enumeration of the separately built sub-network); for fully
    connected nets with one-gated-layer blocks, also H = `ensemble_closed_form`.

    The sum alone cannot fail: H and every H^J go through the same pair rules, so a wrong rule (say the
    conv offset sum) is wrong in both and the sum still matches. The enumeration shares no rule with
    them. independent=None (default) enumerates when the network has at most `max_classes` partial path
    classes and skips it otherwise (details['reference_error'] is then None: on such a net the check has
    no power against a wrong rule); True requires it (ValueError if too large); False skips it.

    Statistic: the largest relative error: max|sum_J H^J - H| / max|H|, max over J of
    max|H^J - H^J_reference| / max|H|, and the closed form's, when it applies; tolerance 1e-10 in
    float64 (X and the model), else 1e-4. details['depth_share'][k] is the
    share of the sub-networks through k blocks, sum_{|J| = k} H^J / H averaged over the pairs with
    |H| > 1e-12 max|H|; the figure shows it as bars. Needs a model with 1..10 blocks; skip branches
    may hold ops (projection shortcuts), and biases count in the sub-network that skips every block
    before them (`subnetwork_ops`), so traced networks with folded batch norms qualify.
    """
    blocks = residual_blocks(model)
    if not 1 <= len(blocks) <= MAX_BLOCKS:
        raise ValueError(f"ensemble_decomposition needs a model with 1..{MAX_BLOCKS} top-level identity skips "
                         f"(graph.Residual ops, e.g. npk.models.ResDNN), got {len(blocks)}")
    X = check_input(X, model.input_shape, "X")
    tol = (1e-10 if _is_double(model, X) else 1e-4) if tol is None else float(tol)
    H = npk_gram(model, X, progress=False)
    scale = _scale(H)
    gates = (kernel_gates(model, X, None),) * 2
    by_depth = torch.zeros(len(blocks) + 1, *H.shape, dtype=H.dtype, device=H.device)
    for k in range(len(blocks) + 1):
        for J in itertools.combinations(range(len(blocks)), k):
            by_depth[k] += subnetwork_npk(model, X, X, J, gates)
    error = _relative(by_depth.sum(0), H, scale)
    reference = None
    if _enumerable(model, independent, max_classes):
        reference = max(_relative(subnetwork_npk(model, X, X, J, gates),
                                  reference_subnetwork_npk(model, X, J, max_classes).to(H.dtype), scale)
                        for k in range(len(blocks) + 1) for J in itertools.combinations(range(len(blocks)), k))
    closed = (_relative(ensemble_closed_form(model, X), H, scale)
              if _closed_form_layers(model) is not None else None)
    mask = H.abs() > 1e-12 * scale
    share = [float((S[mask] / H[mask]).mean()) for S in by_depth]
    statistic = max(error, reference or 0.0, closed or 0.0)
    return CheckResult(
        name="ensemble_decomposition",
        claim="H = sum over the 2^b subsets J of residual blocks of H^J (sub-network J, full network's gates)"
              + (", each H^J = its path enumeration" if reference is not None else "")
              + ("; = <x, x'> prod ov_stem prod_k (1 + ov_k)" if closed is not None else ""),
        statistic=statistic, tolerance=tol, passed=statistic <= tol,
        details={"n_blocks": len(blocks), "decomposition_error": error, "reference_error": reference,
                 "closed_form_error": closed,
                 "depth_share": share, "n_samples": len(X)},
        plotter=_plot_depth_share)


def _plot_depth_share(result: CheckResult, ax) -> None:
    share = result.details["depth_share"]
    ax.bar(range(len(share)), share, color="tab:blue")
    ax.set_xticks(range(len(share)))
    ax.set_xlabel("|J|: number of residual blocks a path goes through")
    ax.set_ylabel(r"mean share of H: $\sum_{|J|=k} H^J / H$")
