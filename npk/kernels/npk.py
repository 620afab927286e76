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
import json
import math
import os
from dataclasses import dataclass
from functools import singledispatch
from pathlib import Path
from typing import Sequence

import torch

from .. import graph
from . import conv_fast
from ..models.base import GatedNet, check_input

# bytes for the pair kernels of one block: on a CPU, blocks whose tensors stay under glibc's mmap threshold
# are several times faster than large ones (a large tensor is freshly mapped and page-faulted at every op)
DEFAULT_MEMORY_BUDGET = 32 * 2**20


def npk_gram(model: GatedNet, X: torch.Tensor, Y: torch.Tensor | None = None, gates: str | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool | None = None,
             checkpoint_dir: str | Path | None = None) -> torch.Tensor:
    """The NPK Gram matrix H[a, b] = <phi_{X_a}, phi_{Y_b}> of `model`'s gates, shape (N, M).

    gates: None uses the model's own gates; "hard" / "soft" recomputes them from the same pre-activations.
    The result has X's dtype and device (gates are computed in the model's dtype, then cast). Blocks of
    sample pairs are sized so that the pair kernel of a block stays under `memory_budget` bytes. With
    `checkpoint_dir`, every finished block is saved there (atomically) and a rerun skips the saved ones.
    """
    if not isinstance(model, GatedNet):
        raise TypeError(f"npk_gram needs an npk gated model (npk.models.*), got {type(model).__name__}; "
                        f"wrap a ReLU nn.Sequential with npk.models.from_sequential")
    X = check_input(X, model.input_shape, "X")
    symmetric = Y is None
    Y = X if symmetric else check_input(Y, model.input_shape, "Y")
    if Y.dtype != X.dtype or Y.device != X.device:
        raise ValueError(f"X and Y must share dtype and device, got {X.dtype}/{X.device} and {Y.dtype}/{Y.device}")
    gx = kernel_gates(model, X, gates)
    gy = gx if symmetric else kernel_gates(model, Y, gates)
    block = block_size(model, X.element_size(), memory_budget)
    H = torch.empty(len(X), len(Y), dtype=X.dtype, device=X.device)
    pairs = [(r, c) for r in range(0, len(X), block) for c in range(0, len(Y), block) if not symmetric or c >= r]
    store = BlockStore(checkpoint_dir, (len(X), len(Y), block, symmetric)) if checkpoint_dir else None
    bar = _progress(len(pairs), progress)
    for r, c in pairs:
        rs, cs = slice(r, r + block), slice(c, c + block)
        done = store.load(r, c) if store else None
        if done is None:
            done = pair_kernel(model, X[rs], Y[cs], [g[rs] for g in gx], [g[cs] for g in gy])
            if store:
                store.save(r, c, done)
        H[rs, cs] = done.to(H)
        if symmetric and c != r:
            H[cs, rs] = H[rs, cs].T
        bar.update()
    bar.close()
    return H


def pair_kernel(model: GatedNet, X: torch.Tensor, Y: torch.Tensor, gx: Sequence[torch.Tensor],
                gy: Sequence[torch.Tensor]) -> torch.Tensor:
    """NPK of one block: propagate the input pair kernel through the model's op list."""
    ctx = GatePair(gx, gy)
    fused = conv_fast.input_run(model, X, Y, ctx)       # a first conv run that forms the input kernel itself
    M, start = fused if fused else (input_kernel(model, X, Y), 0)
    return propagate(model.ops[start:], M, ctx)


def input_kernel(model: GatedNet, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """M(i, i') = sum_c x(i, c) x'(i', c), or the channel count for an all-ones value input."""
    if model.value_input == "ones":
        spatial = X.shape[2:]
        return torch.full((len(X), len(Y), *spatial, *spatial), float(X.shape[1]), dtype=X.dtype, device=X.device)
    return overlap(X, Y)


@dataclass
class GatePair:
    """The gates of the two sides of a block (one tensor per gated layer each), as the op rules read them."""

    gx: Sequence[torch.Tensor]
    gy: Sequence[torch.Tensor]


def propagate(ops: Sequence[graph.Op], M: torch.Tensor, ctx: GatePair) -> torch.Tensor:
    """Apply the op rules in order; runs of gated convs go to the fused rules of `conv_fast`."""
    i = 0
    while i < len(ops):
        fused = conv_fast.fused_run(ops, i, M, ctx)
        M, i = fused if fused else (pair_rule(ops[i], M, ctx), i + 1)
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
    return overlap(ctx.gx[op.layer].to(M.dtype), ctx.gy[op.layer].to(M.dtype)).mul_(M)


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
    param = next(model.parameters())
    with torch.no_grad():
        return [g.to(X.dtype) for g in model.gates(X.to(param.dtype), kind)]


class BlockStore:
    """Finished Gram blocks on disk, written atomically; `key` (shapes, block size) must match on resume."""

    def __init__(self, directory: str | Path, key: tuple):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "blocks.json"
        if meta.exists() and json.loads(meta.read_text()) != list(key):
            raise ValueError(f"{self.dir} holds Gram blocks of another computation (N, M, block, symmetric = "
                             f"{json.loads(meta.read_text())}, now {list(key)}); use an empty checkpoint_dir")
        atomic_write(meta, lambda path: Path(path).write_text(json.dumps(list(key))))

    def load(self, r: int, c: int) -> torch.Tensor | None:
        path = self.dir / f"block_{r}_{c}.pt"
        return torch.load(path) if path.exists() else None

    def save(self, r: int, c: int, block: torch.Tensor) -> None:
        atomic_write(self.dir / f"block_{r}_{c}.pt", lambda path: torch.save(block.cpu(), path))


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) and move tmp over `path`, so a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm
    return tqdm(total=total, desc="NPK blocks", unit="block", disable=(total < 8) if enabled is None else not enabled)
