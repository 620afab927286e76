"""The pair rules of the exact NPK: how each op maps the pair kernel M (`npk.kernels.npk` walks the op list).

For a block of inputs X (n of them) and Y (m of them) we carry a pair kernel M of shape
(n, m, *S, *S'), S the spatial shape of the stream (empty for dense layers):
M(i, i') = sum over partial path classes s ending at positions i, i' of phi_x(s, i) phi_x'(s, i').

    input            M(i, i') = sum_c x(i, c) x'(i', c)          (all-ones input: the channel count)
    Linear dense     M <- M (+ 1 with a bias: the bias is a path starting at a constant-1 node)
    Linear conv      M(o, o') <- sum_k M(s o + d k - p, s o' + d k - p) (+ 1)   k over the kernel taps,
                     s the stride, d the dilation, p the left pad; outside the image: zero or wrap-around
    Gate(l)          M <- ov_l * M,  ov_l(i, i') = sum_c G_l(x)(i, c) G_l(x')(i', c)
    MaxPool          M_c(o, o') <- M_c(sel_x(o, c), sel_x'(o', c))   (each window passes its selected input);
                     after Gate(l), read through the channel sum: M(o, o') <- sum_c G_l(x)(sel_x(o, c), c)
                     G_l(x')(sel_x'(o', c), c) M(sel_x(o, c), sel_x'(o', c)), never per channel
    AvgPool          M <- A M A^T  on every spatial axis, both sides (A the window-averaging matrix)
    GlobalAvgPool    M <- mean over all (i, i')
    Flatten          M <- sum_i M(i, i)  (a dense layer after it has position-specific weights)
    Residual         M <- skip(M) + block(M)   (paths through the two branches are disjoint classes)
    Readout          H = M (+ 1)
A gate whose stream reaches another gate or a max pool without a weight layer in between (an identity
shortcut into a ReLU, a ReLU into a max pool) keeps its channels (`Pair`, `npk.graph.kept_gates`):
as a few shared kernels under per-channel gate masks, M_c = sum_k A_k(c) B_k(c) E_k (identity shortcuts:
gates multiply the masks, the sum over c is sum_k E_k * overlap(A_k, B_k)), or as one kernel M_c per channel.
The fully connected case is H = (X X^T) * prod_l (G_l G_l^T) (elementwise), with +1 terms for biases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import singledispatch
from typing import Sequence

import torch

from .. import graph
from . import conv_fast
from .compact import LayerGates
from .offsets import conv_sum, overlap, spatial_dims


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
    "terms": the channel kernels as a few shared kernels E_k under 0/1 or soft masks A_k, B_k (n / m, C, *S),
             M_c(i, i') = sum_k A_k(i, c) B_k(i', c) E_k(i, i')   (`terms`: [(E_k, A_k, B_k, hard)]; M unused).
             A gate multiplies the masks, a residual sum joins the lists, and the channel sum is
             sum_k E_k * overlap(A_k, B_k): identity shortcuts into ReLUs cost K kernels and K overlaps,
             not C kernels (K: the branches since the last weight layer)
    Spatial rules act on M's axes from 2 on, so they read "sum", "each" and "chan" the same way.
    """

    M: torch.Tensor | None
    kind: str
    C: int
    fresh: bool = False     # M is this state's own tensor (no other state reads it): rules may overwrite it
    terms: list = field(default_factory=list)

    def summed(self) -> torch.Tensor:
        if self.kind == "each":
            return self.M * self.C
        if self.kind == "chan":
            return self.M.reshape(-1, self.C, *self.M.shape[1:]).sum(1)
        if self.kind == "terms":
            return sum(conv_fast.exact_overlap(A, B, E.dtype, hard).mul_(E) for E, A, B, hard in self.terms)
        return self.M

    def per_channel(self) -> torch.Tensor:
        """(n, C or 1, m, *S, *S): the channel kernels (a broadcast axis of 1 for "each")."""
        if self.kind == "sum":
            raise ValueError("the NPK summed this stream's channels already (npk.graph.kept_gates should "
                             "have kept them)")
        if self.kind == "terms":
            return self.dense().per_channel()
        return self.M.reshape(-1, self.C if self.kind == "chan" else 1, *self.M.shape[1:])

    def dense(self) -> Pair:
        """This state with one kernel per channel ("chan") if it is "terms" (itself otherwise)."""
        if self.kind != "terms":
            return self
        E, A, B, _ = self.terms[0]
        n, m, C, spatial = len(A), len(B), self.C, A.shape[2:]
        P = math.prod(spatial)
        M = sum(E.reshape(n, 1, m, P, P) * A.reshape(n, C, 1, P, 1)
                * B.reshape(m, C, P).transpose(0, 1).reshape(1, C, m, 1, P) for E, A, B, _ in self.terms)
        return Pair(M.reshape(n * C, m, *spatial, *spatial), "chan", C, fresh=True)

    def as_terms(self) -> list:
        """The terms of a "terms" or "each" state (an "each" kernel is one term under all-ones masks)."""
        if self.kind == "terms":
            return self.terms
        n, m, d = self.M.shape[0], self.M.shape[1], spatial_dims(self.M)
        ones = lambda k: self.M.new_ones((k, self.C, *self.M.shape[2:2 + d]))     # noqa: E731
        return [(self.M, ones(n), ones(m), True)]


