"""The op list a gated model describes its value network with.

A gated network is a short list of ops acting on one stream (the value stream):

    Linear(nn.Linear | nn.Conv1d | nn.Conv2d)   a weight layer; convs with any stride, dilation and padding
                                                 (an int or tuple, 'same', 'valid'; zeros or circular)
    Gate(layer)                                  multiply elementwise by the gates of gated layer `layer`
    AvgPool(k, stride, padding)                  average pooling (torch's AvgPoolNd, ceil_mode off)
    MaxPool(k, stride, padding, dilation)        max pooling as a selection gate: each window passes the one
                                                 position its selecting stream picks (see `npk.models.base`)
    GlobalAvgPool()                              mean over all positions -> (N, C)
    Flatten()                                    (N, C, *spatial) -> (N, C * prod(spatial))
    Residual(block, skip)                        skip(h) + block(h); an empty skip is the identity
    Readout(nn.Linear)                           the final dense layer (no gate after it)

The same list is read five ways; `RULES` names, for each op, where each reading's rule lives:
    forward      `run` here (and the gating network's readings in `npk.models.base`)
    npk          `npk.kernels.rules.pair_rule` / `npk.kernels.npk.propagate` (the exact NPK)
    expected     `npk.kernels.infinite.expected_rule` (the expected kernel), or a refusal in its `REFUSED`
    reference    `npk.kernels.reference._step` (brute-force path enumeration, the ground truth)
    ntk          `npk.kernels.ntk_structured` (weight layers' patches; other ops only route cotangents)
A new kind of layer is a new op class here plus one entry per reading in `RULES`; a test checks
that every op has them all.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_OPS = ("Linear (nn.Linear, nn.Conv1d, nn.Conv2d), Gate, AvgPool, MaxPool, GlobalAvgPool, Flatten, "
                 "Residual, Readout")


# ------------------------------------------------------------------------------ window geometry
@dataclass(frozen=True)
class Axis:
    """One spatial axis of a sliding-window op: output o reads input stride * o + dilation * k - pad[0].

    k runs over the `kernel` taps. Outside [0, n) the input is zero, or wraps around (mod n) if circular.
    """

    kernel: int
    stride: int = 1
    dilation: int = 1
    pad: tuple[int, int] = (0, 0)
    circular: bool = False

    def out_size(self, n: int) -> int:
        return (n + sum(self.pad) - self.dilation * (self.kernel - 1) - 1) // self.stride + 1

    def source(self, n: int, o: int, k: int) -> int | None:
        """The input position tap k of output o reads, or None for a zero pad."""
        p = self.stride * o + self.dilation * k - self.pad[0]
        if self.circular:
            return p % n
        return p if 0 <= p < n else None

    @property
    def same_odd(self) -> bool:
        """Stride 1, dilation 1, an odd kernel padded kernel // 2 on both sides: output size = input size."""
        r = self.kernel // 2
        return self.stride == 1 and self.dilation == 1 and self.kernel % 2 == 1 and self.pad == (r, r)


