"""The exact neural path kernel H(x, x') = <phi_x, phi_x'> by pair propagation over the op list.

For a block of inputs X (n of them) and Y (m of them) we carry a pair kernel M of shape
(n, m, *S, *S'), S the spatial shape of the stream (empty for dense layers):
M(i, i') = sum over partial path classes s ending at positions i, i' of phi_x(s, i) phi_x'(s, i').

    input            M(i, i') = sum_c x(i, c) x'(i', c)          (all-ones input: the channel count)
    Linear dense     M <- M (+ 1 with a bias: the bias is a path starting at a constant-1 node)
    Linear conv      M(i, i') <- sum_o M(i + o, i' + o) (+ 1)     o over kernel offsets; zero or wrap-around
    Gate(l)          M <- ov_l * M,  ov_l(i, i') = sum_c G_l(x)(i, c) G_l(x')(i', c)
    AvgPool(k)       M <- A M A'^T  (mean over k x k windows on both sides)
    GlobalAvgPool    M <- mean over all (i, i')
    Flatten          M <- sum_i M(i, i)  (a dense layer after it has position-specific weights)
    Residual(block)  M <- M + block(M)   (paths that skip and paths through the block are disjoint)
    Readout          H = M (+ 1)
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
from ..models.base import GatedNet, check_input
from ..models.gates import check_kind
from .compact import compute_gates, gate_bytes, gate_shapes, gates_per_sample, model_gates, unpack_gates
from .gram import TileKernel, available_memory, blocked_gram, dtype_size, preflight
from ..validate import check_gram_request

# bytes for the pair kernels of one block: on a CPU, blocks whose tensors stay under glibc's mmap threshold
# are several times faster than large ones (a large tensor is freshly mapped and page-faulted at every op)
DEFAULT_MEMORY_BUDGET = 32 * 2**20


def npk_gram(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None, gates: str | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool | None = None,
             checkpoint_dir: str | Path | None = None, *, out=None, max_memory: int | None = None,
             scheduler=None) -> torch.Tensor:
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
        return X, unpack_gates(gates, self.dtype)

    def tile(self, fx, fy) -> torch.Tensor:
        return pair_kernel(self.model, fx[0], fy[0], fx[1], fy[1])

    def work_bytes(self, n: int, m: int) -> int:
        """The pair kernels (the budget) and both sides' float gates."""
        return self.budget + (n + m) * gates_per_sample(self.shapes) * max(self.model_itemsize, dtype_size(self.dtype))


def pair_kernel(model: GatedNet, X: torch.Tensor, Y: torch.Tensor, gx: Sequence[torch.Tensor],
                gy: Sequence[torch.Tensor]) -> torch.Tensor:
    """NPK of one tile: propagate the input pair kernel through the model's op list.

    gx, gy: the gates of X and Y, one float tensor per gated layer, or compact (`npk.kernels.compact`:
    PackedGates / DenseGates), unpacked here to X's dtype.
    """
    gx, gy = unpack_gates(gx, X.dtype), unpack_gates(gy, X.dtype)
    if model.value_input == "ones":
        spatial = X.shape[2:]
        M = torch.full((len(X), len(Y), *spatial, *spatial), float(X.shape[1]), dtype=X.dtype, device=X.device)
    else:
        M = overlap(X, Y)
    return propagate(model.ops, M, GatePair(gx, gy))


@dataclass
class GatePair:
    """The gates of the two sides of a block (one tensor per gated layer each), as the op rules read them."""

    gx: Sequence[torch.Tensor]
    gy: Sequence[torch.Tensor]


def propagate(ops: Sequence[graph.Op], M: torch.Tensor, ctx: GatePair) -> torch.Tensor:
    for op in ops:
        M = pair_rule(op, M, ctx)
    return M


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
@singledispatch
def pair_rule(op, M: torch.Tensor, ctx: GatePair) -> torch.Tensor:
    raise TypeError(f"the NPK has no rule for op {op!r}; supported ops: {graph.SUPPORTED_OPS}")


@pair_rule.register
def _(op: graph.Linear, M, ctx):
    if op.is_conv:
        M = shift_sum(M, op.module.kernel_size, op.circular)
    return M + 1 if op.has_bias else M


@pair_rule.register
def _(op: graph.Gate, M, ctx):
    return overlap(ctx.gx[op.layer], ctx.gy[op.layer]).mul_(M)


@pair_rule.register
def _(op: graph.AvgPool, M, ctx):
    k, d = op.kernel_size, spatial_dims(M)
    for axis in range(2, 2 + 2 * d):
        size = M.shape[axis] // k
        M = M.narrow(axis, 0, size * k)
        M = M.reshape(*M.shape[:axis], size, k, *M.shape[axis + 1:]).mean(axis + 1)
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
def _(op: graph.Residual, M, ctx):
    return M + propagate(op.block, M, ctx)


@pair_rule.register
def _(op: graph.Readout, M, ctx):
    return M + 1 if op.has_bias else M


def spatial_dims(M: torch.Tensor) -> int:
    return (M.dim() - 2) // 2


def shift_sum(M: torch.Tensor, kernel_size: Sequence[int], circular: bool) -> torch.Tensor:
    """sum_o M(i + o, i' + o) over the kernel offsets o; outside the image: wrap around or zero.

    The offsets are a product over the spatial axes and so is 'i + o and i' + o inside the image', so
    the sum is taken one axis at a time, adding shifted slices (no rolled copies, no masks).
    """
    d = spatial_dims(M)
    for axis, k in enumerate(kernel_size):
        M = _axis_shift_sum(M, 2 + axis, 2 + d + axis, k // 2, circular)
    return M


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
    """Samples per block side so that about 4 pair-kernel-sized tensors fit in `memory_budget` bytes."""
    positions = max([1] + [math.prod(s) for s in _stream_spatial_shapes(model)])
    per_pair = 4 * itemsize * positions**2
    return max(1, int(math.sqrt(memory_budget / per_pair)))


def _stream_spatial_shapes(model: GatedNet):
    with torch.no_grad():
        probe = torch.zeros((1, *model.input_shape), dtype=next(model.parameters()).dtype,
                            device=next(model.parameters()).device)
        yield probe.shape[2:]
        for g in model.gates(probe):
            yield g.shape[2:]


def kernel_gates(model: GatedNet, X: torch.Tensor, kind: str | None) -> list[torch.Tensor]:
    """The model's gates on X (computed in the model's dtype, no autograd), cast to X's dtype."""
    return unpack_gates(model_gates(model, X, kind), X.dtype)
