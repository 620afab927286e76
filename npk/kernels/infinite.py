"""Expected and infinite-width kernels of ReLU networks at random Gaussian initialisation.

Both rest on the arc-cosine kernels (Cho and Saul 2009): for a centred Gaussian pair (u, v) with
E u^2 = a, E v^2 = b, E uv = k and angle t = arccos(k / sqrt(a b)),

    P(u > 0, v > 0)      = (pi - t) / (2 pi)                                   (order 0: the gates)
    E[relu(u) relu(v)]   = (sqrt(a b) sin t + (pi - t) k) / (2 pi)             (order 1: the ReLU NNGP)

`expected_npk` walks a gated model's op list a third way (after the forward pass and the exact NPK):
the value stream carries the NPK pair kernel M as in `npk.kernels.npk`, except that a gate multiplies
M by the *expected* overlap C_l (pi - t_l) / (2 pi) (C_l units or channels), t_l the angle of the gating
network's pre-activations at layer l. The gating network runs alongside as its infinite-width
per-unit second moments K(i, i') = lim (1/C) sum_c h(i, c) h'(i', c), for the pairs (x, x'), (x, x)
and (x', x') (weights N(0, 2 / fan_in) as `npk.models.init.he_init`, zero biases):

    Linear dense      q-covariance S = 2 K
    Linear conv       S(o, o') = (2 / |kernel|) sum_k K(s o + d k - p, s o' + d k - p)   (the NPK's tap sum)
    Gate              ReLU gating (DNN, DGN): K <- E[relu relu] under S; linear gating (DLGN): K <- S;
                      shallow gating (DLGN-SF): K stays the input's
    AvgPool / GlobalAvgPool   means over windows on both sides (as the NPK rule)
    Flatten           K <- mean_i K(i, i)

What it computes, precisely: <x, x'> prod_l C_l (pi - t_l) / (2 pi) (for a fully connected net), the
product of the expected overlaps with the angles of the infinite-width gating network. It is the
infinite-width limit of H / prod_l C_l. At finite width E[H] differs at order 1/width: overlaps of
different layers are correlated through the shared gating network and the deeper angles fluctuate.
The first gated layer is exact at any width (its pre-activations are exactly Gaussian), and so is a
DLGN-SF's whole kernel (its gating layers read x with independent weights, so their overlaps are
independent). Angles come from atan2(sqrt(ab - k^2), k): near t = 0 (a sample with itself) rounding
limits them to ~1e-8, which is far below the Monte Carlo error this kernel is compared with.

`infinite_ntk` is the infinite-width NNGP / NTK of a fully connected ReLU network in the NTK
parameterisation (neural-tangents' stax.Dense default): with K_0 = W^2 <x, x'> / d_in + b^2, Theta_0 = K_0,
and per hidden layer

    Theta <- W^2 Theta (pi - t) / (2 pi) + K',    K' = W^2 E[relu relu] + b^2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import singledispatch
from typing import Callable

import torch

from .. import graph
from ..models.base import GatedNet, check_input
from ..validate import check_gram_request, finite_number
from .gram import TileKernel, blocked_gram
from .npk import DEFAULT_MEMORY_BUDGET, block_size
from .rules import conv_sum, overlap, pair_rule

KINDS = ("ntk", "nngp")


def arccos_kernels(k: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(u > 0, v > 0), E[relu(u) relu(v)]) for centred Gaussians with E u^2 = a, E v^2 = b, E uv = k.

    t, the angle, is computed from (k, a, b) unless given (`infinite_ntk` tracks it more accurately).
    A pair with a zero variance has u = 0 or v = 0: both values are 0 (a closed gate, relu(0) = 0).
    """
    root = torch.sqrt(a * b)
    if t is None:
        t = torch.atan2(torch.sqrt(torch.clamp(root * root - k * k, min=0)), k)
    order0 = torch.where(root > 0, (math.pi - t) / (2 * math.pi), torch.zeros_like(t))
    order1 = (root * torch.sin(t) + (math.pi - t) * k) / (2 * math.pi)
    return order0, order1


