"""The op list a gated model describes its value network with.

A gated network is a short list of ops acting on one stream (the value stream):

    Linear(nn.Linear | nn.Conv1d | nn.Conv2d)   a weight layer (conv: stride 1, odd kernel, 'same' size)
    Gate(layer)                                  multiply elementwise by the gates of gated layer `layer`
    AvgPool(k)                                   non-overlapping k x k average pooling
    GlobalAvgPool()                              mean over all positions -> (N, C)
    Flatten()                                    (N, C, *spatial) -> (N, C * prod(spatial))
    Residual(block)                              h + block(h): an identity skip around a list of ops
    Readout(nn.Linear)                           the final dense layer (no gate after it)

The same list is read three ways: here as a forward pass (`run`), in `npk.kernels.npk` as a pair-kernel
propagation (the exact NPK) and in `npk.kernels.infinite` as the expected kernel. A new architecture is
a new list; a new kind of layer is a new op with its rules.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_OPS = "Linear (nn.Linear, nn.Conv1d, nn.Conv2d), Gate, AvgPool, GlobalAvgPool, Flatten, Residual, Readout"


@dataclass(eq=False)
class Linear:
    """A weight layer: dense (nn.Linear) or a stride-1 'same'-size convolution with an odd kernel."""

    module: nn.Module

    def __post_init__(self):
        m = self.module
        if isinstance(m, nn.Linear):
            return
        if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
            raise TypeError(f"Linear op takes nn.Linear, nn.Conv1d or nn.Conv2d, got {type(m).__name__}; "
                            f"supported ops: {SUPPORTED_OPS}")
        k = m.kernel_size
        if any(s != 1 for s in m.stride) or any(d != 1 for d in m.dilation) or m.groups != 1:
            raise ValueError(f"{m}: only stride 1, dilation 1, groups 1 convolutions are supported")
        if any(ki % 2 == 0 for ki in k) or m.padding not in ("same", tuple(ki // 2 for ki in k)):
            raise ValueError(f"{m}: the kernel size must be odd with padding kernel_size // 2 ('same' size)")
        if m.padding_mode not in ("zeros", "circular"):
            raise ValueError(f"{m}: padding_mode must be 'zeros' or 'circular', got {m.padding_mode!r}")

    @property
    def is_conv(self) -> bool:
        return not isinstance(self.module, nn.Linear)

    @property
    def circular(self) -> bool:
        return self.is_conv and self.module.padding_mode == "circular"

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(_flat_for_dense(self.module, h))


def _flat_for_dense(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear) and h.dim() != 2:
        raise ValueError(f"{module} needs a flat stream (N, features), got shape {tuple(h.shape)}; "
                         f"put Flatten or GlobalAvgPool before it")
    return h


@dataclass(eq=False)
class Gate:
    """Multiply the stream by the gates of gated layer `layer` (0-based, in forward order)."""

    layer: int


@dataclass(eq=False)
class AvgPool:
    """Non-overlapping average pooling with window `kernel_size` along every spatial axis."""

    kernel_size: int

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool1d if h.dim() == 3 else F.avg_pool2d
        return pool(h, self.kernel_size)


@dataclass(eq=False)
class GlobalAvgPool:
    """Mean over all spatial positions: (N, C, *spatial) -> (N, C)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(2).mean(-1)


