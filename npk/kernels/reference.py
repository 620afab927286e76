"""Brute-force path enumeration for tiny gated networks: the ground truth for every NPK rule.

The value network is unrolled into a scalar graph built from the modules themselves (independently
of the pair-propagation rules in `npk.kernels.npk`). Nodes are the scalar units (c, *position) of the
stream after each op, plus a constant-1 source per bias. With L the index of a weight module in forward
order (`npk.graph.modules`) and d the number of spatial axes, the edges are

    Linear dense    unit a -> unit b                         weight id (L, b, a)
    Linear conv     (c, s i + d o - p) -> (c', i)            weight id (L, c', c, *o)   (o the kernel index;
                    PyTorch cross-correlation with stride s, dilation d, left pad p: circular wraps the
                    source, zero padding drops it)
    bias            constant 1 -> every (c', *i) of layer L  weight id (L, 'bias', c')
    Gate(l)         no edge: a path through unit u picks up the factor G_l(x)(u)
    AvgPool         (c, *i) -> (c, *o) for i in o's window   constant prod over axes of A[o, i]
    MaxPool         (c, *i) -> (c, *o)                       the factor 1{i = sel_x(o, c)} (like a gate)
    GlobalAvgPool   (c, *i) -> (c,)                          constant 1/P, P = number of positions
    Flatten         (c, *i) -> (c * P + flat(i),)            constant 1 (channel-major, like torch.flatten)
    Residual        the paths through the skip branch (identity: constant 1) plus those through the block
    Readout         unit a -> output j                       weight W_R[j, a]; bias b_R[j] from a constant 1

A path's monomial is the tuple of the weight ids it uses, in layer order; paths with the same monomial
have the same value and form one path class. The readout weight is the only one that names the output
j, and no gate follows it, so a class drops j and keeps the readout's input unit:

    class          (hidden weight ids ..., (R, a))     or   ((R, 'bias'),)  for the readout bias
    Phi[x, class]  = sum over the paths p of the class of  x(p_0) * prod_l G_l(x)(p_l) * constants(p)
                     (x(p_0) is 1 for a bias source or an all-ones value input)
    v[class, j]    = product of the class's hidden weights * W_R[j, a]   (b_R[j] for the readout bias)

Then model(X) = Phi v for every output j, and Phi Phi^T is the NPK of one output node, the quantity
`npk.kernels.npk.npk_gram` computes. The enumeration is a dynamic programme over the ops whose state is
the set of partial classes (node, monomial) with one contribution per sample; its size grows like the
product of the layers' fan-ins, so it is for tiny networks only (`max_classes`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import singledispatch
from typing import Sequence

import numpy as np
import torch
from scipy import sparse

from .. import graph
from ..models.base import GatedNet, check_input

DEFAULT_MAX_CLASSES = 200_000  # partial path classes held at any point of the enumeration


def path_features(model: GatedNet, X: torch.Tensor, gates: str | Sequence[torch.Tensor] | None = None,
                  max_classes: int = DEFAULT_MAX_CLASSES) -> tuple[torch.Tensor, list[tuple]]:
    """The neural path feature matrix Phi (N, number of classes) and the classes (module docstring).

    Phi is summed in float64 and returned in X's dtype.

    gates: None uses `model.gates(X)`; "hard" / "soft" recomputes them of that kind; or a list with one
    tensor per gated layer, shaped like the model's gates, to enumerate with gates of your own.
    """
    X = check_input(X, model.input_shape, "X")
    check_size(model, max_classes)
    gs = _gate_arrays(model, X, gates)
    with torch.no_grad():
        sels = [s.cpu().numpy().reshape(len(X), s.shape[1], -1) for s in model.selections(X.to(model_dtype(model)))]
    x = X.detach().cpu().double().numpy().reshape(len(X), -1)
    if model.value_input == "ones":
        x = np.ones_like(x)
    nodes = list(np.ndindex(*model.input_shape))
    state = _Paths(tuple(model.input_shape), [(node, ()) for node in nodes], x.T.copy())
    walker = _Walker(gs, {id(m): L for L, m in enumerate(graph.modules(model.ops))}, len(X), sels)
    for op in model.ops[:-1]:
        state = _step(op, state, walker)
    phi, classes = _readout(model.ops[-1], state, walker)
    return torch.from_numpy(phi.T.copy()).to(X.dtype), classes


def path_values(model: GatedNet, classes: Sequence[tuple]) -> torch.Tensor:
    """The neural path values v (number of classes, d_out) of `classes`, in the weights' dtype."""
    mods = graph.modules(model.ops)
    weights = [(m.weight.detach().cpu().double().numpy(),
                None if m.bias is None else m.bias.detach().cpu().double().numpy()) for m in mods]
    d_out = mods[-1].out_features
    v = np.empty((len(classes), d_out))
    for k, cls in enumerate(classes):
        *hidden, (R, a) = cls
        W, b = weights[R]
        last = b if a == "bias" else W[:, a]
        v[k] = math.prod(_weight(weights, wid) for wid in hidden) * last
    return torch.from_numpy(v).to(mods[-1].weight.dtype)