# ------------------------------------------------------------------------------------ op rules
def gate_rule(op: graph.Gate, state: Pair, ctx: GatePair) -> Pair:
    """M_c(i, i') <- G(i, c) G'(i', c) M_c(i, i'), summed over c unless the plan keeps the channels.

    On shared kernels ("each", "terms") the gates multiply the masks of `Pair`'s "terms": A_k <- G A_k."""
    gx, gy = ctx.gx[op.layer], ctx.gy[op.layer]
    if state.kind in ("each", "terms") and (id(op) in ctx.keep or state.kind == "terms"):
        hard = conv_fast.hard_gates(ctx, [op.layer])
        terms = Pair(None, "terms", state.C, terms=[(E, A * gx, B * gy, h and hard) for E, A, B, h in state.as_terms()])
        return terms if id(op) in ctx.keep else Pair(terms.summed(), "sum", 1)
    return _gated(state, gx, gy, id(op) in ctx.keep)


def gated_select_rule(gate: graph.Gate, pool: graph.MaxPool, state: Pair, ctx: GatePair, summed: bool = False) -> Pair:
    """A gate then a max pool, in the cheaper order: select first, then gate at the selected positions,
    M_c(o, o') <- G(sel_x(o, c), c) G'(sel_x'(o', c), c) M_c(sel_x(o, c), sel_x'(o', c)).

    With `summed` (the next op sums the channels) and one kernel M shared by all channels (after a
    weight layer), the sum is taken at once at the pooled resolution (`conv_fast.select_sum`):
    M(o, o') <- sum_c G(sel_x(o, c), c) G'(sel_x'(o', c), c) M(sel_x(o, c), sel_x'(o', c))."""
    sx, sy = ctx.sx[pool.index], ctx.sy[pool.index]
    gx, gy = graph.select(ctx.gx[gate.layer], sx), graph.select(ctx.gy[gate.layer], sy)
    if summed and state.kind == "each":
        M = conv_fast.select_sum(state.M, sx, sy, gx, gy)
        if M is not None:
            return Pair(M, "sum", 1)
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


# ------------------------------------------------------------------------------------ channel sums
def sums_channels(ops: Sequence[graph.Op], i: int) -> bool:
    """Whether the stream at ops[i] is read only through its channel sum: by a weight layer, Flatten or the
    Readout, after average pools (linear in each channel, they commute with the sum)."""
    while i < len(ops) and isinstance(ops[i], (graph.AvgPool, graph.GlobalAvgPool)):
        i += 1
    return i < len(ops) and isinstance(ops[i], (graph.Linear, graph.Flatten, graph.Readout))


def collapsed_gates(ops: Sequence[graph.Op]) -> set[int]:
    """Layers of the gates whose channels `gated_select_rule` sums at once with their max pool's selection
    (a max pool whose stream is read through its channel sum, on a CPU with the extension built)."""
    if conv_fast.extension() is None:
        return set()
    return pooled_gates(ops, lambda seq, i: sums_channels(seq, i + 2))


def pooled_gates(ops: Sequence[graph.Op], where=lambda seq, i: True) -> set[int]:
    """Layers of the gates right before a max pool (at ops `where(seq, i)` holds), residual blocks included."""
    found = set()

    def visit(seq):
        for i, op in enumerate(seq):
            if (isinstance(op, graph.Gate) and i + 1 < len(seq) and isinstance(seq[i + 1], graph.MaxPool)
                    and where(seq, i)):
                found.add(op.layer)
            if isinstance(op, graph.Residual):
                visit(op.block)
                visit(op.skip)

    visit(ops)
    return found
