"""Gates in little memory: hard gates packed one bit each (exact), soft gates in the model's dtype.

A hard gate is 0 or 1. The gates of one gated layer, (C, *spatial) per sample, are stored per position
as ceil(C / 8) bytes: channel 8 k + b of position p is bit b of byte k, so the bytes of a position
padded to whole 64-bit words are the words the fused conv kernel ANDs and popcounts
(`words`, `npk.kernels.conv_fast`). `unpack_gates` turns packed gates back into the float tensors
(one per gated layer, (n, C) or (n, C, *spatial)) that the NPK op rules read. For C4GAP-128 on 32x32
images that is 4 x 128 x 1024 = 524,288 gates per sample: 64 KiB packed against 2 MiB as float32 (1/32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass
class PackedGates:
    """Hard gates of n samples: per gated layer a uint8 tensor (n, P, ceil(C / 8)) (`pack_bits`), and
    the per-sample shape (C, *spatial) of each layer's gates."""

    bits: list[torch.Tensor]
    shapes: list[tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.bits[0])

    def __getitem__(self, rows: slice) -> "PackedGates":
        return PackedGates([b[rows] for b in self.bits], self.shapes)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.bits)


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


def pack_bits(g: torch.Tensor) -> torch.Tensor:
    """The bits of 0/1 gates g (n, C, *S) (nonzero counts as 1): uint8 (n, P, ceil(C / 8)), P = prod(S),
    channel 8 k + b of position p in bit b of byte k.

    Example:
        >>> pack_bits(torch.tensor([[1., 0., 1.]])).tolist()      # channels 0 and 2: 0b101
        [[[5]]]
    """
    n, C, P = g.shape[0], g.shape[1], math.prod(g.shape[2:])
    on = F.pad((g.reshape(n, C, P) != 0).transpose(1, 2).to(torch.uint8), (0, -C % 8))
    return (on.reshape(n, P, -1, 8) * _BITS.to(g.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The gates (n, *shape) of `pack_bits`'s bytes, as `dtype`."""
    n, C = len(bits), shape[0]
    on = (bits.unsqueeze(-1) & _BITS.to(bits.device)).ne(0).flatten(2)[:, :, :C]     # (n, P, C)
    return on.transpose(1, 2).to(dtype).reshape(n, *shape)


def words(bits: torch.Tensor) -> torch.Tensor:
    """`pack_bits`'s bytes as the conv kernel's 64-bit words: int64 (n, ceil(C / 64), P), channel
    64 w + b in bit b of word w (the bytes of a word in little-endian order, as on x86 and ARM)."""
    n, P, nbytes = bits.shape
    padded = F.pad(bits, (0, -nbytes % 8)).contiguous()
    return padded.view(torch.int64).reshape(n, P, -1).transpose(1, 2).contiguous()


def pack_gates(gates: Sequence[torch.Tensor]) -> PackedGates:
    """Pack hard (0 / 1) gates, one tensor per gated layer, into bits; other values are refused.

    Example:
        >>> g = [torch.tensor([[1., 0., 1.]]), torch.tensor([[0., 1.]])]
        >>> p = pack_gates(g); [b.tolist() for b in p.bits], [u.tolist() for u in unpack_gates(p)]
        ([[[5]], [[2]]], [[[1.0, 0.0, 1.0]], [[0.0, 1.0]]])
    """
    for g in gates:
        if not bool(((g == 0) | (g == 1)).all()):
            raise ValueError("only hard gates (0 or 1) can be packed into bits; soft gates stay in the model's dtype")
    return PackedGates([pack_bits(g) for g in gates], [tuple(g.shape[1:]) for g in gates])


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
    if isinstance(gates, PackedGates):
        return [unpack_bits(b, shape, dtype) for b, shape in zip(gates.bits, gates.shapes)]
    return [g.to(dtype) for g in gates]


class LayerGates:
    """One side's gates as the op rules read them: `self[l]`, layer l as a float tensor (unpacked on
    first use, once), or `packed(l)`, its words for the fused conv kernel without unpacking.

    hard: True for packed gates, False for DenseGates (soft gates), None when unknown (plain tensors).
    """

    def __init__(self, gates, dtype: torch.dtype | None = None):
        self.source, self.dtype, self._float = gates, dtype, {}
        self.hard = True if isinstance(gates, PackedGates) else False if isinstance(gates, DenseGates) else None

    def __len__(self) -> int:
        return len(self.source.shapes if isinstance(self.source, PackedGates) else self._tensors())

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self._float:
            if isinstance(self.source, PackedGates):
                g = unpack_bits(self.source.bits[layer], self.source.shapes[layer], self.dtype or torch.float32)
            else:
                g = self._tensors()[layer]
                g = g if self.dtype is None else g.to(self.dtype)
            self._float[layer] = g
        return self._float[layer]

    def shape(self, layer: int) -> tuple[int, ...]:
        """The per-sample shape (C, *spatial) of layer `layer`'s gates."""
        if isinstance(self.source, PackedGates):
            return tuple(self.source.shapes[layer])
        return tuple(self._tensors()[layer].shape[1:])

    def packed(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s gates as the conv kernel's int64 words (n, ceil(C / 64), P) (`words`)."""
        bits = self.source.bits[layer] if isinstance(self.source, PackedGates) else pack_bits(self[layer])
        return words(bits)

    def _tensors(self) -> Sequence[torch.Tensor]:
        return self.source.tensors if isinstance(self.source, DenseGates) else self.source


def gates_per_sample(shapes: Sequence[tuple[int, ...]]) -> int:
    """T, the number of gates of one sample over all gated layers."""
    return sum(math.prod(s) for s in shapes)


def gate_bytes(shapes: Sequence[tuple[int, ...]], n: int, kind: str, itemsize: int) -> int:
    """Bytes of the gates of n samples: bit-packed for hard gates (whole bytes per position), `itemsize`
    bytes each for soft gates."""
    if kind == "hard":
        return n * sum(math.prod(s[1:]) * -(-s[0] // 8) for s in shapes)
    return n * gates_per_sample(shapes) * itemsize


def model_gates(model, X: torch.Tensor, kind: str | None = None) -> list[torch.Tensor]:
    """model.gates(X, kind) computed in the model's dtype (X cast to it), without autograd."""
    return on_model(model.gates, model, X, kind)


def model_selections(model, X: torch.Tensor) -> list[torch.Tensor]:
    """The model's max-pool selections on X, like `model_gates` (none without max pools)."""
    return on_model(model.selections, model, X) if model.n_pools else []


def on_model(method, model, X: torch.Tensor, *args):
    """method(X, *args) with X cast to the model's dtype, without autograd."""
    with torch.no_grad():
        return method(X.to(next(model.parameters()).dtype), *args)


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
    bits = [torch.empty((len(X), math.prod(s[1:]), -(-s[0] // 8)), dtype=torch.uint8, device=X.device) for s in shapes]
    for r in starts:   # filled in place: the float gates of one chunk at a time, never of all of X
        for layer, chunk in zip(bits, pack_gates(model_gates(model, X[r:r + rows], kind)).bits):
            layer[r:r + rows] = chunk
    return PackedGates(bits, shapes)
