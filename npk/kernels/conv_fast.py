"""Fast exact pair propagation through runs of gated convolutions: the default for conv nets.

A run is a stretch of the op list made of [conv Linear, Gate] pairs (stride 1, dilation 1, groups 1,
odd kernel, 'same' zero or circular padding). Each layer of a run maps the pair kernel as

    M'(i, i') = ov(i, i') * (b + sum_o M(i + o, i' + o)),    ov(i, i') = sum_c G(x)(i, c) G(x')(i', c)

(the conv and gate rules of `npk.kernels.rules`, fused). Every other op, and any conv this module does
not handle, goes to the generic rules, so a new op needs no change here. Two backends:

- `extension` (CPU, hard 0/1 gates, float32 / float64): the C++ kernel of `csrc/conv_npk.cpp`, built
  by the package build and loaded by `npk.kernels._native`. Gates are bit-packed, 64 channels a word (the
  words of `npk.kernels.compact`'s packed gates, which `npk_gram` keeps for all inputs), so an
  overlap is ceil(C / 64) ANDs and popcounts, exact in integers, computed where it is used and never
  stored. The offset sum and the gate product both keep i' - i's row offset fixed, so each diagonal
  of W x W slabs of M goes through all layers of the run on its own, in L2: M is read once and
  written once per run, not once per layer, and (pair, diagonal) items spread over OpenMP threads
  with no barrier (helper threads, not OpenMP: a late helper finds nothing left and cannot stall a call).
- `torch` (any device; soft gates; CPU without the extension): the generic rules with an exact
  low-precision GEMM for 0/1 overlaps (bfloat16 on CPU for up to 256 channels a chunk, float16 on
  CUDA for up to 2,048: every partial sum is an integer that these formats hold exactly), and the
  model's dtype for soft gates. No CPU-only op in its loop and, with the packed or soft gates that
  `npk_gram` passes, no host sync (plain float gates are checked for 0/1 values once a tile).

A run at the very start of the op list takes the inputs instead of their pair kernel (the extension
forms sum_c x(i, c) x'(i', c) on the fly), and a GlobalAvgPool right after a run is summed inside the
kernel, so for C4GAP-shaped nets no P x P pair kernel is ever written to memory.

A run may end with a conv whose gate it cannot take (a gate that a max pool reads, or one that keeps its
channels): the kernel then writes the conv's offset sums ungated, the kernel M every channel shares.
conv-ReLU-maxpool, the block of VGG-style nets, then never needs one kernel per channel: the max pool
selects, per channel c and window, one position s_c(o), and the next weight layer sums over channels, so
`select_sum` (C++, `npk_select_sum_*`) forms M'(o, o') = sum_c g_c(x, s_c(o)) g_c(x', s_c'(o')) M(s_c(o),
s_c'(o')) at the pooled resolution: C Q^2 reads of M for Q pooled positions.

Why, measured on this project's 2-core AMD EPYC (AVX-512 with VPOPCNTDQ), one thread, C4GAP-128 on
32 x 32 x 3 (`benchmarks/conv_npk.py`, README "Performance"): the overlaps of a pair are 1.07 G
fp32 flops (10 ms at the measured 100 GFLOP/s), 2.3 ms as exact bf16 GEMMs (460 G/s) and 8.4 M word
ANDs + popcounts (0.63 ms at 13 G words/s). The generic rules take 19 ms a pair; they read and write
the block's whole pair kernel for every kernel offset and layer. The extension takes about 3 ms: once
the overlaps are bit operations, the offset sums are most of the work, and it does them in L2.
torch.compile (inductor) of the generic shifted sums and product was slower than eager (4.9 ms
against 1.1 ms a layer for one 32 x 32 pair, after a 19 s compile) and cannot express the popcount;
numba would add an LLVM dependency for a kernel that is one C++ file built by g++, so it was not tried.
Symmetric blocks are not halved inside a tile: the Gram driver already computes only upper-triangle
tiles, and the waste on diagonal tiles is (block size) / N of the work.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
from typing import Iterator, Sequence

import torch

from .. import graph
from . import _native, compact
from .offsets import conv_sum, overlap

BACKENDS = ("auto", "extension", "torch", "off")
_state = {"backend": os.environ.get("NPK_CONV_BACKEND", "auto")}       # the default, e.g. for a whole test run
if _state["backend"] not in BACKENDS:
    raise ValueError(f"NPK_CONV_BACKEND must be one of {list(BACKENDS)}, got {_state['backend']!r}")
# channels per chunk whose 0/1 overlaps a low-precision GEMM computes exactly (integers up to 2^8, 2^11)
EXACT_CHUNK = {torch.bfloat16: 256, torch.float16: 2048}


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use `name` for conv runs inside the block (the default comes from $NPK_CONV_BACKEND, else "auto").

    Args:
        name: "auto" (the extension where it applies, else torch), "extension" (a RuntimeError where it
            cannot run), "torch", or "off" (the generic op rules only).

    Example:
        >>> with backend("torch"):
        ...     H = npk_gram(model, X)
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    old, _state["backend"] = _state["backend"], name
    try:
        yield
    finally:
        _state["backend"] = old


def extension() -> ctypes.CDLL | None:
    """The compiled kernel (`npk.kernels._native`), or None (said once) when it is not built or not usable."""
    return _native.library()


# ------------------------------------------------------------------------------------ the run
def conv_run(ops: Sequence[graph.Op], start: int, keep=frozenset()) -> list[graph.Linear]:
    """The conv Linears of the longest run of [conv Linear, Gate] pairs at ops[start:] that this module
    handles, all with the same padding mode (the kernel splits the work by diagonals, which differ),
    and a last conv without its gate where the run cannot take that gate (`gated`).

    A run sums each gate's channels, so it does not take a gate whose output keeps one kernel per channel
    (ids in `keep`, `npk.graph.kept_gates`: an identity shortcut into a ReLU) nor a gate that a max pool
    reads: the run ends with that gate's conv, and the gate is applied after it (per channel, or fused
    with the max pool's selection and the next layer's channel sum, `select_sum`)."""
    convs = []
    i = start
    while i < len(ops) and _handled(ops[i]) and (not convs or ops[i].circular == convs[0].circular):
        convs.append(ops[i])
        if not _fusable_gate(ops, i + 1, keep):
            break
        i += 2
    return convs


def gated(ops: Sequence[graph.Op], start: int, convs: Sequence[graph.Linear], keep=frozenset()) -> int:
    """How many convs of the run at ops[start:] take their gate (all, or all but the last)."""
    return len(convs) - (not _fusable_gate(ops, start + 2 * len(convs) - 1, keep))


def _fusable_gate(ops, i: int, keep) -> bool:
    return (i < len(ops) and isinstance(ops[i], graph.Gate) and id(ops[i]) not in keep
            and not (i + 1 < len(ops) and isinstance(ops[i + 1], graph.MaxPool)))


def starts_run(ops: Sequence[graph.Op], start: int, ctx) -> bool:
    """Whether a fused run may start at ops[start] (the backend and the gates decide the rest)."""
    return _state["backend"] != "off" and bool(conv_run(ops, start, ctx.keep))


def takes_inputs_to_pool(model, kind: str, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `input_run` will take the model's ops from the inputs through a GlobalAvgPool in the
    extension (hard gates, CPU, float32/64, a run of every conv up to the pool, as in C4GAP): a pair then
    keeps no P^2 kernel, only its float64 diagonal sums (`_run_extension`)."""
    if _state["backend"] not in ("auto", "extension") or kind != "hard" or not _extension_runs_on(device, dtype):
        return False
    keep = graph.kept_gates(model.ops)
    convs = conv_run(model.ops, 0, keep)
    return bool(convs) and _pool_after(model.ops, _run_end(0, convs, gated(model.ops, 0, convs, keep)))


