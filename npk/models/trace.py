"""Trace a PyTorch ReLU network with torch.fx into a gated model (an op list, `npk.graph`).

    model = from_module(net.eval(), example_input, gating="self")   # the same function as net
    twin = from_module(net.eval(), example_input, gating="linear")  # its DLGN twin (fresh gating network)

Supported (everything else is refused with the node, its op and this list):
    nn.Conv1d / nn.Conv2d (any stride, dilation, padding int / tuple / 'same' / 'valid', zeros or circular;
    groups 1), nn.Linear; ReLU as nn.ReLU, F.relu, torch.relu, .relu(), inplace or not; nn.MaxPool1d/2d
    and F.max_pool1d/2d (a selection gate; max pool then ReLU is read as ReLU then max pool, the same function);
    nn.AvgPool1d/2d and F.avg_pool1d/2d (ceil_mode off, no divisor_override); nn.AdaptiveAvgPool1d/2d and
    F.adaptive_avg_pool1d/2d to size 1; nn.BatchNorm1d/2d in eval mode, folded into the weight layer
    before it; nn.Dropout / F.dropout in eval mode and nn.Identity (no-ops); nn.Flatten, torch.flatten,
    .flatten(1), .view / .reshape to (N, -1); additions of two branches of one stream (residual blocks
    with identity or projection shortcuts); the last op must be an nn.Linear (the readout).

The op list's modules are the network's own (shared: training one trains the other), except weight
layers followed by a batch norm, which are folded copies: W' = W * gamma / sqrt(var + eps),
b' = (b - mean) * gamma / sqrt(var + eps) + beta.
"""
from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import graph
from .base import GATINGS, GatedNet

SUPPORTED = ("nn.Conv1d/2d, nn.Linear, ReLU (nn.ReLU, F.relu, torch.relu, .relu(), inplace), nn.MaxPool1d/2d / F.max_pool*, "
             "nn.AvgPool1d/2d / F.avg_pool1d/2d, nn.AdaptiveAvgPool1d/2d(1) / F.adaptive_avg_pool1d/2d(x, 1), "
             "nn.BatchNorm1d/2d (eval, after a weight layer), nn.Dropout (eval), nn.Identity, nn.Flatten / "
             "torch.flatten(x, 1) / .view(N, -1) / .reshape(N, -1), residual additions (+, torch.add)")
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None))
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_SHAPE = "shape"     # a value that is a size, not a stream


