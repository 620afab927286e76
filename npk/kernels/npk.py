"""The exact neural path kernel H(x, x') = <phi_x, phi_x'> by pair propagation over the op list.

For a block of inputs X (n of them) and Y (m of them) we carry a pair kernel M of shape
(n, m, *S, *S'), S the spatial shape of the stream (empty for dense layers):
M(i, i') = sum over partial path classes s ending at positions i, i' of phi_x(s, i) phi_x'(s, i').

    input            M(i, i') = sum_c x(i, c) x'(i', c)          (all-ones input: the channel count)
    Linear dense     M <- M (+ 1 with a bias: the bias is a path starting at a constant-1 node)
    Linear conv      M(o, o') <- sum_k M(s o + d k - p, s o' + d k - p) (+ 1)   k over the kernel taps,
                     s the stride, d the dilation, p the left pad; outside the image: zero or wrap-around
    Gate(l)          M <- ov_l * M,  ov_l(i, i') = sum_c G_l(x)(i, c) G_l(x')(i', c)
    MaxPool          M_c(o, o') <- M_c(sel_x(o, c), sel_x'(o', c))   (each window passes its selected input)
    AvgPool          M <- A M A^T  on every spatial axis, both sides (A the window-averaging matrix)
    GlobalAvgPool    M <- mean over all (i, i')
    Flatten          M <- sum_i M(i, i)  (a dense layer after it has position-specific weights)
    Residual         M <- skip(M) + block(M)   (paths through the two branches are disjoint classes)
    Readout          H = M (+ 1)
A gate whose stream reaches another gate or a max pool without a weight layer in between (an identity
shortcut into a ReLU, a ReLU into a max pool) keeps one kernel per channel, M_c, instead of the sum
(`Pair`, `npk.graph.kept_gates`).
The fully connected case is H = (X X^T) * prod_l (G_l G_l^T) (elementwise), with +1 terms for biases.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import singledispatch
from pathlib import Path
from typing import Sequence

import torch

from .. import graph
from . import conv_fast
from ..models.base import GatedNet, check_input
from ..models.gates import check_kind
from .compact import (LayerGates, compute_gates, gate_bytes, gate_shapes, gates_per_sample, model_gates,
                      model_selections, unpack_gates)
from .linalg import cosine_normalize
from .gram import TileKernel, available_memory, blocked_gram, dtype_size, preflight
from ..validate import check_gram_request

# bytes for the pair kernels of one block: on a CPU, blocks whose tensors stay under glibc's mmap threshold
# are several times faster than large ones (a large tensor is freshly mapped and page-faulted at every op)
DEFAULT_MEMORY_BUDGET = 32 * 2**20


def npk_gram(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None, gates: str | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool | None = None,
             checkpoint_dir: str | Path | None = None, *, out=None, max_memory: int | None = None,
             scheduler=None, normalize: str | None = None) -> torch.Tensor:
    """The NPK Gram matrix H[a, b] = <phi_{X_a}, phi_{Y_b}> of `model`'s gates, shape (N, M).

    Computed by the blocked driver `npk.kernels.gram.blocked_gram` in tiles whose pair kernels stay
    under `memory_budget` bytes (only the upper tiles when Y is None). The gates of all inputs are
    computed once and kept compactly (hard: one bit per gate, exact; soft: the model's dtype) when they
    fit in memory beside the Gram, else recomputed for each tile's inputs. Cost: time ~ N M P^2 per
    layer for P positions per image; memory: the Gram (unless out=), the gates, one tile.

    Args:
        model: an npk gated model.
        X, Y: inputs (N, *input_shape), (M, *input_shape) of one dtype and device (Y None: Y = X).
        gates: None for the model's own gates; "hard" / "soft" recomputes them from the same pre-activations.
        memory_budget: bytes for the pair kernels of one tile (sets the tile side).
        progress: tqdm bar (None: only for 8 tiles or more).
        checkpoint_dir: finished tiles are stored there (fingerprinted, checksummed); a rerun skips them.
        out: None, a numpy array / memmap (N, M) of X's dtype, or a .npy path (filled tile by tile).
        max_memory: bytes it may use; refused up front (MemoryError, one line) if the estimate is over
            (default: the memory available).
        scheduler: a dask.distributed Client or a scheduler address: tiles run on the cluster.
        normalize: None (the raw sum over paths), or "cosine": H(x, y) / sqrt(H(x, x) H(y, y)), the
            cosine of the angle between the path features (`npk.kernels.linalg.cosine_normalize`; with
            Y given, the N + M diagonal entries cost one pair each). Computed in float64 and returned in
            X's dtype: the raw NPK sums every path and reaches 1e48 for a ResNet-18, its cosine lies in
            [-1, 1], fits float32, and a fixed ridge (scikit-learn's alpha) means the same
            for every net. Not with out=.
    Returns:
        H (N, M) in X's dtype, on X's device (gates are computed in the model's dtype); with out=, a
        tensor sharing the array's memory.

    Example:
        >>> model = npk.models.DLGN(4, [8, 8], 1).double()
        >>> X = torch.randn(6, 4, dtype=torch.float64)
        >>> npk_gram(model, X).shape
        torch.Size([6, 6])
    """
    if not isinstance(model, GatedNet):
        raise TypeError(f"npk_gram needs an npk gated model (npk.models.*), got {type(model).__name__}; "
                        f"wrap a ReLU nn.Sequential with npk.models.from_sequential")
    X = check_input(X, model.input_shape, "X")
    symmetric = Y is None
    Y = X if symmetric else check_input(Y, model.input_shape, "Y")
    if normalize is not None:
        return _cosine_gram(model, X, None if symmetric else Y, normalize, out, gates=gates,
                            memory_budget=memory_budget, progress=progress, checkpoint_dir=checkpoint_dir,
                            max_memory=max_memory, scheduler=scheduler)
    check_gram_request(X, Y, memory_budget)
    if Y.dtype != X.dtype or Y.device != X.device:
        raise ValueError(f"X and Y must share dtype and device, got {X.dtype}/{X.device} and {Y.dtype}/{Y.device}")
    kernel = NPKTiles(model, gates or model.gate_kind, X.dtype, memory_budget)
    block = block_size(model, X.element_size(), memory_budget)
    n_gated = len(X) + (0 if symmetric else len(Y))
    parts = {"Gram": 0 if out is not None else len(X) * len(Y) * X.element_size(),
             "one tile": kernel.work_bytes(block, block)}
    resident = {"gates": kernel.gate_bytes(n_gated)}
    room = (max_memory if max_memory is not None else available_memory()) - sum(parts.values())
    if resident["gates"] > room // 2:            # the gates of all inputs do not fit: computed per tile
        resident, kernel.precomputed = {}, False
    preflight("npk_gram", {**parts, **resident}, max_memory)     # before the gates are computed
    if kernel.precomputed:
        X = (X, kernel.all_gates(X))
        Y = None if symmetric else (Y, kernel.all_gates(Y))
    return blocked_gram(kernel, X, None if symmetric else Y, block=block, out=out, checkpoint_dir=checkpoint_dir,
                        scheduler=scheduler, progress=progress, max_memory=max_memory, resident=resident,
                        entry="npk_gram")


def _cosine_gram(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None, normalize: str, out,
                 **options) -> torch.Tensor:
    """npk_gram(..., normalize="cosine"): the float64 Gram and diagonals, normalised, in X's dtype."""
    if normalize != "cosine":
        raise ValueError(f"normalize must be None or 'cosine', got {normalize!r}")
    if out is not None:
        raise ValueError("normalize= returns the Gram in memory, not with out=; for a Gram on disk compute the raw "
                         "Gram into out= and divide it by row blocks with npk.kernels.linalg.cosine_normalize")
    X64 = X.to(torch.float64)
    H = npk_gram(model, X64, None if Y is None else Y.to(torch.float64), **options)
    diag_x = torch.diagonal(H) if Y is None else npk_diagonal(model, X64, options["gates"])
    diag_y = None if Y is None else npk_diagonal(model, Y.to(torch.float64), options["gates"])
    return cosine_normalize(H, diag_x, diag_y).to(X.dtype)


def npk_diagonal(model: GatedNet, X: torch.Tensor, gates: str | None = None) -> torch.Tensor:
    """H(x_a, x_a) = ||phi_{x_a}||^2 for every row of X, shape (N,): one pair each, in X's dtype."""
    X = check_input(X, model.input_shape, "X")
    kernel = NPKTiles(model, gates or model.gate_kind, X.dtype, DEFAULT_MEMORY_BUDGET)
    kernel.precomputed = False
    return torch.stack([kernel.tile(f, f)[0, 0] for f in map(kernel.prepare, X.split(1))])


class NPKTiles(TileKernel):
    """The NPK as a tile kernel: inputs are X slices, or (X slice, compact gates) when `precomputed`."""

    name = "NPK"

    def __init__(self, model: GatedNet, kind: str, dtype: torch.dtype, memory_budget: int):
        self.model, self.kind, self.dtype = model, check_kind(kind), dtype
        self.key = {"kernel": "npk", "gates": self.kind, "dtype": str(dtype)}
        self.shapes, self.budget, self.precomputed = gate_shapes(model), memory_budget, True
        self.model_itemsize = next(model.parameters()).element_size()

    def gate_bytes(self, n: int) -> int:
        return gate_bytes(self.shapes, n, self.kind, self.model_itemsize)

    def all_gates(self, X: torch.Tensor):
        """The compact gates of all of X, computed in chunks of about one tile budget of float gates."""
        per_sample = max(1, gates_per_sample(self.shapes) * self.model_itemsize)
        return compute_gates(self.model, X, self.kind, rows=max(1, self.budget // per_sample))

    def prepare(self, xs):
        X, gates = xs if self.precomputed else (xs, model_gates(self.model, xs, self.kind))
        return X, LayerGates(gates, self.dtype)

    def tile(self, fx, fy) -> torch.Tensor:
        return pair_kernel(self.model, fx[0], fy[0], fx[1], fy[1])

    def work_bytes(self, n: int, m: int) -> int:
        """The pair kernels (the budget) and both sides' float gates."""
        return self.budget + (n + m) * gates_per_sample(self.shapes) * max(self.model_itemsize, dtype_size(self.dtype))


def pair_kernel(model: GatedNet, X: torch.Tensor, Y: torch.Tensor, gx: Sequence[torch.Tensor],
                gy: Sequence[torch.Tensor]) -> torch.Tensor:
    """NPK of one tile: propagate the input pair kernel through the model's op list.

    gx, gy: the gates of X and Y, one float tensor per gated layer, or compact (`npk.kernels.compact`:
    PackedGates / DenseGates, or LayerGates), read as X's dtype, each layer unpacked only when a rule
    reads it as floats (the fused conv kernel reads the packed bits). A first run of gated convs that the fused
    conv kernel takes (`npk.kernels.conv_fast`) forms the input pair kernel itself.
    """
    gx, gy = (g if isinstance(g, LayerGates) else LayerGates(g, X.dtype) for g in (gx, gy))
    ctx = GatePair(gx, gy, model_selections(model, X), model_selections(model, Y), graph.kept_gates(model.ops))
    fused = conv_fast.input_run(model, X, Y, ctx)
    M, start = fused if fused else (input_kernel(model, X, Y), 0)
    H = propagate(model.ops[start:], Pair(M, "sum", X.shape[1]), ctx).summed()
    if not torch.isfinite(H).all():
        raise OverflowError(f"the NPK overflowed {H.dtype}: it sums every path, about prod over layers of "
                            f"(kernel taps x channels / 2), beyond the dtype's range for deep wide nets; "
                            f"compute it in float64 (model.double(), X.double())")
    return H


def input_kernel(model: GatedNet, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """M(i, i') = sum_c x(i, c) x'(i', c), or the channel count for an all-ones value input."""
    if model.value_input == "ones":
        spatial = X.shape[2:]
        return torch.full((len(X), len(Y), *spatial, *spatial), float(X.shape[1]), dtype=X.dtype, device=X.device)
    return overlap(X, Y)


@dataclass
class GatePair:
    """The gates of the two sides of a block (one tensor per gated layer each), as the op rules read them.

    gx, gy: `LayerGates` (a sequence of tensors, or compact gates, is wrapped); sx, sy: the max-pool
    selections of each side; keep: the ids of the gates whose output keeps one kernel per channel
    (`npk.graph.kept_gates`).
    """

    gx: LayerGates
    gy: LayerGates
    sx: Sequence[torch.Tensor] = ()
    sy: Sequence[torch.Tensor] = ()
    keep: frozenset | set = frozenset()

    def __post_init__(self):
        self.gx, self.gy = (g if isinstance(g, LayerGates) else LayerGates(g) for g in (self.gx, self.gy))


@dataclass
class Pair:
    """The pair kernel and how it reads the stream's channels (`npk.graph.kept_gates`).

    "sum":  M (n, m, *S, *S) is summed over the last unit's channel (after a gate; the input)
    "each": M is the kernel of every one of the C channels (after a weight layer; the sum is C M)
    "chan": M (n * C, m, *S, *S) holds one kernel per channel, sample-major
    Spatial rules act on M's axes from 2 on, so they read all three the same way.
    """

    M: torch.Tensor
    kind: str
    C: int
    fresh: bool = False     # M is this state's own tensor (no other state reads it): rules may overwrite it

    def summed(self) -> torch.Tensor:
        if self.kind == "each":
            return self.M * self.C
        if self.kind == "chan":
            return self.M.reshape(-1, self.C, *self.M.shape[1:]).sum(1)
        return self.M

    def per_channel(self) -> torch.Tensor:
        """(n, C or 1, m, *S, *S): the channel kernels (a broadcast axis of 1 for "each")."""
        if self.kind == "sum":
            raise ValueError("the NPK summed this stream's channels already (npk.graph.kept_gates should "
                             "have kept them)")
        return self.M.reshape(-1, self.C if self.kind == "chan" else 1, *self.M.shape[1:])


def propagate(ops: Sequence[graph.Op], state: Pair | torch.Tensor, ctx: GatePair) -> Pair | torch.Tensor:
    """Carry the pair kernel through `ops`: runs of gated convs by the fused rules of `conv_fast`, the
    channel-aware ops here, the rest by `pair_rule`.

    Given a tensor (a summed input kernel), returns the summed tensor, planning the channels itself.
    """
    if isinstance(state, torch.Tensor):
        ctx = GatePair(ctx.gx, ctx.gy, ctx.sx, ctx.sy, graph.kept_gates(ops))
        return propagate(ops, Pair(state, "sum", 1), ctx).summed()
    i = 0
    while i < len(ops):
        fused = conv_fast.fused_run(ops, i, state.summed(), ctx) if conv_fast.starts_run(ops, i, ctx) else None
        if fused:
            state, i = Pair(fused[0], "sum", 1), fused[1]
            continue
        op, i = ops[i], i + 1
        if isinstance(op, graph.MaxPool) and i > 1 and isinstance(ops[i - 2], graph.Gate):
            continue                                # read with its gate (`graph.validate`: always after one)
        if isinstance(op, graph.Gate) and i < len(ops) and isinstance(ops[i], graph.MaxPool):
            state = gated_select_rule(op, ops[i], state, ctx)
        elif isinstance(op, graph.Gate):
            state = gate_rule(op, state, ctx)
        elif isinstance(op, graph.Residual):
            shared = Pair(state.M, state.kind, state.C)     # both branches read it: not fresh
            state = _add(propagate(op.skip, shared, ctx), propagate(op.block, shared, ctx))
        elif isinstance(op, graph.Linear):
            state = Pair(pair_rule(op, state.summed(), ctx), "each", op.module.weight.shape[0])
        elif isinstance(op, (graph.Flatten, graph.Readout)):
            state = Pair(pair_rule(op, state.summed(), ctx), "sum", 1)
        else:
            state = Pair(pair_rule(op, state.M, ctx), state.kind, state.C)
    return state


def _add(a: Pair, b: Pair) -> Pair:
    """Residual: skip(M) + block(M) (the paths of the two branches are disjoint classes)."""
    if a.kind == b.kind and a.C == b.C:
        return Pair(a.M + b.M, a.kind, a.C, fresh=True)
    if "sum" in (a.kind, b.kind):
        return Pair(a.summed() + b.summed(), "sum", 1)
    C = max(a.C, b.C)
    return Pair((a.per_channel() + b.per_channel()).flatten(0, 1), "chan", C, fresh=True)


def overlap(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """ov(i, i') = sum_c A(i, c) B(i', c) for A (n, C, *S), B (m, C, *S): shape (n, m, *S, *S)."""
    n, m, C, spatial = len(A), len(B), A.shape[1], A.shape[2:]
    if not spatial:
        return A @ B.T
    P = math.prod(spatial)
    a = A.reshape(n, C, P).transpose(1, 2).reshape(n * P, C)
    b = B.reshape(m, C, P).transpose(1, 2).reshape(m * P, C)
    return (a @ b.T).reshape(n, P, m, P).transpose(1, 2).reshape(n, m, *spatial, *spatial)


# ------------------------------------------------------------------------------------ op rules
def gate_rule(op: graph.Gate, state: Pair, ctx: GatePair) -> Pair:
    """M_c(i, i') <- G(i, c) G'(i', c) M_c(i, i'), summed over c unless the plan keeps the channels."""
    return _gated(state, ctx.gx[op.layer], ctx.gy[op.layer], id(op) in ctx.keep)


def gated_select_rule(gate: graph.Gate, pool: graph.MaxPool, state: Pair, ctx: GatePair) -> Pair:
    """A gate then a max pool, in the cheaper order: select first, then gate at the selected positions,
    M_c(o, o') <- G(sel_x(o, c), c) G'(sel_x'(o', c), c) M_c(sel_x(o, c), sel_x'(o', c))."""
    sx, sy = ctx.sx[pool.index], ctx.sy[pool.index]
    gx, gy = graph.select(ctx.gx[gate.layer], sx), graph.select(ctx.gy[gate.layer], sy)
    return _gated(select_rule(pool, state, ctx), gx, gy, keep=True)


def _gated(state: Pair, gx: torch.Tensor, gy: torch.Tensor, keep: bool) -> Pair:
    if state.kind == "each" and not keep:
        return Pair(overlap(gx, gy).mul_(state.M), "sum", 1)
    n, C, m, spatial = len(gx), gx.shape[1], len(gy), gx.shape[2:]
    P = math.prod(spatial)
    M = state.per_channel().reshape(n, -1, m, P, P)
    M = M.mul_(gx.reshape(n, C, 1, P, 1)) if state.fresh and state.kind == "chan" else M * gx.reshape(n, C, 1, P, 1)
    M.mul_(gy.reshape(m, C, P).transpose(0, 1).reshape(1, C, m, 1, P))
    if keep:
        return Pair(M.reshape(n * C, m, *spatial, *spatial), "chan", C)
    return Pair(M.sum(1).reshape(n, m, *spatial, *spatial), "sum", 1)


def select_rule(op: graph.MaxPool, state: Pair, ctx: GatePair) -> Pair:
    """M_c(o, o') <- M_c(sel_x(o, c), sel_x'(o', c)): each window passes its selected position."""
    sx, sy = ctx.sx[op.index], ctx.sy[op.index]
    n, C, m, out = len(sx), sx.shape[1], len(sy), sx.shape[2:]
    M = state.per_channel()
    P, Q = math.prod(M.shape[3:3 + len(out)]), math.prod(out)
    M = M.reshape(n, M.shape[1], m, P, P).expand(n, C, m, P, P)
    M = M.gather(3, sx.reshape(n, C, 1, Q, 1).expand(n, C, m, Q, P))
    M = M.gather(4, sy.reshape(m, C, Q).permute(1, 0, 2).reshape(1, C, m, 1, Q).expand(n, C, m, Q, Q))
    return Pair(M.reshape(n * C, m, *out, *out), "chan", C)


@singledispatch
def pair_rule(op, M: torch.Tensor, ctx: GatePair) -> torch.Tensor:
    raise TypeError(f"the NPK has no rule for op {op!r}; supported ops: {graph.SUPPORTED_OPS}")


@pair_rule.register
def _(op: graph.Linear, M, ctx):
    if op.is_conv:
        M = conv_sum(M, op.axes)
    return M + 1 if op.has_bias else M


@pair_rule.register
def _(op: graph.Gate, M, ctx):
    return overlap(ctx.gx[op.layer].to(M.dtype), ctx.gy[op.layer].to(M.dtype)).mul_(M)


@pair_rule.register
def _(op: graph.AvgPool, M, ctx):
    d = spatial_dims(M)
    for i, axis in enumerate(op.axes(d)):
        for a in (2 + i, 2 + d + i):
            n = M.shape[a]
            if axis.stride == axis.kernel and axis.pad == (0, 0):   # non-overlapping windows: a reshape
                size = n // axis.kernel
                M = M.narrow(a, 0, size * axis.kernel)
                M = M.reshape(*M.shape[:a], size, axis.kernel, *M.shape[a + 1:]).mean(a + 1)
            else:
                A = op.matrix(axis, n).to(M)
                M = torch.tensordot(M, A, dims=([a], [1])).movedim(-1, a)
    return M


@pair_rule.register
def _(op: graph.GlobalAvgPool, M, ctx):
    return M.flatten(2).mean(-1) if M.dim() > 2 else M


@pair_rule.register
def _(op: graph.Flatten, M, ctx):
    d = spatial_dims(M)
    if d == 0:
        return M
    P = math.prod(M.shape[2:2 + d])
    return M.reshape(*M.shape[:2], P, P).diagonal(dim1=2, dim2=3).sum(-1)


@pair_rule.register
def _(op: graph.Readout, M, ctx):
    return M + 1 if op.has_bias else M


def spatial_dims(M: torch.Tensor) -> int:
    return (M.dim() - 2) // 2


def conv_sum(M: torch.Tensor, axes: Sequence[graph.Axis]) -> torch.Tensor:
    """M(o, o') <- sum_k M(s o + d k - p, s o' + d k - p) over the kernel taps k, one axis at a time.

    The taps are a product over the axes and so is 'both sources inside the image', so the sum over all
    taps factorises into one sum per axis. Outside the image a source is zero or wraps around.
    """
    d = spatial_dims(M)
    for i, axis in enumerate(axes):
        if axis.same_odd:
            M = _axis_shift_sum(M, 2 + i, 2 + d + i, axis.kernel // 2, axis.circular)
        else:
            M = _axis_window_sum(M, 2 + i, 2 + d + i, axis)
    return M


def _axis_window_sum(M: torch.Tensor, a: int, b: int, axis: graph.Axis) -> torch.Tensor:
    """The general tap sum on axes a and b: pad both (zeros or wrap-around), then add strided slices."""
    n = M.shape[a]
    out_size = axis.out_size(n)
    for dim in (a, b):
        M = _pad_axis(M, dim, axis.pad, axis.circular)
    out = None
    for k in range(axis.kernel):
        start = axis.dilation * k
        take = slice(start, start + axis.stride * (out_size - 1) + 1, axis.stride)
        index = [slice(None)] * M.dim()
        index[a] = index[b] = take
        out = M[tuple(index)].clone() if out is None else out.add_(M[tuple(index)])
    return out


def _pad_axis(M: torch.Tensor, dim: int, pad: tuple[int, int], circular: bool) -> torch.Tensor:
    left, right = pad
    if not left and not right:
        return M
    n = M.shape[dim]
    if circular:
        return torch.cat([M.narrow(dim, n - left, left), M, M.narrow(dim, 0, right)], dim)
    shape = list(M.shape)
    shape[dim] = n + left + right
    out = M.new_zeros(shape)
    out.narrow(dim, left, n).copy_(M)
    return out


def _axis_shift_sum(M: torch.Tensor, a: int, b: int, r: int, circular: bool) -> torch.Tensor:
    """sum_{o = -r..r} M(.., i + o, .., i' + o, ..), i along dim a and i' along dim b."""
    out = M.clone()
    for o in range(-r, r + 1):
        runs = _runs(M.shape[a], o, circular) if o else []
        for (da, sa, la), (db, sb, lb) in itertools.product(runs, runs):
            out.narrow(a, da, la).narrow(b, db, lb).add_(M.narrow(a, sa, la).narrow(b, sb, lb))
    return out


def _runs(n: int, o: int, circular: bool) -> list[tuple[int, int, int]]:
    """(start, source start, length) of the runs of i in [0, n) whose i + o is inside (or wraps, mod n)."""
    if circular:
        o %= n
        return [run for run in ((0, o, n - o), (n - o, 0, o)) if run[2] > 0]
    return [(max(0, -o), max(0, o), n - abs(o))] if abs(o) < n else []


# ---------------------------------------------------------------------------------- blocking
def block_size(model: GatedNet, itemsize: int, memory_budget: int) -> int:
    """Samples per block side so that about 4 pair-kernel-sized tensors fit in `memory_budget` bytes.

    A pair kernel that keeps its channels (`npk.graph.kept_gates`) counts C times.
    """
    positions = max([1] + [c * math.prod(s) ** 2 for c, s in _stream_spatial_shapes(model)])
    per_pair = 4 * itemsize * positions
    return max(1, int(math.sqrt(memory_budget / per_pair)))


def _stream_spatial_shapes(model: GatedNet):
    """(channel factor, spatial shape) of the input and of every gate's stream."""
    keep = graph.kept_gates(model.ops)
    kept = {op.layer for op in graph.walk(model.ops) if isinstance(op, graph.Gate) and id(op) in keep}
    with torch.no_grad():
        probe = torch.zeros((1, *model.input_shape), dtype=next(model.parameters()).dtype,
                            device=next(model.parameters()).device)
        yield 1, probe.shape[2:]
        for layer, g in enumerate(model.gates(probe)):
            yield (g.shape[1] if layer in kept else 1), g.shape[2:]


def kernel_gates(model: GatedNet, X: torch.Tensor, kind: str | None) -> list[torch.Tensor]:
    """The model's gates on X (computed in the model's dtype, no autograd), cast to X's dtype."""
    return unpack_gates(model_gates(model, X, kind), X.dtype)