def _run_end(start: int, convs: Sequence[graph.Linear], n_gated: int) -> int:
    """Index of the op after a run of `convs` at ops[start:] whose first `n_gated` convs take their gate."""
    return start + 2 * len(convs) - (n_gated < len(convs))


def _pool_after(ops: Sequence[graph.Op], end: int) -> bool:
    """Whether a GlobalAvgPool follows a run that ends at ops[end] (the extension then sums it in)."""
    return end < len(ops) and isinstance(ops[end], graph.GlobalAvgPool)


def _handled(op) -> bool:
    if not (isinstance(op, graph.Linear) and op.is_conv):
        return False
    m = op.module
    k = tuple(m.kernel_size)
    return (len(k) in (1, 2) and all(s == 1 for s in m.stride) and all(d == 1 for d in m.dilation)
            and m.groups == 1 and all(ki % 2 == 1 for ki in k)
            and m.padding in ("same", tuple(ki // 2 for ki in k)) and m.padding_mode in ("zeros", "circular"))


def fused_run(ops: Sequence[graph.Op], start: int, M: torch.Tensor, ctx) -> tuple[torch.Tensor, int, int] | None:
    """Apply the run of gated convs at ops[start:] to M (`npk.kernels.npk.propagate` calls it at every op).

    Args:
        ops, start: the op list and where the run would begin.
        M: the block's pair kernel (n, m, *S, *S).
        ctx: the block's gates, ctx.gx and ctx.gy: one tensor (n, C, *S) per gated layer, float, bool
            or uint8.

    Returns:
        (M after the run, index of the next op, C), or None when there is no run at `start` or the backend
        is "off" (the caller then applies ops[start] generically). C is 0 when the run ends with a gate
        (M is summed over its channels), else the last conv's output channels (M is the kernel each of
        them shares). The extension also takes a GlobalAvgPool right after the run: M is then the (n, m)
        means.

    Example:
        >>> fused_run(model.ops, 0, M, GatePair(gx, gy))      # C4GAP: (M of shape (n, m), 9, 0)
    """
    run = _plan(ops, start, M, ctx)
    if run is None:
        return None
    convs, layers, spatial, use_ext = run
    if use_ext:
        return _run_extension(ops, start, convs, layers, spatial, ctx, M=M)
    return _run_torch(convs, layers, M, ctx), _run_end(start, convs, len(layers)), _channels(convs, layers)


def _channels(convs, layers) -> int:
    return convs[-1].module.out_channels if len(layers) < len(convs) else 0


def input_run(model, X: torch.Tensor, Y: torch.Tensor, ctx) -> tuple[torch.Tensor, int] | None:
    """The run at the start of model.ops applied by the extension straight to the inputs.

    The kernel forms the input pair kernel (sum_c x(i, c) x'(i', c), or the channel count for an
    all-ones value input) on the fly, so it is never stored.

    Args:
        model: the gated net; X (n, *input_shape), Y (m, *input_shape): the block's inputs; ctx: gates.

    Returns:
        (M after the run, index of the next op, C as in `fused_run`), or None when the extension does not
        take that run.

    Example:
        >>> input_run(model, X, Y, GatePair(gx, gy))          # C4GAP on a CPU: (M of shape (n, m), 9, 0)
    """
    run = _plan(model.ops, 0, X, ctx)
    if run is None or not run[3]:
        return None
    n, m, C, P = len(X), len(Y), X.shape[1], math.prod(X.shape[2:])
    if model.value_input == "ones":
        x, y = X.new_full((n, 1, P), float(C)), Y.new_ones((m, 1, P))
    else:
        x, y = X.reshape(n, C, P).contiguous(), Y.reshape(m, C, P).contiguous()
    return _run_extension(model.ops, 0, *run[:3], ctx, x=x, y=y)


def _plan(ops, start: int, like: torch.Tensor, ctx) -> tuple[list, list[int], tuple, bool] | None:
    """(convs, layers of the gates they take, spatial shape, whether the extension runs them) for the run
    at ops[start:], or None. `like`: the pair kernel or the inputs (their dtype, device and spatial shape)."""
    name = _state["backend"]
    convs = conv_run(ops, start, ctx.keep) if name != "off" else []
    if not convs:
        return None
    layers = [ops[start + 2 * j + 1].layer for j in range(gated(ops, start, convs, ctx.keep))]
    spatial = tuple(like.shape[2:2 + len(convs[0].module.kernel_size)])
    if len(spatial) != len(convs[0].module.kernel_size) or any(ctx.gx.shape(l)[1:] != spatial for l in layers):
        return None
    use_ext = name in ("auto", "extension") and _extension_applies(like, ctx, layers)
    if name == "extension" and not use_ext:
        raise RuntimeError("the conv NPK extension cannot run here: it needs a CPU float32/float64 pair kernel, "
                           "hard 0/1 gates and the built library (reinstall npk with a C++ compiler: pip install .)")
    return convs, layers, spatial, use_ext


def _extension_applies(like: torch.Tensor, ctx, layers: list[int]) -> bool:
    return _extension_runs_on(like.device, like.dtype) and hard_gates(ctx, layers)


def _extension_runs_on(device, dtype: torch.dtype) -> bool:
    """Whether the built extension takes tensors of this device and dtype (CPU, float32 / float64)."""
    return torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64) and extension() is not None


def hard_gates(ctx, layers: list[int]) -> bool:
    """Whether the gates of `layers` are all 0/1: known for packed gates (hard) and DenseGates (soft, as
    `npk_gram` passes them), by type for bool / uint8 tensors, else checked by value (a host sync)."""
    return all(_is_hard(side, l) for side in (ctx.gx, ctx.gy) for l in layers)


def _is_hard(side: compact.LayerGates, layer: int) -> bool:
    if side.hard is not None:
        return side.hard
    g = side[layer]
    return g.dtype in (torch.bool, torch.uint8) or bool(((g == 0) | (g == 1)).all())


# ------------------------------------------------------------------------------- extension backend
def _run_extension(ops, start: int, convs, layers, spatial, ctx, M: torch.Tensor | None = None,
                   x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """The run on M (n, m, *S, *S), or on the input kernel of x (n, c0, P), y (m, c0, P); followed by a
    GlobalAvgPool, its (n, m) result (the kernel returns each diagonal's sum). An ungated last conv is a
    layer of 0 gate words."""
    lib = extension()
    ref = M if M is not None else x
    H, W = (1, spatial[0]) if len(spatial) == 1 else spatial
    n, m = (M.shape[0], M.shape[1]) if M is not None else (len(x), len(y))
    end = _run_end(start, convs, len(layers))
    reduce = _pool_after(ops, end)
    diagonals = H if convs[0].circular else 2 * H - 1
    if M is not None:
        M = M.contiguous()
    out = torch.empty((n, m, *spatial, *spatial), dtype=ref.dtype) if not reduce else None
    sums = torch.empty((n, m, diagonals), dtype=torch.float64) if reduce else None
    none = torch.empty((0, 0, 0), dtype=torch.int64)
    gx = [ctx.gx.packed(l) for l in layers] + [none] * (len(convs) - len(layers))
    gy = [ctx.gy.packed(l) for l in layers] + [none] * (len(convs) - len(layers))
    L = len(convs)
    ints = lambda values: (ctypes.c_int * L)(*values)                                  # noqa: E731
    ptrs = lambda tensors: (ctypes.c_void_p * L)(*[t.data_ptr() for t in tensors])     # noqa: E731
    kernel = [tuple(c.module.kernel_size) for c in convs]
    fn = lib.npk_conv_run_f32 if ref.dtype == torch.float32 else lib.npk_conv_run_f64
    status = fn(_ptr(M), _ptr(x), _ptr(y), x.shape[1] if x is not None else 0, _ptr(out), _ptr(sums),
                ctypes.c_int64(n), ctypes.c_int64(m), H, W, L, ints([1 if len(k) == 1 else k[0] for k in kernel]),
                ints([k[-1] for k in kernel]), ints([int(c.circular) for c in convs]),
                (ctypes.c_double * L)(*[float(c.has_bias) for c in convs]), ints([g.shape[1] for g in gx]),
                ptrs(gx), ptrs(gy), torch.get_num_threads())
    _native.check(status)
    C = _channels(convs, layers)
    if reduce:
        return (sums.sum(-1) / math.prod(spatial) ** 2).to(ref.dtype), end + 1, C
    return out, end, C


def select_sum(M: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, gx: torch.Tensor,
               gy: torch.Tensor) -> torch.Tensor | None:
    """A gate, the max pool that selects from it, and the channel sum of the next weight layer, at once:

        M'(o, o') = sum_c gx(o, c) gy(o', c) M(sx(o, c), sy(o', c))

    C Q^2 reads of M for Q pooled positions, never one kernel per channel (`npk_select_sum_*` of the C++
    kernel, accumulating in M's dtype).

    Args:
        M: (n, m, *S, *S), the kernel every channel shares after a weight layer.
        sx, sy: (n, C, *S_out), (m, C, *S_out): the flat positions each side's max pool selects.
        gx, gy: the gates at those positions, same shapes, in M's dtype.

    Returns:
        M' (n, m, *S_out, *S_out), or None where the extension does not run (the backend, the device, the
        dtype; the caller then applies the per-channel rules).

    Example:
        >>> select_sum(M, sx, sy, graph.select(gx, sx), graph.select(gy, sy))   # (n, m, Q, Q) for 1d pools
    """
    lib = extension()
    if (_state["backend"] not in ("auto", "extension") or lib is None or M.device.type != "cpu"
            or M.dtype not in (torch.float32, torch.float64)):
        return None
    n, m, C, out = len(sx), len(sy), sx.shape[1], sx.shape[2:]
    P, Q = math.prod(M.shape[2:2 + len(out)]), math.prod(out)
    M = M.contiguous()
    result = torch.empty((n, m, *out, *out), dtype=M.dtype)
    sx, sy = (s.to(torch.int32).contiguous() for s in (sx, sy))
    gx, gy = (g.to(M.dtype).contiguous() for g in (gx, gy))
    fn = lib.npk_select_sum_f32 if M.dtype == torch.float32 else lib.npk_select_sum_f64
    status = fn(_ptr(M), ctypes.c_int64(n), ctypes.c_int64(m), ctypes.c_int64(P), ctypes.c_int64(Q), C, _ptr(sx),
                _ptr(sy), _ptr(gx), _ptr(gy), _ptr(result), torch.get_num_threads())
    if status:
        raise RuntimeError(f"the max-pool select-sum of the conv NPK extension failed (status {status})")
    return result


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


# ----------------------------------------------------------------------------------- torch backend
def _run_torch(convs, layers, M: torch.Tensor, ctx) -> torch.Tensor:
    hard = hard_gates(ctx, layers)
    for j, conv in enumerate(convs):
        M = conv_sum(M, conv.axes)
        if conv.has_bias:
            M = M + 1
        if j < len(layers):
            M = exact_overlap(ctx.gx[layers[j]], ctx.gy[layers[j]], M.dtype, hard).mul_(M)
    return M


def exact_overlap(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype, hard: bool,
                  low: torch.dtype | None = None) -> torch.Tensor:
    """Gate overlaps ov(i, i') = sum_c A(i, c) B(i', c), exact for 0/1 gates in a low-precision GEMM.

    Args:
        A, B: gates (n, C, *S) and (m, C, *S).
        dtype: the dtype of the result.
        hard: whether the gates are 0/1; then the GEMMs run in `low` (default bfloat16 on CPU,
            float16 on CUDA) over channel chunks small enough that every sum is an integer the format
            holds exactly; otherwise in `dtype`.

    Returns:
        ov, shape (n, m, *S, *S), in `dtype`.

    Example:
        >>> g = torch.ones(1, 300, 2)
        >>> exact_overlap(g, g, torch.float32, hard=True)[0, 0]
        tensor([[300., 300.],
                [300., 300.]])
    """
    low = low or (torch.float16 if A.device.type == "cuda" else torch.bfloat16)
    if not hard:
        return overlap(A.to(dtype), B.to(dtype))
    chunk = EXACT_CHUNK[low]
    out = None
    for c in range(0, A.shape[1], chunk):
        part = overlap(A[:, c:c + chunk].to(low), B[:, c:c + chunk].to(low)).to(dtype)
        out = part if out is None else out.add_(part)
    return out