def from_module(module: nn.Module, example_input: torch.Tensor, gating: str = "self", **gate_opts) -> GatedNet:
    """The gated model whose value network is `module`, traced with torch.fx.

    Args:
        module: a ReLU network in eval mode (batch norms and dropouts are read in eval mode).
        example_input: a batch (N, *input_shape) that fixes the input shape; with gating="self" the model
            is checked to reproduce module(example_input).
        gating: "self" (the network itself: same function), "relu" (DGN), "linear" (DLGN), "shallow"
            (DLGN-SF); the other kinds get a fresh He-initialised gating network (`GatedNet.with_gating`).
        gate_opts: gate ("hard" / "soft": how a pre-activation becomes a gate, not which network
            computes it, which is `gating`), beta, eps, value_input as for every gated model.
    Returns:
        A GatedNet. Example: `from_module(vgg.eval(), torch.randn(2, 3, 32, 32), gating="linear")`.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module takes an nn.Module, got {type(module).__name__}")
    if gating not in GATINGS:
        raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
    x = torch.as_tensor(example_input)
    if x.dim() < 2:
        raise ValueError(f"example_input must be a batch (N, *input_shape), got shape {tuple(x.shape)}")
    try:
        traced = fx.symbolic_trace(module)
    except Exception as err:  # torch.fx raises several types for untraceable code
        raise ValueError(f"torch.fx could not trace {type(module).__name__}: {err}; from_module needs a forward "
                         f"without data-dependent control flow") from err
    ops = _Reader(traced).read()
    extra = {k: v for k, v in gate_opts.items() if k != "value_input"}
    model = GatedNet(graph.number(ops), tuple(x.shape[1:]), gating="self", **extra)
    _check_same_function(model, module, x)
    if gating == "self" and gate_opts.get("value_input", "x") == "x":
        return model
    return model.with_gating(gating, value_input=gate_opts.get("value_input"))


def _check_same_function(model: GatedNet, module: nn.Module, x: torch.Tensor) -> None:
    if model.gate_kind != "hard":
        return
    param = next(model.parameters())
    with torch.no_grad():
        ours, theirs = model(x.to(param.dtype)), module(x.to(param.dtype))
    scale = theirs.abs().max().item() or 1.0
    tol = 1e-10 if param.dtype == torch.float64 else 1e-4
    if ours.shape != theirs.shape or (ours - theirs).abs().max().item() > tol * scale:
        raise ValueError("the traced op list does not reproduce the module's output on example_input; "
                         f"supported: {SUPPORTED}")


class _Reader:
    """Reads a traced graph node by node; each stream value is the tuple of ops from the input to it."""

    def __init__(self, traced: fx.GraphModule):
        self.traced = traced
        self.values: dict[fx.Node, object] = {}
        self.made_by: dict[int, fx.Node] = {}      # id(Linear op) -> the node that made it

    def read(self) -> list[graph.Op]:
        inputs = [n for n in self.traced.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ValueError(f"from_module needs a forward with one input, got {len(inputs)}")
        for node in self.traced.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = ()
            elif node.op == "output":
                return self._output(node)
            else:
                self.values[node] = self._node(node)
        raise ValueError("the traced graph has no output")

    # ------------------------------------------------------------------------------------ nodes
    def _refuse(self, node: fx.Node, why: str = "unsupported"):
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        what = type(self.traced.get_submodule(node.target)).__name__ if node.op == "call_module" else target
        raise ValueError(f"node {node.name!r} ({node.op} {what}): {why}. Supported: {SUPPORTED}")

    def _stream(self, node: fx.Node, arg) -> tuple:
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, tuple):
            self._refuse(node, "its input is not the network's stream")
        return value

    def _node(self, node: fx.Node):
        if node.op == "call_module":
            return self._module(node, self.traced.get_submodule(node.target))
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        self._refuse(node)

    def _module(self, node, m):
        h = self._stream(node, node.args[0])
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            op = graph.Linear(m)
            self.made_by[id(op)] = node
            return h + (op,)
        if isinstance(m, nn.ReLU):
            return self._relu(h)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self._batch_norm(node, m, h)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            if m.return_indices:
                self._refuse(node, "return_indices=True")
            return h + (graph.MaxPool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode),)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
            return h + (self._avg_pool(node, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                       getattr(m, "divisor_override", None)),)
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            return h + (self._global_pool(node, m.output_size),)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                self._refuse(node, "only nn.Flatten(1, -1)")
            return h + (graph.Flatten(),)
        if isinstance(m, nn.Dropout):
            if m.training:
                self._refuse(node, "dropout in train mode: call .eval() on the module first")
            return h
        if isinstance(m, nn.Identity):
            return h
        self._refuse(node)

    def _function(self, node):
        f, args, kwargs = node.target, node.args, node.kwargs
        if f in _RELU_FUNCTIONS:
            return self._relu(self._stream(node, args[0]))
        if f in _ADD_FUNCTIONS:
            return self._add(node, *args[:2])
        if f is torch.flatten:
            return self._flatten(node, args[0], args[1] if len(args) > 1 else kwargs.get("start_dim", 0),
                                 args[2] if len(args) > 2 else kwargs.get("end_dim", -1))
        if f in (F.avg_pool1d, F.avg_pool2d):
            names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            given = dict(zip(names, args[1:]), **kwargs)
            pool = self._avg_pool(node, given["kernel_size"], given.get("stride") or None, given.get("padding", 0),
                                  given.get("ceil_mode", False), given.get("count_include_pad", True),
                                  given.get("divisor_override"))
            return self._stream(node, args[0]) + (pool,)
        if f in (F.max_pool1d, F.max_pool2d):
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            given = dict(zip(names, args[1:]), **kwargs)
            if given.get("return_indices"):
                self._refuse(node, "return_indices=True")
            pool = graph.MaxPool(given["kernel_size"], given.get("stride") or None, given.get("padding", 0),
                                 given.get("dilation", 1), given.get("ceil_mode", False))
            return self._stream(node, args[0]) + (pool,)
        if f in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
            return self._stream(node, args[0]) + (self._global_pool(node, args[1] if len(args) > 1
                                                                     else kwargs["output_size"]),)
        if f is F.dropout:
            if kwargs.get("training", args[2] if len(args) > 2 else True):
                self._refuse(node, "dropout in train mode: pass training=self.training and call .eval()")
            return self._stream(node, args[0])
        if f is getattr or f is operator.getitem and self.values.get(args[0]) is _SHAPE:
            return _SHAPE
        self._refuse(node)

    def _method(self, node):
        name, args = node.target, node.args
        if name == "size":
            return _SHAPE
        if name in ("relu", "relu_"):
            return self._relu(self._stream(node, args[0]))
        if name in ("add", "add_", "__add__", "__iadd__"):
            return self._add(node, *args[:2])
        if name == "flatten":
            return self._flatten(node, args[0], args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0),
                                 args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1))
        if name in ("view", "reshape"):
            shape = args[1:] if len(args) > 2 else (tuple(args[1]) if len(args) == 2 else ())
            if len(shape) == 2 and shape[1] == -1:
                return self._stream(node, args[0]) + (graph.Flatten(),)
            self._refuse(node, "only .view / .reshape to (N, -1)")
        self._refuse(node)

    def _output(self, node) -> list[graph.Op]:
        h = self._stream(node, node.args[0])
        if not h or not isinstance(h[-1], graph.Linear) or h[-1].is_conv:
            raise ValueError(f"the network must end with an nn.Linear readout (no ReLU after it); its output node "
                             f"{node.args[0].name!r} ends with {h[-1] if h else 'the input'}")
        return list(h[:-1]) + [graph.Readout(h[-1].module)]

    # ---------------------------------------------------------------------------------- op builders
    @staticmethod
    def _relu(h: tuple) -> tuple:
        if len(h) >= 2 and isinstance(h[-1], graph.MaxPool) and not isinstance(h[-2], graph.Gate):
            return h[:-1] + (graph.Gate(0), h[-1])     # relu(maxpool(q)) = maxpool(relu(q))
        return h + (graph.Gate(0),)

    def _add(self, node, a, b) -> tuple:
        ha, hb = self._stream(node, a), self._stream(node, b)
        n = 0
        while n < min(len(ha), len(hb)) and ha[n] is hb[n]:
            n += 1
        ra, rb = list(ha[n:]), list(hb[n:])
        gated = lambda ops: sum(isinstance(op, graph.Gate) for op in graph.walk(ops))
        block, skip = (ra, rb) if (gated(ra), len(ra)) >= (gated(rb), len(rb)) else (rb, ra)
        if not block:
            self._refuse(node, "adds a stream to itself")
        return ha[:n] + (graph.Residual(block, skip),)

    def _flatten(self, node, arg, start, end) -> tuple:
        if start != 1 or end != -1:
            self._refuse(node, "only flatten(x, 1)")
        return self._stream(node, arg) + (graph.Flatten(),)

    def _avg_pool(self, node, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        if ceil_mode or divisor_override is not None:
            self._refuse(node, "average pooling needs ceil_mode=False and no divisor_override")
        return graph.AvgPool(kernel, stride if stride not in ((), []) else None, padding, count_include_pad)

    def _global_pool(self, node, size):
        if set(size if isinstance(size, (tuple, list)) else (size,)) != {1}:
            self._refuse(node, "adaptive average pooling to size 1 only")
        return graph.GlobalAvgPool()

    def _batch_norm(self, node, bn, h: tuple) -> tuple:
        if bn.training or not bn.track_running_stats:
            self._refuse(node, "batch norm in train mode (or without running statistics): call .eval() on the "
                               "module first")
        last = h[-1] if h else None
        source = self.made_by.get(id(last))
        if not isinstance(last, graph.Linear) or len(source.users) != 1:
            self._refuse(node, "a batch norm must directly follow a weight layer whose output it alone reads")
        return h[:-1] + (graph.Linear(fold_batch_norm(last.module, bn)),)


@torch.no_grad()
def fold_batch_norm(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of `layer` (Linear / Conv) computing bn(layer(x)) with eval-mode statistics."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    folded = copy.deepcopy(layer)
    folded.weight.mul_(scale.reshape(-1, *(1,) * (folded.weight.dim() - 1)).to(folded.weight))
    bias = shift if layer.bias is None else layer.bias * scale + shift
    folded.bias = nn.Parameter(bias.to(folded.weight))
    return folded