def reference_output(model: GatedNet, X: torch.Tensor) -> torch.Tensor:
    """model(X) computed as Phi v, the sum over path classes of feature times value."""
    phi, classes = path_features(model, X)
    v = path_values(model, classes)
    return phi.to(v.dtype) @ v


def reference_npk(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None,
                  gates: str | None = None) -> torch.Tensor:
    """The NPK Gram matrix Phi(X) Phi(Y)^T by explicit enumeration, shape (N, M), in X's dtype."""
    X = check_input(X, model.input_shape, "X")
    if Y is None:
        phi, _ = path_features(model, X, gates)
        return phi @ phi.T
    Y = check_input(Y, model.input_shape, "Y")
    phi, _ = path_features(model, torch.cat([X, Y.to(X.dtype)]), gates)
    return phi[:len(X)] @ phi[len(X):].T


# --------------------------------------------------------------------------------------- size
def check_size(model: GatedNet, max_classes: int = DEFAULT_MAX_CLASSES) -> int:
    """An upper bound on the partial path classes the enumeration holds; ValueError above `max_classes`."""
    *_, peak = _count(model.ops[:-1], tuple(model.input_shape), math.prod(model.input_shape))
    if peak > max_classes:
        raise ValueError(f"this network has up to {peak:,} partial path classes, more than the limit "
                         f"max_classes={max_classes:,} for brute-force path enumeration; use a tiny network "
                         f"(smaller widths / fewer channels, fewer layers, a smaller input or kernel), "
                         f"or raise max_classes")
    return peak


def _count(ops, shape, count):
    """(shape, number of partial classes, peak) after `ops`: linear layers multiply by the fan-out."""
    peak = count
    for op in ops:
        if isinstance(op, graph.Residual):
            skip_shape, skipped, skip_peak = _count(op.skip, shape, count)
            shape, inner, inner_peak = _count(op.block, shape, count)
            count, peak = skipped + inner, max(peak, inner_peak, skip_peak)
        elif isinstance(op, graph.Linear):
            m = op.module
            if op.is_conv:
                fan_out = m.out_channels * math.prod(_most_reads(a, n) for a, n in zip(op.axes, shape[1:]))
                shape = (m.out_channels, *(a.out_size(n) for a, n in zip(op.axes, shape[1:])))
                count = count * fan_out + op.has_bias * math.prod(shape)
            else:
                shape = (m.out_features,)
                count = count * m.out_features + op.has_bias * m.out_features
        elif not isinstance(op, graph.Gate):
            shape = graph.shape_after(op, shape)
        peak = max(peak, count)
    return shape, count, peak


def _most_reads(axis: graph.Axis, n: int) -> int:
    """The most (output, tap) pairs that read one input position along an axis of length n."""
    reads = [0] * n
    for o in range(axis.out_size(n)):
        for k in range(axis.kernel):
            p = axis.source(n, o, k)
            if p is not None:
                reads[p] += 1
    return max(reads)


# ----------------------------------------------------------------------------------- enumeration
@dataclass
class _Paths:
    """Partial path classes: keys[k] = (node, monomial), rows[k] = its contribution for each sample."""

    shape: tuple[int, ...]
    keys: list[tuple]
    rows: np.ndarray


@dataclass
class _Walker:
    gates: list[np.ndarray]      # per gated layer, (N, number of units)
    layer_of: dict[int, int]     # id(module) -> L
    n: int
    selections: list[np.ndarray]  # per max pool, (N, C, outputs): the selected flat input position


