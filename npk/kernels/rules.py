"""The pair rules of the exact NPK: how each op maps the pair kernel M (`npk.kernels.npk` walks the op list).

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
(`Pair`, `npk.graph.channel_plan`).
The fully connected case is H = (X X^T) * prod_l (G_l G_l^T) (elementwise), with +1 terms for biases.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import singledispatch
from typing import Sequence

import torch

from .. import graph
from .compact import LayerGates


@dataclass
class GatePair:
    """The gates of the two sides of a block (one tensor per gated layer each), as the op rules read them.

    gx, gy: `LayerGates` (a sequence of tensors, or compact gates, is wrapped); sx, sy: the max-pool
    selections of each side; keep: the ids of the gates whose output keeps one kernel per channel
    (`npk.graph.channel_plan`).
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
    """The pair kernel and how it reads the stream's channels (`npk.graph.channel_plan`).

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
            raise ValueError("the NPK summed this stream's channels already (npk.graph.channel_plan should "
                             "have kept them)")
        return self.M.reshape(-1, self.C if self.kind == "chan" else 1, *self.M.shape[1:])


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
