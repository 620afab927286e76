"""Gates in little memory: hard gates packed one bit each (exact), soft gates in the model's dtype.

A hard gate is 0 or 1, so the gates of one sample, all layers flattened into one row of T values, are
stored as ceil(T / 8) bytes (bit k of byte b is gate 8 b + 7 - k). `unpack_gates` turns packed gates
back into the float tensors (one per gated layer, (n, C) or (n, C, *spatial)) that the NPK op rules read.
For C4GAP-128 on 32x32 images T = 4 x 128 x 1024 = 524,288 gates per sample: 64 KiB packed against
2 MiB as float32 (1/32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@dataclass
class PackedGates:
    """Hard gates of n samples: bits (n, ceil(T / 8)) uint8 and the per-sample shape of each layer's gates."""

    bits: torch.Tensor
    shapes: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, rows: slice) -> "PackedGates":
        return PackedGates(self.bits[rows], self.shapes)

    @property
    def nbytes(self) -> int:
        return self.bits.numel()


@dataclass
class DenseGates:
    """Gates of n samples kept as they are (soft gates, in the model's dtype): one tensor per gated layer."""

    tensors: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, rows: slice) -> "DenseGates":
        return DenseGates([g[rows] for g in self.tensors])

    @property
    def nbytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.tensors)


def pack_gates(gates: Sequence[torch.Tensor]) -> PackedGates:
    """Pack hard (0 / 1) gates, one tensor per gated layer, into bits; other values are refused.

    Example:
        >>> g = [torch.tensor([[1., 0., 1.]]), torch.tensor([[0., 1.]])]
        >>> p = pack_gates(g); p.bits.tolist(), [u.tolist() for u in unpack_gates(p)]
        ([[168]], [[[1.0, 0.0, 1.0]], [[0.0, 1.0]]])
    """
    flat = torch.cat([g.reshape(len(g), -1) for g in gates], dim=1)
    on = flat != 0
    if not torch.equal(flat[on], torch.ones_like(flat[on])):
        raise ValueError("only hard gates (0 or 1) can be packed into bits; soft gates stay in the model's dtype")
    pad = -flat.shape[1] % 8
    on = torch.nn.functional.pad(on, (0, pad)).reshape(len(flat), -1, 8).to(torch.uint8)
    bits = (on * _WEIGHTS.to(on.device)).sum(-1, dtype=torch.uint8)
    return PackedGates(bits, [tuple(g.shape[1:]) for g in gates])


def unpack_gates(gates, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """The float gate tensors (one per gated layer) of packed gates; a list of tensors is cast to `dtype`.

    Args:
        gates: a PackedGates or DenseGates, or a sequence of gate tensors (returned cast, not copied if already `dtype`).
        dtype: the float dtype the op rules compute in.
    Returns:
        list of tensors of shape (n, *shape) per layer.
    """
    if isinstance(gates, DenseGates):
        gates = gates.tensors
    if not isinstance(gates, PackedGates):
        return [g.to(dtype) for g in gates]
    n = len(gates.bits)
    bits = (gates.bits.unsqueeze(-1) & _WEIGHTS.to(gates.bits.device)).ne(0).reshape(n, -1)
    out, start = [], 0
    for shape in gates.shapes:
        size = math.prod(shape)
        out.append(bits[:, start:start + size].reshape(n, *shape).to(dtype))
        start += size
    return out


def gates_per_sample(shapes: Sequence[tuple[int, ...]]) -> int:
    """T, the number of gates of one sample over all gated layers."""
    return sum(math.prod(s) for s in shapes)


def gate_bytes(shapes: Sequence[tuple[int, ...]], n: int, kind: str, itemsize: int) -> int:
    """Bytes of the gates of n samples: bit-packed for hard gates, `itemsize` bytes each for soft gates."""
    T = gates_per_sample(shapes)
    return n * (-(-T // 8) if kind == "hard" else T * itemsize)


def model_gates(model, X: torch.Tensor, kind: str | None = None) -> list[torch.Tensor]:
    """model.gates(X, kind) computed in the model's dtype (X cast to it), without autograd."""
    param = next(model.parameters())
    with torch.no_grad():
        return model.gates(X.to(param.dtype), kind)


def gate_shapes(model) -> list[tuple[int, ...]]:
    """The per-sample shape of each gated layer's gates, (C,) or (C, *spatial), from one zero input."""
    param = next(model.parameters())
    probe = torch.zeros((1, *model.input_shape), dtype=param.dtype, device=param.device)
    return [tuple(g.shape[1:]) for g in model_gates(model, probe)]


def compute_gates(model, X: torch.Tensor, kind: str, rows: int) -> PackedGates | DenseGates:
    """The gates of all of X, computed `rows` samples at a time: bit-packed if hard, else in the model's dtype.

    Example:
        >>> m = npk.models.DNN(3, [4], 1); X = torch.randn(10, 3)             # doctest: +SKIP
        >>> unpack_gates(compute_gates(m, X, "hard", rows=4))[0].equal(m.gates(X)[0])
        True
    """
    starts = range(0, len(X), max(1, rows))
    if kind != "hard":
        chunks = [model_gates(model, X[r:r + rows], kind) for r in starts]
        return DenseGates([torch.cat(layer) for layer in zip(*chunks)])
    shapes = gate_shapes(model)
    bits = torch.empty((len(X), -(-gates_per_sample(shapes) // 8)), dtype=torch.uint8, device=X.device)
    for r in starts:   # filled in place: the float gates of one chunk at a time, never of all of X
        bits[r:r + rows] = pack_gates(model_gates(model, X[r:r + rows], kind)).bits
    return PackedGates(bits, shapes)