def _route(state: _Paths, edges, shape: tuple[int, ...], walker: _Walker, per_sample=None) -> _Paths:
    """Follow `edges` = (source row or -1 for a constant 1, new key, constant factor); equal keys add up.

    per_sample (edges, N), if given, multiplies each edge's contribution sample by sample.
    """
    index: dict[tuple, int] = {}
    src, dst, scale = [], [], []
    for s, key, c in edges:
        dst.append(index.setdefault(key, len(index)))
        src.append(s if s >= 0 else len(state.keys))
        scale.append(c)
    rows = np.vstack([state.rows, np.ones((1, walker.n))])
    if per_sample is None:
        A = sparse.coo_matrix((scale, (dst, src)), shape=(len(index), len(state.keys) + 1)).tocsr()
        return _Paths(shape, list(index), A @ rows)
    A = sparse.coo_matrix((scale, (dst, range(len(dst)))), shape=(len(index), len(dst))).tocsr()
    return _Paths(shape, list(index), A @ (rows[src] * per_sample))


@singledispatch
def _step(op, state: _Paths, walker: _Walker) -> _Paths:
    raise TypeError(f"path enumeration has no rule for op {op!r}; supported ops: {graph.SUPPORTED_OPS}")


@_step.register
def _(op: graph.Linear, state, walker):
    L, m = walker.layer_of[id(op.module)], op.module
    if not op.is_conv:
        _require_dense(state, op)
        out = m.out_features
        edges = [(k, ((b,), mono + ((L, b, a),)), 1.0)
                 for k, ((a,), mono) in enumerate(state.keys) for b in range(out)]
        bias = [(-1, ((b,), ((L, "bias", b),)), 1.0) for b in range(out)]
        return _route(state, edges + (bias if op.has_bias else []), (out,), walker)
    spatial, axes = state.shape[1:], op.axes
    out_spatial = tuple(a.out_size(n) for a, n in zip(axes, spatial))
    moves = {p: [] for p in np.ndindex(*spatial)}
    for i in np.ndindex(*out_spatial):
        for o in itertools.product(*map(range, m.kernel_size)):
            p = tuple(a.source(n, ii, oi) for a, n, ii, oi in zip(axes, spatial, i, o))
            if None not in p:
                moves[p].append((i, o))
    edges = [(k, ((c2, *i), mono + ((L, c2, c, *o),)), 1.0)
             for k, ((c, *p), mono) in enumerate(state.keys) for i, o in moves[tuple(p)]
             for c2 in range(m.out_channels)]
    bias = [(-1, ((c2, *i), ((L, "bias", c2),)), 1.0)
            for c2 in range(m.out_channels) for i in np.ndindex(*out_spatial)]
    return _route(state, edges + (bias if op.has_bias else []), (m.out_channels, *out_spatial), walker)


@_step.register
def _(op: graph.Gate, state, walker):
    g = walker.gates[op.layer]
    if g.shape[1] != math.prod(state.shape):
        raise ValueError(f"gates of layer {op.layer} have {g.shape[1]} units per sample, the stream has "
                         f"shape {state.shape}")
    return _Paths(state.shape, state.keys, state.rows * g[:, _flat_index(state)].T)


@_step.register
def _(op: graph.AvgPool, state, walker):
    (C, *spatial) = state.shape
    axes = op.axes(len(spatial))
    A = [op.matrix(a, n).numpy() for a, n in zip(axes, spatial)]
    pooled = tuple(len(a) for a in A)
    edges = [(j, ((c, *o), mono), math.prod(a[oi, pi] for a, oi, pi in zip(A, o, p)))
             for j, ((c, *p), mono) in enumerate(state.keys) for o in np.ndindex(*pooled)
             if all(a[oi, pi] for a, oi, pi in zip(A, o, p))]
    return _route(state, edges, (C, *pooled), walker)