@dataclass(eq=False)
class Flatten:
    """(N, C, *spatial) -> (N, C * prod(spatial)), channel-major like torch.flatten."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1)


@dataclass(eq=False)
class Residual:
    """An identity skip around `block`: h -> h + block(h)."""

    block: list = field(default_factory=list)


@dataclass(eq=False)
class Readout:
    """The final dense layer mapping features to outputs."""

    module: nn.Linear

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(_flat_for_dense(self.module, h))


Op = Linear | Gate | AvgPool | GlobalAvgPool | Flatten | Residual | Readout
OnGate = Callable[[int, torch.Tensor], torch.Tensor]


def run(ops: Sequence[Op], h: torch.Tensor, on_gate: OnGate) -> torch.Tensor:
    """Forward reading of an op list; at `Gate(l)` the stream q becomes `on_gate(l, q)`."""
    for op in ops:
        if isinstance(op, Gate):
            h = on_gate(op.layer, h)
        elif isinstance(op, Residual):
            h = h + run(op.block, h, on_gate)
        else:
            h = op.forward(h)
    return h


def walk(ops: Sequence[Op]) -> Iterator[Op]:
    """Every op in forward order, entering residual blocks."""
    for op in ops:
        yield op
        if isinstance(op, Residual):
            yield from walk(op.block)


def modules(ops: Sequence[Op]) -> list[nn.Module]:
    """The weight modules of an op list, in forward order."""
    return [op.module for op in walk(ops) if isinstance(op, (Linear, Readout))]


def n_gated_layers(ops: Sequence[Op]) -> int:
    return sum(isinstance(op, Gate) for op in walk(ops))


def validate(ops: Sequence[Op]) -> None:
    """Check the conventions the kernel readings rely on; raise a ValueError naming the broken one.

    Every Linear is directly followed by its Gate, gate indices run 0, 1, 2, ... in forward order,
    and the list ends with a single Readout.
    """
    flat = list(walk(ops))
    for op in flat:
        if not isinstance(op, (Linear, Gate, AvgPool, GlobalAvgPool, Flatten, Residual, Readout)):
            raise TypeError(f"unsupported op {op!r}; supported ops: {SUPPORTED_OPS}")
    if not ops or not isinstance(ops[-1], Readout) or sum(isinstance(o, Readout) for o in flat) != 1:
        raise ValueError("an op list must end with exactly one Readout (the output layer)")
    layers = [op.layer for op in flat if isinstance(op, Gate)]
    if layers != list(range(len(layers))):
        raise ValueError(f"gate layers must be numbered 0, 1, ... in forward order, got {layers}")

    def check_pairs(seq):
        for i, op in enumerate(seq):
            if isinstance(op, Linear) and not (i + 1 < len(seq) and isinstance(seq[i + 1], Gate)):
                raise ValueError(f"every Linear must be followed by its Gate; {op.module} is not")
            if isinstance(op, Gate) and not (i > 0 and isinstance(seq[i - 1], Linear)):
                raise ValueError(f"Gate({op.layer}) must directly follow a Linear")
            if isinstance(op, Residual):
                check_pairs(op.block)

    check_pairs(list(ops))


def clone_for_gating(ops: Sequence[Op]) -> list[Op]:
    """A freshly initialised copy of the op list without its Readout: the gating network's layers."""
    out = []
    for op in ops:
        if isinstance(op, Readout):
            continue
        if isinstance(op, Residual):
            out.append(Residual(clone_for_gating(op.block)))
        elif isinstance(op, Linear):
            module = copy.deepcopy(op.module)
            module.reset_parameters()
            out.append(Linear(module))
        else:
            out.append(copy.copy(op))
    return out


def shallow_gating_ops(ops: Sequence[Op], input_shape: tuple[int, ...]) -> list[Op]:
    """Gating layers of a shallow-feature DLGN: every Linear reads the input itself.

    The input passes only through the shape ops (pooling, flatten) on its way, so layer l's
    pre-activation is W_l applied to x at layer l's resolution.
    """
    shape = tuple(input_shape)

    def build(seq):
        nonlocal shape
        result = []
        for op in seq:
            if isinstance(op, Readout):
                continue
            if isinstance(op, Residual):
                result.append(Residual(build(op.block)))
            elif isinstance(op, Linear):
                m = op.module
                if op.is_conv:
                    conv = type(m)(shape[0], m.out_channels, m.kernel_size, padding=m.padding,
                                   padding_mode=m.padding_mode, bias=m.bias is not None)
                    result.append(Linear(conv.to(m.weight)))
                else:
                    result.append(Linear(nn.Linear(shape[0], m.out_features, bias=m.bias is not None).to(m.weight)))
            else:
                result.append(copy.copy(op))
                shape = _shape_after(op, shape)
        return result

    return build(ops)


def _shape_after(op: Op, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(op, AvgPool):
        return (shape[0],) + tuple(s // op.kernel_size for s in shape[1:])
    if isinstance(op, GlobalAvgPool):
        return (shape[0],)
    if isinstance(op, Flatten):
        n = 1
        for s in shape:
            n *= s
        return (n,)
    return shape


def shallow_run(ops: Sequence[Op], x: torch.Tensor, on_gate: OnGate) -> None:
    """Forward reading for shallow-feature gating: Linear maps x (as pooled so far) to the gate's input."""
    stream, q = x, None
    for op in walk(ops):
        if isinstance(op, Linear):
            q = op.forward(stream)
        elif isinstance(op, Gate):
            on_gate(op.layer, q)
        elif not isinstance(op, (Residual, Readout)):
            stream = op.forward(stream)
