"""The exact neural path kernel H(x, x') = <phi_x, phi_x'> by pair propagation over the op list.

`npk_gram` fills the Gram tile by tile (`npk.kernels.gram`); a tile propagates the input pair kernel
M(i, i') = sum_c x(i, c) x'(i', c) through the ops with the rules of `npk.kernels.rules` (its docstring
holds the rule table), runs of gated convs taken by the fused rules of `npk.kernels.conv_fast`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from .. import graph
from . import conv_fast, cost
from ..models.base import GatedNet, check_input
from ..models.gates import check_kind
from .compact import (LayerGates, compute_gates, gate_bytes, gate_shapes, gates_per_sample, model_gates,
                      model_selections, unpack_gates)
from .linalg import cosine_normalize
from .gram import TileKernel, blocked_gram, dtype_size, preflight
from .memory import available_memory
from .offsets import overlap
from .rules import (GatePair, Pair, collapsed_gates, gate_rule, gated_select_rule, pair_rule, pooled_gates,
                    sums_channels)
from ..validate import byte_count, check_gram_request

# bytes for the pair kernels of one block: on a CPU, blocks whose tensors stay under glibc's mmap threshold
# are several times faster than large ones (a large tensor is freshly mapped and page-faulted at every op)
DEFAULT_MEMORY_BUDGET = 32 * 2**20
TILE_SECONDS = 30          # estimated single-thread work of one tile (`block_size`)
DIAGONAL_SHARE = 8         # a fused-to-the-pool tile side is at most this share of the samples (`block_size`)


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
    kind = gates or model.gate_kind
    whole_run = conv_fast.takes_inputs_to_pool(model, kind, X.dtype, X.device)
    kernel = NPKTiles(model, kind, X.dtype, memory_budget, whole_run)
    block = block_size(model, X.element_size(), memory_budget, whole_run, max(len(X), len(Y)))
    pairs = len(X) * (len(X) + 1) // 2 if symmetric else len(X) * len(Y)
    warn_if_slow(kernel.estimate, pairs)
    n_gated = len(X) + (0 if symmetric else len(Y))
    parts = {"Gram": 0 if out is not None else len(X) * len(Y) * X.element_size(),
             "one tile": kernel.work_bytes(block, block)}
    resident = {"gates": kernel.gate_bytes(n_gated), "max-pool selections": kernel.selection_bytes(n_gated)}
    max_memory = None if max_memory is None else byte_count("max_memory", max_memory)
    room = (max_memory if max_memory is not None else available_memory()) - sum(parts.values())
    if sum(resident.values()) > room // 2:       # the gates of all inputs do not fit: computed per tile
        resident, kernel.precomputed = {}, False
    preflight("npk_gram", {**parts, **resident}, max_memory)     # before the gates are computed
    if kernel.precomputed:
        X = (X, kernel.all_gates(X), *kernel.all_selections(X))
        Y = None if symmetric else (Y, kernel.all_gates(Y), *kernel.all_selections(Y))
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
    """The NPK as a tile kernel: inputs are X slices, or (X slice, compact gates, *max-pool selections as
    int32) when `precomputed`."""

    name = "NPK"

    def __init__(self, model: GatedNet, kind: str, dtype: torch.dtype, memory_budget: int, whole_run: bool = False):
        self.model, self.kind, self.dtype = model, check_kind(kind), dtype
        self.key = {"kernel": "npk", "gates": self.kind, "dtype": str(dtype)}
        self.shapes, self.budget, self.precomputed = gate_shapes(model), memory_budget, True
        self.model_itemsize = next(model.parameters()).element_size()
        self.pair_bytes = pair_bytes(model, dtype_size(dtype), whole_run)
        self.estimate = cost.estimate(model, dtype_size(dtype))
        self.note = f"est. {self.estimate.ms_per_pair:.3g} ms/pair"

    def gate_bytes(self, n: int) -> int:
        return gate_bytes(self.shapes, n, self.kind, self.model_itemsize)

    def all_gates(self, X: torch.Tensor):
        """The compact gates of all of X, computed in chunks of about one tile budget of float gates."""
        return compute_gates(self.model, X, self.kind, rows=self._rows())

    def _rows(self) -> int:
        """Samples per chunk of the gate pass: about one tile budget of float gates."""
        return max(1, self.budget // max(1, gates_per_sample(self.shapes) * self.model_itemsize))

    def selection_bytes(self, n: int) -> int:
        """Bytes of the max-pool selections of n samples (int32; at most one per gate)."""
        return 4 * n * sum(math.prod(s) for s in self.shapes) if self.model.n_pools else 0

    def all_selections(self, X: torch.Tensor) -> list[torch.Tensor]:
        """The max-pool selections of all of X as int32, computed in chunks like `all_gates`."""
        rows = self._rows()
        chunks = [model_selections(self.model, X[r:r + rows]) for r in range(0, len(X), rows)]
        return [torch.cat(pool).to(torch.int32) for pool in zip(*chunks)]

    def prepare(self, xs):
        if self.precomputed:
            X, gates, *selections = xs
            selections = [s.long() for s in selections]
        else:
            X, gates, selections = xs, model_gates(self.model, xs, self.kind), model_selections(self.model, xs)
        return X, LayerGates(gates, self.dtype), selections

    def tile(self, fx, fy) -> torch.Tensor:
        return pair_kernel(self.model, fx[0], fy[0], fx[1], fy[1], fx[2], fy[2])

    def work_bytes(self, n: int, m: int) -> int:
        """The pair kernels (the budget, or more where one pair's per-channel kernels need more) and both
        sides' float gates."""
        kernels = max(self.budget, n * m * self.pair_bytes)
        return kernels + (n + m) * gates_per_sample(self.shapes) * max(self.model_itemsize, dtype_size(self.dtype))


def warn_if_slow(est: cost.Estimate, pairs: int) -> None:
    """Print one line (stderr) when the Gram would take more than `cost.WARN_SECONDS`: the estimate and
    where its cost comes from."""
    threads = torch.get_num_threads()
    if est.seconds(pairs, threads) > cost.WARN_SECONDS:
        print(cost.summary(est, pairs, threads), file=sys.stderr, flush=True)


def pair_kernel(model: GatedNet, X: torch.Tensor, Y: torch.Tensor, gx: Sequence[torch.Tensor],
                gy: Sequence[torch.Tensor], sx: Sequence[torch.Tensor] | None = None,
                sy: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """NPK of one tile: propagate the input pair kernel through the model's op list.

    gx, gy: the gates of X and Y, one float tensor per gated layer, or compact (`npk.kernels.compact`:
    PackedGates / DenseGates, or LayerGates), read as X's dtype, each layer unpacked only when a rule
    reads it as floats (the fused conv kernel reads the packed bits). sx, sy: the max-pool selections
    of X and Y (None: computed here). A first run of gated convs that the fused conv kernel takes
    (`npk.kernels.conv_fast`) forms the input pair kernel itself.
    """
    gx, gy = (g if isinstance(g, LayerGates) else LayerGates(g, X.dtype) for g in (gx, gy))
    sx = model_selections(model, X) if sx is None else sx
    sy = model_selections(model, Y) if sy is None else sy
    ctx = GatePair(gx, gy, sx, sy, graph.kept_gates(model.ops))
    fused = conv_fast.input_run(model, X, Y, ctx)
    state, start = fused_state(*fused) if fused else (Pair(input_kernel(model, X, Y), "sum", X.shape[1]), 0)
    H = propagate(model.ops[start:], state, ctx).summed()
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
            state, i = fused_state(*fused)
            continue
        op, i = ops[i], i + 1
        if isinstance(op, graph.MaxPool) and i > 1 and isinstance(ops[i - 2], graph.Gate):
            continue                                # read with its gate (`graph.validate`: always after one)
        if isinstance(op, graph.Gate) and i < len(ops) and isinstance(ops[i], graph.MaxPool):
            state = gated_select_rule(op, ops[i], state, ctx, summed=sums_channels(ops, i + 1))
        elif isinstance(op, graph.Gate):
            state = gate_rule(op, state, ctx)
        elif isinstance(op, graph.Residual):
            shared = replace(state, fresh=False)            # both branches read it: not fresh
            state = _add(propagate(op.skip, shared, ctx), propagate(op.block, shared, ctx))
        elif isinstance(op, graph.Linear):
            state = Pair(pair_rule(op, state.summed(), ctx), "each", op.module.weight.shape[0])
        elif isinstance(op, (graph.Flatten, graph.Readout)):
            state = Pair(pair_rule(op, state.summed(), ctx), "sum", 1)
        else:
            state = state.dense()
            state = Pair(pair_rule(op, state.M, ctx), state.kind, state.C)
    return state


def fused_state(M: torch.Tensor, next_op: int, channels: int) -> tuple[Pair, int]:
    """The state after a fused conv run (`conv_fast.fused_run`) and where the op list goes on."""
    return (Pair(M, "each", channels) if channels else Pair(M, "sum", 1)), next_op


def _add(a: Pair, b: Pair) -> Pair:
    """Residual: skip(M) + block(M) (the paths of the two branches are disjoint classes)."""
    if "terms" in (a.kind, b.kind) and {a.kind, b.kind} <= {"terms", "each"} and a.C == b.C:
        terms = Pair(None, "terms", a.C, terms=a.as_terms() + b.as_terms())
        return terms if len(terms.terms) <= a.C else terms.dense()        # more terms than channels: per channel
    if a.kind == b.kind and a.C == b.C:
        return Pair(a.M + b.M, a.kind, a.C, fresh=True)
    if "sum" in (a.kind, b.kind):
        return Pair(a.summed() + b.summed(), "sum", 1)
    C = max(a.C, b.C)
    return Pair((a.per_channel() + b.per_channel()).flatten(0, 1), "chan", C, fresh=True)


# ---------------------------------------------------------------------------------- blocking
def block_size(model: GatedNet, itemsize: int, memory_budget: int, whole_run: bool = False,
               samples: int | None = None) -> int:
    """Samples per block side: a tile's pair kernels fit in `memory_budget` bytes (`pair_bytes`) and its
    estimated work (`cost.estimate`, one thread) in about TILE_SECONDS, so that a stopped Gram loses
    little and the progress bar moves. With `whole_run` (pairs that keep no P^2 kernel, so memory would
    allow huge tiles) also at most 1/DIAGONAL_SHARE of the `samples`: a symmetric Gram computes its
    diagonal tiles whole, and they then stay a small part of it."""
    by_memory = math.sqrt(memory_budget / pair_bytes(model, itemsize, whole_run))
    by_time = math.sqrt(TILE_SECONDS * 1e3 / max(cost.estimate(model, itemsize).ms_per_pair, 1e-12))
    by_share = -(-samples // DIAGONAL_SHARE) if whole_run and samples else math.inf
    return max(1, int(min(by_memory, by_time, by_share)))


def pair_bytes(model: GatedNet, itemsize: int, whole_run: bool = False) -> int:
    """Peak bytes of one pair's kernels: about 4 tensors of the largest shared pair kernel (P^2 entries),
    or 2 of the largest per-channel stretch (C P^2: a gate read by a max pool that does not collapse its
    channels, `collapsed_gates`), whichever is larger. Identity shortcuts keep a few shared kernels
    (`Pair`'s "terms"), counted as shared. With `whole_run` (`conv_fast.takes_inputs_to_pool`) the convs
    keep no P^2 kernel: a pair holds its float64 diagonal sums (at most 2 H of them) and the few entries
    of the layers after the pool."""
    if whole_run:
        return 8 * 2 * max(model.input_shape[1:]) + 4 * itemsize
    shared, per_channel = 1, 0
    for c, s in _stream_spatial_shapes(model):
        shared, per_channel = (max(shared, math.prod(s) ** 2), per_channel) if c == 1 else \
            (shared, max(per_channel, c * math.prod(s) ** 2))
    return itemsize * max(4 * shared, 2 * per_channel)


def _stream_spatial_shapes(model: GatedNet):
    """(channel factor, spatial shape) of the input and of every gate's stream."""
    kept = pooled_gates(model.ops) - collapsed_gates(model.ops)
    with torch.no_grad():
        probe = torch.zeros((1, *model.input_shape), dtype=next(model.parameters()).dtype,
                            device=next(model.parameters()).device)
        yield 1, probe.shape[2:]
        for layer, g in enumerate(model.gates(probe)):
            yield (g.shape[1] if layer in kept else 1), g.shape[2:]


def kernel_gates(model: GatedNet, X: torch.Tensor, kind: str | None) -> list[torch.Tensor]:
    """The model's gates on X (computed in the model's dtype, no autograd), cast to X's dtype."""
    return unpack_gates(model_gates(model, X, kind), X.dtype)