@_step.register
def _(op: graph.MaxPool, state, walker):
    sel = walker.selections[op.index]                           # (N, C, outputs)
    (C, *spatial) = state.shape
    out = graph.shape_after(op, state.shape)
    chosen: dict[tuple[int, int], list[int]] = {}                 # (c, input position) -> outputs selecting it
    _, cs, outs = np.indices(sel.shape).reshape(3, -1)
    for c, o, p in set(zip(cs.tolist(), outs.tolist(), sel.ravel().tolist())):
        chosen.setdefault((c, p), []).append(o)
    edges, weights = [], []
    for j, ((c, *p), mono) in enumerate(state.keys):
        flat = int(np.ravel_multi_index(tuple(p), spatial))
        for o in chosen.get((c, flat), ()):
            edges.append((j, ((c, *map(int, np.unravel_index(o, out[1:]))), mono), 1.0))
            weights.append(sel[:, c, o] == flat)
    return _route(state, edges, out, walker, np.array(weights, dtype=float).reshape(len(edges), walker.n))


@_step.register
def _(op: graph.GlobalAvgPool, state, walker):
    P = math.prod(state.shape[1:])
    edges = [(j, ((node[0],), mono), 1.0 / P) for j, (node, mono) in enumerate(state.keys)]
    return _route(state, edges, state.shape[:1], walker)


@_step.register
def _(op: graph.Flatten, state, walker):
    edges = [(j, ((a,), mono), 1.0) for j, (a, (_, mono)) in enumerate(zip(_flat_index(state).tolist(), state.keys))]
    return _route(state, edges, (math.prod(state.shape),), walker)


@_step.register
def _(op: graph.Residual, state, walker):
    inner, skipped = state, state
    for block_op in op.block:
        inner = _step(block_op, inner, walker)
    for skip_op in op.skip:
        skipped = _step(skip_op, skipped, walker)
    if inner.shape != skipped.shape:
        raise ValueError(f"a residual block's branches must end in the same shape, got {skipped.shape} (skip) "
                         f"and {inner.shape} (block)")
    both = _Paths(inner.shape, skipped.keys + inner.keys, np.vstack([skipped.rows, inner.rows]))
    if len(set(both.keys)) == len(both.keys):  # a block with a weight layer: every key is new
        return both
    return _route(both, [(j, key, 1.0) for j, key in enumerate(both.keys)], inner.shape, walker)


def _readout(op: graph.Readout, state: _Paths, walker: _Walker) -> tuple[np.ndarray, list[tuple]]:
    """The classes' feature rows (classes, N): the readout's input unit a closes each class."""
    _require_dense(state, op)
    R = walker.layer_of[id(op.module)]
    classes = [mono + ((R, a),) for (a,), mono in state.keys]
    rows = state.rows
    if op.has_bias:
        classes.append(((R, "bias"),))
        rows = np.vstack([rows, np.ones((1, walker.n))])
    return rows, classes


def _flat_index(state: _Paths) -> np.ndarray:
    """Each key's node as an index into the flattened stream (channel-major)."""
    nodes = np.array([node for node, _ in state.keys], dtype=np.int64).reshape(len(state.keys), len(state.shape))
    return np.ravel_multi_index(tuple(nodes.T), state.shape)


def _require_dense(state: _Paths, op) -> None:
    if len(state.shape) != 1:
        raise ValueError(f"a dense layer ({op.module}) needs a flat stream, got shape {state.shape}; "
                         f"put Flatten or GlobalAvgPool before it")


def _weight(weights, wid: tuple) -> float:
    L, *idx = wid
    W, b = weights[L]
    return float(b[idx[1]]) if idx[0] == "bias" else float(W[tuple(idx)])


def model_dtype(model: GatedNet) -> torch.dtype:
    return next(model.parameters()).dtype


def _gate_arrays(model: GatedNet, X: torch.Tensor, gates) -> list[np.ndarray]:
    """The gates as (N, units) float64 arrays: the model's (of kind `gates`) or the tensors given."""
    if gates is None or isinstance(gates, str):
        with torch.no_grad():
            gates = model.gates(X.to(model_dtype(model)), gates)
    if len(gates) != model.n_gated:
        raise ValueError(f"need one gate tensor per gated layer ({model.n_gated}), got {len(gates)}")
    out = []
    for layer, g in enumerate(gates):
        g = torch.as_tensor(g)
        if len(g) != len(X):
            raise ValueError(f"gates of layer {layer} have {len(g)} rows, X has {len(X)}")
        out.append(g.detach().cpu().double().numpy().reshape(len(X), -1))
    return out