# ------------------------------------------------------------------------------ infinite width
def infinite_ntk(X: torch.Tensor, Y: torch.Tensor | None = None, *, depth: int, W_std: float = 2**0.5,
                 b_std: float = 0.0, kind: str = "ntk", exact_angles: bool = True) -> torch.Tensor:
    """The infinite-width NTK (kind="ntk") or NNGP (kind="nngp") of a fully connected ReLU network with
    `depth` hidden layers (depth + 1 dense layers) in the NTK parameterisation, as neural-tangents'
    stax.serial(Dense(w, W_std, b_std), Relu(), ... Dense(1, W_std, b_std)). X (N, d), Y (M, d) ->
    (N, M) in X's dtype and device (recursion in the module docstring).

    The angles are tracked through their versine 1 - cos t (first layer: Kahan's
    2 atan2(|u - v|, |u + v|) on unit vectors), so that nearly parallel pairs, a point with itself
    included, keep full precision: arccos of a rounded cosine would err by ~1e-8 there. That costs two
    elementwise distance passes over (N, M, d); exact_angles=False takes the angle from one GEMM (cos = <u, v>
    of the unit vectors), many times faster for large d and exact to ~1e-8 absolute near t = 0: enough for
    Grams stored in float32.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth (the number of hidden ReLU layers) must be an int >= 0, got {depth!r}")
    W_std, b_std = finite_number("W_std", W_std, 0), finite_number("b_std", b_std, 0)
    X = _as_matrix(X, "X")
    Y = X if Y is None else _as_matrix(Y, "Y")
    if Y.shape[1] != X.shape[1] or Y.dtype != X.dtype or Y.device != X.device:
        raise ValueError(f"X and Y must share the feature count, dtype and device, got {tuple(X.shape)} "
                         f"{X.dtype}/{X.device} and {tuple(Y.shape)} {Y.dtype}/{Y.device}")
    w2, b2 = W_std**2, b_std**2
    ux, uy = _first_layer_features(X, W_std, b_std), _first_layer_features(Y, W_std, b_std)
    K = ux @ uy.T
    a, b = (ux * ux).sum(1, keepdim=True), (uy * uy).sum(1, keepdim=True).T
    t = _angle(ux, uy, exact_angles)
    theta = K
    for _ in range(depth):
        gate, relu = arccos_kernels(K, a, b, t)
        a_next, b_next = w2 * a / 2 + b2, w2 * b / 2 + b2
        t = _next_angle(t, a, b, a_next, b_next, w2, b2)
        K, a, b = w2 * relu + b2, a_next, b_next
        theta = w2 * theta * gate + K
    return theta if kind == "ntk" else K


def infinite_ntk_gram(X: torch.Tensor, Y: torch.Tensor | None = None, *, depth: int, kind: str = "ntk",
                      W_std: float = 2**0.5, b_std: float = 0.0, exact_angles: bool = True, block: int = 2048,
                      out=None, checkpoint_dir=None, progress: bool | None = None,
                      max_memory: int | None = None) -> torch.Tensor:
    """`infinite_ntk` filled in block x block tiles by `npk.kernels.gram.blocked_gram`: into `out` (a .npy
    path or memmap, for a Gram larger than memory), resuming from `checkpoint_dir`, as `npk_gram` does.

    Example:
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> torch.allclose(infinite_ntk_gram(X, depth=2, block=2), infinite_ntk(X, depth=2))
        True
    """
    X = _as_matrix(X, "X")
    tiles = InfiniteTiles(depth, kind, W_std, b_std, exact_angles, X.dtype)
    return blocked_gram(tiles, X, None if Y is None else _as_matrix(Y, "Y"), block=block, out=out,
                        checkpoint_dir=checkpoint_dir, progress=progress, max_memory=max_memory,
                        entry="infinite_ntk_gram")


class InfiniteTiles(TileKernel):
    """`infinite_ntk` as a tile kernel (inputs: flat X slices)."""

    name = "infinite-width NTK"

    def __init__(self, depth: int, kind: str, W_std: float, b_std: float, exact_angles: bool, dtype: torch.dtype):
        self.options = dict(depth=depth, kind=kind, W_std=W_std, b_std=b_std, exact_angles=exact_angles)
        self.dtype = dtype
        self.key = {"kernel": "infinite_ntk", **self.options, "dtype": str(dtype)}

    def tile(self, fx, fy) -> torch.Tensor:
        return infinite_ntk(fx, fy, **self.options)

    def work_bytes(self, n: int, m: int) -> int:
        return 8 * n * m * torch.empty((), dtype=self.dtype).element_size()   # the recursion's temporaries


def _first_layer_features(X: torch.Tensor, W_std: float, b_std: float) -> torch.Tensor:
    """u = (W_std x / sqrt(d), b_std), so that the first layer's covariance is <u, u'>."""
    return torch.cat([W_std * X / math.sqrt(X.shape[1]), torch.full_like(X[:, :1], b_std)], dim=1)


def _angle(U: torch.Tensor, V: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """Angles between the rows of U and V, 2 atan2(|u - v|, |u + v|) on unit vectors (pi/2 for a zero row);
    not exact: |u -+ v|^2 = 2 -+ 2 <u, v> from one GEMM."""
    def unit(A):
        n = A.norm(dim=1, keepdim=True)
        return A / torch.where(n > 0, n, torch.ones_like(n))

    u, v = unit(U), unit(V)
    if not exact:
        c = (u @ v.T).clamp(-1, 1)
        return 2 * torch.atan2(torch.sqrt(2 - 2 * c), torch.sqrt(2 + 2 * c))
    mode = "donot_use_mm_for_euclid_dist"   # the matmul shortcut |u|^2 + |v|^2 - 2 u.v cancels near 0
    return 2 * torch.atan2(torch.cdist(u, v, compute_mode=mode), torch.cdist(u, -v, compute_mode=mode))


def _next_angle(t, a, b, a_next, b_next, w2: float, b2: float) -> torch.Tensor:
    """The angle after relu then a dense layer, from its versine 1 - cos t' = (sqrt(a' b') - k') / sqrt(a' b'):

    sqrt(a' b') - k' = w2 sqrt(ab) (pi (1 - cos t) - (sin t - t cos t)) / (2 pi)
                       + w2 b2 (sqrt a - sqrt b)^2 / 2 / (sqrt(a' b') + w2 sqrt(ab) / 2 + b2),
    every term free of cancellation (1 - cos t = 2 sin^2(t / 2)).
    """
    root, root_next = torch.sqrt(a * b), torch.sqrt(a_next * b_next)
    gap = (w2 * root * (2 * math.pi * torch.sin(t / 2) ** 2 - (torch.sin(t) - t * torch.cos(t))) / (2 * math.pi)
           + w2 * b2 * (torch.sqrt(a) - torch.sqrt(b)) ** 2 / 2 / (root_next + w2 * root / 2 + b2))
    half = torch.clamp(gap / torch.where(root_next > 0, root_next, torch.ones_like(root_next)) / 2, 0, 1)
    half = torch.where(root_next > 0, half, torch.full_like(half, 0.5))
    return 2 * torch.atan2(torch.sqrt(half), torch.sqrt(1 - half))


def _as_matrix(X, name: str) -> torch.Tensor:
    X = torch.as_tensor(X)
    if X.dim() != 2 or not X.is_floating_point() or not torch.isfinite(X).all():
        raise ValueError(f"{name} must be a finite floating point matrix (N, d_in), got {X.dtype} "
                         f"of shape {tuple(X.shape)}")
    return X


# ------------------------------------------------------------------------------ expected NPK
def expected_npk(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool | None = None,
                 max_memory: int | None = None, *, out=None, checkpoint_dir=None) -> torch.Tensor:
    """The expected NPK of `model`'s architecture at a random He-initialised gating network: (N, M).

    Only the architecture is read (op list, gating kind, value input, unit counts), never the weights.
    The result is the product of the expected overlaps (module docstring), the infinite-width limit of
    H / prod_l C_l times prod_l C_l. Hard gates only (soft gates have no closed form); supported ops:
    Linear, Gate, AvgPool, GlobalAvgPool, Flatten, Readout (a Residual's expected gates would depend on
    the block-output scaling of its initialisation; a MaxPool's selection has no closed form). Tiles of
    samples keep the pair kernels under `memory_budget` bytes; filled by `npk.kernels.gram.blocked_gram`
    (only the upper tiles when Y is None; `max_memory`, `progress`, `out` and `checkpoint_dir` as in
    `npk_gram`).
    """
    if not isinstance(model, GatedNet):
        raise TypeError(f"expected_npk needs an npk gated model (npk.models.*), got {type(model).__name__}")
    if model.gate_kind != "hard":
        raise ValueError("expected_npk has a closed form for hard gates only; build the model with gate='hard'")
    for op in graph.walk(model.ops):
        if type(op) in REFUSED:
            raise ValueError(REFUSED[type(op)])
        if type(op) not in expected_rule.registry:
            raise TypeError(f"expected_npk has no rule for op {op!r}; it supports {_supported()}")
    X = check_input(X, model.input_shape, "X")
    Y = X if Y is None else check_input(Y, model.input_shape, "Y")
    if Y.dtype != X.dtype or Y.device != X.device:
        raise ValueError(f"X and Y must share dtype and device, got {X.dtype}/{X.device} and {Y.dtype}/{Y.device}")
    check_gram_request(X, Y, memory_budget)
    block = block_size(model, X.element_size(), memory_budget)
    return blocked_gram(ExpectedTiles(model, X.dtype, memory_budget), X, None if Y is X else Y, block=block,
                        progress=progress, max_memory=max_memory, out=out, checkpoint_dir=checkpoint_dir,
                        entry="expected_npk")


class ExpectedTiles(TileKernel):
    """The expected NPK as a tile kernel (inputs: X slices)."""

    name = "expected NPK"

    def __init__(self, model: GatedNet, dtype: torch.dtype, memory_budget: int):
        self.model, self.dtype, self.budget = model, dtype, memory_budget
        self.key = {"kernel": "expected_npk", "dtype": str(dtype)}

    def tile(self, fx, fy) -> torch.Tensor:
        return _expected_block(self.model, fx, fy)

    def work_bytes(self, n: int, m: int) -> int:
        return 2 * self.budget    # the value stream's pair kernel and the gating stream's three moments


@dataclass
class _Moments:
    """Per-unit second moments of the gating stream for the pairs (x, y), (x, x) and (y, y).

    xy has shape (n, m, *S, *S); xx (n, 1, *S, *S) and yy (m, 1, *S, *S) pair each sample with itself.
    """

    xy: torch.Tensor
    xx: torch.Tensor
    yy: torch.Tensor

    @classmethod
    def of_input(cls, X: torch.Tensor, Y: torch.Tensor) -> "_Moments":
        C = X.shape[1]
        return cls(overlap(X, Y) / C, _self_overlap(X) / C, _self_overlap(Y) / C)

    def map(self, f: Callable[[torch.Tensor], torch.Tensor]) -> "_Moments":
        return _Moments(f(self.xy), f(self.xx), f(self.yy))

    def arccos(self) -> tuple[torch.Tensor, "_Moments"]:
        """The gate probabilities of the (x, y) pairs, and the moments after a ReLU."""
        dx, dy = _diagonal(self.xx), _diagonal(self.yy)
        gate, xy = arccos_kernels(self.xy, _row(dx), _column(dy, cross=True))
        xx = arccos_kernels(self.xx, _row(dx), _column(dx, cross=False))[1]
        yy = arccos_kernels(self.yy, _row(dy), _column(dy, cross=False))[1]
        return gate, _Moments(xy, xx, yy)


def _row(d: torch.Tensor) -> torch.Tensor:
    """Variances d (n, *S) of the first side of a pair kernel, broadcastable to (n, ., *S, *S)."""
    return d.reshape(len(d), 1, *d.shape[1:], *(1,) * (d.dim() - 1))


def _column(d: torch.Tensor, cross: bool) -> torch.Tensor:
    """Variances d (m, *S) of the second side: samples on axis 1 (cross pairs) or axis 0 (self pairs)."""
    samples = (1, len(d)) if cross else (len(d), 1)
    return d.reshape(*samples, *(1,) * (d.dim() - 1), *d.shape[1:])


def _self_overlap(X: torch.Tensor) -> torch.Tensor:
    """sum_c x(i, c) x(i', c) for each sample with itself: (n, 1, *S, *S)."""
    spatial = X.shape[2:]
    flat = X.reshape(len(X), X.shape[1], -1)
    return torch.einsum("nci,ncj->nij", flat, flat).reshape(len(X), 1, *spatial, *spatial)


def _diagonal(K: torch.Tensor) -> torch.Tensor:
    """K(i, i) of a self-pair kernel (n, 1, *S, *S): shape (n, *S)."""
    spatial = K.shape[2:2 + (K.dim() - 2) // 2]
    P = math.prod(spatial)
    return K.reshape(len(K), P, P).diagonal(dim1=1, dim2=2).reshape(len(K), *spatial)


def _linear_moments(op: graph.Linear, K: torch.Tensor) -> torch.Tensor:
    """Pre-activation covariance of a He-initialised weight layer from its input's per-unit moments."""
    if not op.is_conv:
        return 2 * K
    return (2 / math.prod(op.module.kernel_size)) * conv_sum(K, op.axes)


def _shape_moments(op, K: torch.Tensor) -> torch.Tensor:
    """Pooling acts on per-unit moments as on the NPK; flatten averages the positions' diagonal."""
    if isinstance(op, graph.Flatten) and K.dim() > 2:
        return pair_rule(op, K, None) / math.prod(K.shape[2:2 + (K.dim() - 2) // 2])
    return pair_rule(op, K, None)


def _expected_block(model: GatedNet, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    walk = _Walk(overlap(model.value_stream_input(X), model.value_stream_input(Y)), _Moments.of_input(X, Y))
    for op in model.ops:
        expected_rule(op, walk, model.gating)
    return walk.M


# ------------------------------------------------------------------ the expected reading of each op
# Every op of `npk.graph.OPS` has a rule here or a refusal in REFUSED (the checklist test checks both).
REFUSED = {
    graph.Residual: "expected_npk supports Linear, Gate, AvgPool, GlobalAvgPool, Flatten and Readout ops, "
                    "not Residual: use a model without skips",
    graph.MaxPool: "expected_npk has no closed form for max pooling (the selected position is the argmax of "
                   "correlated Gaussians per window); use npk_gram on sampled models",
}


@dataclass
class _Walk:
    """The expected walk's state: the value stream's pair kernel M, the gating stream's moments, and the
    pre-activation moments q and unit count of the last weight layer (read by the gate after it)."""

    M: torch.Tensor
    stream: _Moments
    q: _Moments | None = None
    units: int = 0


@singledispatch
def expected_rule(op, walk: _Walk, gating: str) -> None:
    raise TypeError(f"expected_npk has no rule for op {op!r}; it supports {_supported()}")


def _supported() -> str:
    return ", ".join(t.__name__ for t in expected_rule.registry if t is not object)


@expected_rule.register
def _(op: graph.Linear, walk, gating):
    walk.M = pair_rule(op, walk.M, None)
    walk.q = walk.stream.map(lambda K: _linear_moments(op, K))
    walk.units = op.module.weight.shape[0]


@expected_rule.register
def _(op: graph.Gate, walk, gating):
    """M <- C (pi - t) / (2 pi) M; the gating stream goes on as relu(q) (ReLU gating), q (linear), or
    stays the input's (shallow)."""
    gate, after_relu = walk.q.arccos()
    walk.M = walk.units * gate * walk.M
    if gating in ("self", "relu"):
        walk.stream = after_relu
    elif gating == "linear":
        walk.stream = walk.q


@expected_rule.register(graph.AvgPool)
@expected_rule.register(graph.GlobalAvgPool)
@expected_rule.register(graph.Flatten)
def _(op, walk, gating):
    walk.M = pair_rule(op, walk.M, None)
    walk.stream = walk.stream.map(lambda K: _shape_moments(op, K))


@expected_rule.register
def _(op: graph.Readout, walk, gating):
    walk.M = pair_rule(op, walk.M, None)