def _per_axis(value, d: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * d


def conv_axes(module: nn.Module) -> tuple[Axis, ...]:
    """The per-axis geometry of a Conv1d / Conv2d, with torch's padding: 'same' puts the odd pad on the right."""
    ks, d = module.kernel_size, len(module.kernel_size)
    circular = module.padding_mode == "circular"
    axes = []
    for k, s, dil, p in zip(ks, module.stride, module.dilation, _per_axis(module.padding, d)
                            if not isinstance(module.padding, str) else (module.padding,) * d):
        if p == "same":
            total = dil * (k - 1)
            pad = (total // 2, total - total // 2)
        else:
            pad = (0, 0) if p == "valid" else (p, p)
        axes.append(Axis(k, s, dil, pad, circular))
    return tuple(axes)


# ------------------------------------------------------------------------------------------- ops
@dataclass(eq=False)
class Linear:
    """A weight layer: dense (nn.Linear) or a convolution (groups 1, padding_mode 'zeros' or 'circular')."""

    module: nn.Module

    def __post_init__(self):
        m = self.module
        if isinstance(m, nn.Linear):
            return
        if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
            raise TypeError(f"Linear op takes nn.Linear, nn.Conv1d or nn.Conv2d, got {type(m).__name__}; "
                            f"supported ops: {SUPPORTED_OPS}")
        if m.groups != 1:
            raise ValueError(f"{m}: only groups=1 convolutions are supported (a grouped conv's paths stay in "
                             f"their group; not implemented)")
        if m.padding_mode not in ("zeros", "circular"):
            raise ValueError(f"{m}: padding_mode must be 'zeros' or 'circular', got {m.padding_mode!r}")

    @property
    def is_conv(self) -> bool:
        return not isinstance(self.module, nn.Linear)

    @property
    def axes(self) -> tuple[Axis, ...]:
        return conv_axes(self.module)

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
    """Average pooling as torch's AvgPool1d / AvgPool2d (ceil_mode off); AvgPool(k) is non-overlapping k x k.

    Per axis a linear map A (n_out, n_in): A[o, p] = 1 / divisor for p in o's window, the divisor being
    the kernel size, or with count_include_pad=False the number of window taps inside the input.
    """

    kernel_size: int | tuple
    stride: int | tuple | None = None
    padding: int | tuple = 0
    count_include_pad: bool = True

    def axes(self, d: int) -> tuple[Axis, ...]:
        ks = _per_axis(self.kernel_size, d)
        ss = ks if self.stride is None else _per_axis(self.stride, d)
        return tuple(Axis(k, s, 1, (p, p)) for k, s, p in zip(ks, ss, _per_axis(self.padding, d)))

    def matrix(self, axis: Axis, n: int) -> torch.Tensor:
        """A (n_out, n_in) in float64 for one axis of length n."""
        A = torch.zeros(axis.out_size(n), n, dtype=torch.float64)
        for o in range(len(A)):
            taps = [p for p in (axis.source(n, o, k) for k in range(axis.kernel)) if p is not None]
            for p in taps:
                A[o, p] += 1.0 / (axis.kernel if self.count_include_pad else len(taps))
        return A

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool1d if h.dim() == 3 else F.avg_pool2d
        return pool(h, self.kernel_size, self.stride, self.padding, count_include_pad=self.count_include_pad)


@dataclass(eq=False)
class MaxPool:
    """Max pooling as a selection gate: output o of channel c is the input at the position sel(o, c).

    `index` numbers the max pools in forward order (like Gate.layer). `forward` is torch's max pooling
    of the stream by itself; `select` applies a selection made elsewhere (by the gating network).
    """

    kernel_size: int | tuple
    stride: int | tuple | None = None
    padding: int | tuple = 0
    dilation: int | tuple = 1
    ceil_mode: bool = False
    index: int = 0

    def pool(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(max-pooled h, the selection: flat spatial index of each output's maximum, (N, C, *S_out))."""
        pool = F.max_pool1d if h.dim() == 3 else F.max_pool2d
        return pool(h, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode,
                    return_indices=True)

    def average(self, h: torch.Tensor) -> torch.Tensor:
        """Average pooling over the same windows (a DLGN's linear gating stream pools this way)."""
        if _per_axis(self.dilation, h.dim() - 2) != (1,) * (h.dim() - 2) or self.ceil_mode:
            raise ValueError(f"{self}: a linear gating network pools by average over the max pool's windows, "
                             f"which needs dilation 1 and ceil_mode False")
        return AvgPool(self.kernel_size, self.stride, self.padding).forward(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.pool(h)[0]


def select(h: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """h (N, C, *S) at the selected positions sel (N, C, *S_out) (flat spatial indices)."""
    return h.flatten(2).gather(2, sel.flatten(2)).reshape(sel.shape)


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
    """h -> skip(h) + block(h); an empty `skip` is the identity shortcut."""

    block: list = field(default_factory=list)
    skip: list = field(default_factory=list)


@dataclass(eq=False)
class Readout:
    """The final dense layer mapping features to outputs."""

    module: nn.Linear

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(_flat_for_dense(self.module, h))


Op = Linear | Gate | AvgPool | MaxPool | GlobalAvgPool | Flatten | Residual | Readout
OPS = (Linear, Gate, AvgPool, MaxPool, GlobalAvgPool, Flatten, Residual, Readout)
OnGate = Callable[[int, torch.Tensor], torch.Tensor]
OnSelect = Callable[[MaxPool, torch.Tensor], torch.Tensor]

# The checklist: every op's rule in each reading ("module: function"; "error: ..." where none exists).
RULES: dict[type, dict[str, str]] = {
    Linear: {"forward": "graph: Linear.forward", "npk": "kernels.rules: pair_rule(Linear) (conv_sum)",
             "expected": "kernels.infinite: expected_rule(Linear) (_linear_moments)",
             "reference": "kernels.reference: _step(Linear)", "ntk": "kernels.ntk_structured: _patches"},
    Gate: {"forward": "graph: run -> on_gate", "npk": "kernels.rules: gate_rule",
           "expected": "kernels.infinite: expected_rule(Gate) (expected overlap)",
           "reference": "kernels.reference: _step(Gate)", "ntk": "no weights: cotangents flow through the gate"},
    AvgPool: {"forward": "graph: AvgPool.forward", "npk": "kernels.rules: pair_rule(AvgPool)",
              "expected": "kernels.infinite: expected_rule(AvgPool)", "reference": "kernels.reference: _step(AvgPool)",
              "ntk": "no weights: linear, cotangents flow through"},
    MaxPool: {"forward": "graph: run -> on_select (MaxPool.pool / select)", "npk": "kernels.rules: select_rule (gated_select_rule after a Gate; conv_fast.select_sum)",
              "expected": "error: kernels.infinite.REFUSED[MaxPool] (no closed form)",
              "reference": "kernels.reference: _step(MaxPool)", "ntk": "no weights: cotangents flow through select"},
    GlobalAvgPool: {"forward": "graph: GlobalAvgPool.forward", "npk": "kernels.rules: pair_rule(GlobalAvgPool)",
                    "expected": "kernels.infinite: expected_rule(GlobalAvgPool)",
                    "reference": "kernels.reference: _step(GlobalAvgPool)", "ntk": "no weights"},
    Flatten: {"forward": "graph: Flatten.forward", "npk": "kernels.rules: pair_rule(Flatten)",
              "expected": "kernels.infinite: expected_rule(Flatten) (_shape_moments)", "reference": "kernels.reference: _step(Flatten)",
              "ntk": "no weights"},
    Residual: {"forward": "graph: run (skip + block)", "npk": "kernels.npk: propagate (skip + block)",
               "expected": "error: kernels.infinite.REFUSED[Residual] (depends on the init scaling)",
               "reference": "kernels.reference: _step(Residual)", "ntk": "no weights: both branches' layers"},
    Readout: {"forward": "graph: Readout.forward", "npk": "kernels.rules: pair_rule(Readout)",
              "expected": "kernels.infinite: expected_rule(Readout)", "reference": "kernels.reference: _readout",
              "ntk": "kernels.ntk_structured: _patches (dense)"},
}
READINGS = ("forward", "npk", "expected", "reference", "ntk")


# -------------------------------------------------------------------------------------- readings
def run(ops: Sequence[Op], h: torch.Tensor, on_gate: OnGate, on_select: OnSelect | None = None) -> torch.Tensor:
    """Forward reading of an op list; at `Gate(l)` the stream q becomes `on_gate(l, q)`.

    At a MaxPool the stream becomes `on_select(op, h)`; by default the stream selects by itself (torch's max pool).
    """
    for op in ops:
        if isinstance(op, Gate):
            h = on_gate(op.layer, h)
        elif isinstance(op, MaxPool):
            h = on_select(op, h) if on_select is not None else op.forward(h)
        elif isinstance(op, Residual):
            h = run(op.skip, h, on_gate, on_select) + run(op.block, h, on_gate, on_select)
        else:
            h = op.forward(h)
    return h


def describe(ops: Sequence[Op], indent: str = "  ") -> str:
    """The op list one op a line, in forward order; a Residual's block and skip indented below it."""
    lines = []
    for op in ops:
        if isinstance(op, Residual):
            lines.append("Residual(")
            for name, branch in (("block", op.block), ("skip", op.skip)):
                body = describe(branch, indent).splitlines() or ["identity"]
                lines += [f"{indent}{name}:"] + [2 * indent + line for line in body]
            lines.append(")")
        elif isinstance(op, (Linear, Readout)):
            lines.append(f"{type(op).__name__}({op.module})")
        else:
            lines.append(repr(op))
    return "\n".join(lines)


def walk(ops: Sequence[Op]) -> Iterator[Op]:
    """Every op in forward order, entering residual blocks (the block, then the skip branch)."""
    for op in ops:
        yield op
        if isinstance(op, Residual):
            yield from walk(op.block)
            yield from walk(op.skip)


def modules(ops: Sequence[Op]) -> list[nn.Module]:
    """The weight modules of an op list, in forward order."""
    return [op.module for op in walk(ops) if isinstance(op, (Linear, Readout))]


def n_gated_layers(ops: Sequence[Op]) -> int:
    return sum(isinstance(op, Gate) for op in walk(ops))


def max_pools(ops: Sequence[Op]) -> list[MaxPool]:
    return [op for op in walk(ops) if isinstance(op, MaxPool)]


def number(ops: Sequence[Op]) -> list[Op]:
    """Renumber the Gates (0, 1, ...) and the MaxPools in forward order; returns ops."""
    gates = [op for op in walk(ops) if isinstance(op, Gate)]
    for i, op in enumerate(gates):
        op.layer = i
    for i, op in enumerate(max_pools(ops)):
        op.index = i
    return list(ops)


def validate(ops: Sequence[Op]) -> None:
    """Check the conventions the kernel readings rely on; raise a ValueError naming the broken one.

    Gate indices (and MaxPool indices) run 0, 1, 2, ... in forward order, every MaxPool directly follows
    a Gate (a ReLU then a max pool, as networks write it), the list ends with a single Readout, and
    the NPK's channel bookkeeping (`kept_gates`) finds a reading.
    """
    flat = list(walk(ops))
    for op in flat:
        if not isinstance(op, OPS):
            raise TypeError(f"unsupported op {op!r}; supported ops: {SUPPORTED_OPS}")
    if not ops or not isinstance(ops[-1], Readout) or sum(isinstance(o, Readout) for o in flat) != 1:
        raise ValueError("an op list must end with exactly one Readout (the output layer)")
    layers = [op.layer for op in flat if isinstance(op, Gate)]
    if layers != list(range(len(layers))):
        raise ValueError(f"gate layers must be numbered 0, 1, ... in forward order, got {layers}")
    pools = [op.index for op in flat if isinstance(op, MaxPool)]
    if pools != list(range(len(pools))):
        raise ValueError(f"max pools must be numbered 0, 1, ... in forward order, got {pools}")

    def check_pools(seq):
        for i, op in enumerate(seq):
            if isinstance(op, MaxPool) and not (i > 0 and isinstance(seq[i - 1], Gate)):
                raise ValueError(f"{op} must directly follow a Gate (ReLU, then max pool); put the max pool "
                                 f"after the ReLU (relu(maxpool(q)) = maxpool(relu(q)))")
            if isinstance(op, Residual):
                check_pools(op.block)
                check_pools(op.skip)

    check_pools(list(ops))
    kept_gates(ops)


# ------------------------------------------------------------------------- channel bookkeeping
def channel_plan(model_or_ops) -> list[str]:
    """The gates whose NPK pair kernel keeps one slice per channel, by name ("Gate(layer=3)"), in forward order.

    Takes a gated model or its op list. Such a gate costs C times the pair-kernel memory until the next
    weight layer (see `kept_gates`); an empty list means the NPK carries one summed kernel throughout.

    Example:
        >>> channel_plan(npk.models.DLGN(3, [4, 4], 2))
        []
    """
    ops = getattr(model_or_ops, "ops", model_or_ops)
    if not isinstance(ops, (list, tuple)):
        raise TypeError(f"channel_plan takes a gated model (npk.models.*, or from_module(net, example)) or its "
                        f"op list, got {type(model_or_ops).__name__}")
    keep = kept_gates(ops)
    return [repr(op) for op in walk(ops) if isinstance(op, Gate) and id(op) in keep]


def kept_gates(ops: Sequence[Op]) -> set[int]:
    """The ids of the Gates whose NPK pair kernel must keep one slice per channel.

    The NPK carries M(i, i') summed over the paths' last unit channel. After a weight layer every
    channel has the same kernel ("each"); a gate weights channel c by G(i, c) G'(i', c) and the rule
    sums over c at once ("sum"), which is all the next weight layer needs. A stream that reaches another
    gate or a max pool without a weight layer in between (an identity shortcut into a ReLU, a ReLU into
    a max pool) needs the per-channel kernels ("chan"): this finds the gates that must keep them.
    """
    keep: set[int] = set()
    while True:
        conflicts: set = set()
        _plan(ops, ("sum", frozenset({"input"})), keep, conflicts)
        if not conflicts:
            return keep
        stuck = [c for c in conflicts if not isinstance(c, int)]
        if stuck:
            raise ValueError(f"a Gate or MaxPool reads a stream whose channels were summed by {stuck[0]} "
                             f"without a weight layer in between; put a Linear / Conv before it")
        keep |= conflicts


def _plan(ops, state, keep: set[int], conflicts: set):
    for op in ops:
        kind, origins = state
        if isinstance(op, Linear):
            state = ("each", frozenset())
        elif isinstance(op, (Gate, MaxPool)):
            if kind == "sum":
                conflicts |= origins
            if isinstance(op, Gate):
                state = ("chan", frozenset()) if id(op) in keep else ("sum", frozenset({id(op)}))
            else:
                state = ("chan", frozenset())
        elif isinstance(op, Flatten):
            state = ("sum", frozenset({"Flatten"}))
        elif isinstance(op, Residual):
            a = _plan(op.skip, state, keep, conflicts)
            b = _plan(op.block, state, keep, conflicts)
            kinds = {a[0], b[0]}
            state = (("sum", a[1] | b[1]) if "sum" in kinds else ("chan", frozenset()) if "chan" in kinds
                     else ("each", frozenset()))
    return state


# ------------------------------------------------------------------------------- gating networks
def clone_for_gating(ops: Sequence[Op]) -> list[Op]:
    """A freshly initialised copy of the op list without its Readout: the gating network's layers."""
    out = []
    for op in ops:
        if isinstance(op, Readout):
            continue
        if isinstance(op, Residual):
            out.append(Residual(clone_for_gating(op.block), clone_for_gating(op.skip)))
        elif isinstance(op, Linear):
            module = copy.deepcopy(op.module)
            module.reset_parameters()
            out.append(Linear(module))
        else:
            out.append(copy.copy(op))
    return out


def shallow_gating_ops(ops: Sequence[Op], input_shape: tuple[int, ...]) -> list[Op]:
    """Gating layers of a shallow-feature DLGN: every Linear reads the input itself.

    The input passes only through the shape ops (pooling, flatten; a max pool averages over its
    windows) on its way, and a weight layer that changes the spatial size (a strided or unpadded conv)
    is followed by average pooling of the input with the conv's windows, so layer l's pre-activation is
    W_l applied to x at layer l's input resolution. Skip branches hold no gate and are left out.
    """
    shape = tuple(input_shape)

    def build(seq):
        nonlocal shape
        result = []
        for op in seq:
            if isinstance(op, Readout):
                continue
            if isinstance(op, Residual):
                if any(isinstance(o, (Gate, MaxPool)) for o in walk(op.skip)):
                    raise ValueError("shallow gating needs residual skip branches without gates or max pools")
                result.append(Residual(build(op.block)))
            elif isinstance(op, Linear):
                m = op.module
                if op.is_conv:
                    conv = type(m)(shape[0], m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                                   dilation=m.dilation, padding_mode=m.padding_mode, bias=m.bias is not None)
                    result.append(Linear(conv.to(m.weight)))
                    out = tuple(a.out_size(n) for a, n in zip(op.axes, shape[1:]))
                    if out != shape[1:]:
                        result.append(_resample(op, shape))
                        shape = (shape[0], *out)
                else:
                    result.append(Linear(nn.Linear(shape[0], m.out_features, bias=m.bias is not None).to(m.weight)))
            else:
                result.append(copy.copy(op))
                shape = shape_after(op, shape)
        return result

    return build(ops)


def _resample(op: Linear, shape) -> AvgPool:
    axes = op.axes
    if any(a.dilation != 1 or a.pad[0] != a.pad[1] or a.circular for a in axes):
        raise ValueError(f"shallow gating resamples the input by average pooling over {op.module}'s windows, "
                         f"which needs dilation 1, symmetric zero padding")
    return AvgPool(tuple(a.kernel for a in axes), tuple(a.stride for a in axes), tuple(a.pad[0] for a in axes))


def shape_after(op: Op, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One sample's stream shape after a shape op (pooling, flatten)."""
    if isinstance(op, GlobalAvgPool):
        return (shape[0],)
    if isinstance(op, Flatten):
        return (math.prod(shape),)
    if isinstance(op, (AvgPool, MaxPool)):
        with torch.no_grad():
            return tuple(op.forward(torch.zeros((1, *shape), dtype=torch.float64)).shape[1:])
    return shape


def shallow_run(ops: Sequence[Op], x: torch.Tensor, on_gate: OnGate, on_select: OnSelect) -> None:
    """Forward reading for shallow-feature gating: Linear maps x (as pooled so far) to the gate's input.

    At a MaxPool, `on_select(op, q)` sees the pre-activation q of the gate before it; the input stream
    is averaged over the pool's windows.
    """
    stream, q = x, None

    def go(seq):
        nonlocal stream, q
        for op in seq:
            if isinstance(op, Linear):
                q = op.forward(stream)
            elif isinstance(op, Gate):
                on_gate(op.layer, q)
            elif isinstance(op, MaxPool):
                on_select(op, q)
                stream = op.average(stream)
            elif isinstance(op, Residual):
                go(op.block)
            elif not isinstance(op, Readout):
                stream = op.forward(stream)

    go(ops)
