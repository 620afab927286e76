"""The two tensor primitives of the pair rules: channel overlaps and conv offset sums.

    overlap(A, B)(i, i')  = sum_c A(i, c) B(i', c)
    conv_sum(M, axes)(o, o') = sum_k M(s o + d k - p, s o' + d k - p)   (zero or wrap-around outside)

Both the generic rules (`npk.kernels.rules`) and the fused ones (`npk.kernels.conv_fast`) build on them.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

from .. import graph


def overlap(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """ov(i, i') = sum_c A(i, c) B(i', c) for A (n, C, *S), B (m, C, *S): shape (n, m, *S, *S)."""
    n, m, C, spatial = len(A), len(B), A.shape[1], A.shape[2:]
    if not spatial:
        return A @ B.T
    P = math.prod(spatial)
    a = A.reshape(n, C, P).transpose(1, 2).reshape(n * P, C)
    b = B.reshape(m, C, P).transpose(1, 2).reshape(m * P, C)
    return (a @ b.T).reshape(n, P, m, P).transpose(1, 2).reshape(n, m, *spatial, *spatial)


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
