"""Turn a plain ReLU nn.Sequential into a DNN (a GatedNet that gates itself) sharing its modules.

Each weight layer followed by nn.ReLU becomes [Linear, Gate] (relu(q) = 1{q > 0} q); average pooling,
global average pooling and flatten become the matching shape ops, and the last nn.Linear (no ReLU after
it) becomes the Readout. The modules are shared, not copied: training either model trains both.
"""
from __future__ import annotations

from numbers import Integral

from torch import nn

from .. import graph
from .base import GatedNet

SUPPORTED_LAYERS = ("nn.Linear, nn.Conv1d, nn.Conv2d (stride 1, odd kernel, 'same' padding, zeros or circular), "
                    "each followed by nn.ReLU except the last nn.Linear; nn.AvgPool1d / nn.AvgPool2d "
                    "(kernel_size == stride, no padding); nn.AdaptiveAvgPool1d(1) / nn.AdaptiveAvgPool2d(1) "
                    "followed by nn.Flatten; nn.Flatten()")


def from_sequential(seq: nn.Sequential, input_shape) -> GatedNet:
    """A DNN whose op list is `seq`'s layers; `input_shape` is one sample's shape, (d_in,) or (C, *spatial).

    Its forward equals seq's; TypeError / ValueError name the first layer it cannot take.
    """
    if not isinstance(seq, nn.Sequential):
        raise TypeError(f"from_sequential takes an nn.Sequential, got {type(seq).__name__}")
    layers = list(seq)
    ops: list[graph.Op] = []
    i = 0
    while i < len(layers):
        layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        i += 1
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            if isinstance(after, nn.ReLU):
                ops += [graph.Linear(layer), graph.Gate(graph.n_gated_layers(ops))]
                i += 1
            elif after is None and isinstance(layer, nn.Linear):
                ops.append(graph.Readout(layer))
            else:
                raise ValueError(f"layer {i - 1} ({layer}) must be followed by nn.ReLU (only the last layer, "
                                 f"an nn.Linear readout, has no ReLU); got {after}")
        elif isinstance(layer, (nn.AvgPool1d, nn.AvgPool2d)):
            ops.append(_avgpool(layer, i - 1))
        elif isinstance(layer, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = layer.output_size
            if set(size if isinstance(size, tuple) else (size,)) != {1} or not isinstance(after, nn.Flatten):
                raise ValueError(f"layer {i - 1} ({layer}): only output size 1 followed by nn.Flatten "
                                 f"(global average pooling) is supported")
            ops.append(graph.GlobalAvgPool())
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"layer {i - 1} ({layer}): only nn.Flatten(start_dim=1, end_dim=-1) is supported")
            ops.append(graph.Flatten())
        else:
            raise TypeError(f"unsupported layer {i - 1}: {layer}. Supported layers: {SUPPORTED_LAYERS}; "
                            f"op list: {graph.SUPPORTED_OPS}")
    if not ops or not isinstance(ops[-1], graph.Readout):
        raise ValueError("the network must end with an nn.Linear readout (no ReLU after it)")
    input_shape = (input_shape,) if isinstance(input_shape, Integral) else tuple(input_shape)
    return GatedNet(ops, input_shape)


def _avgpool(layer: nn.Module, index: int) -> graph.AvgPool:
    sizes = {k for attr in ("kernel_size", "stride") for k in _tuple(getattr(layer, attr))}
    plain = set(_tuple(layer.padding)) == {0} and not layer.ceil_mode and getattr(layer, "divisor_override", None) is None
    if len(sizes) != 1 or not plain:
        raise ValueError(f"layer {index} ({layer}): only non-overlapping square average pooling is supported "
                         f"(kernel_size == stride, the same on every axis, padding 0, ceil_mode False, "
                         f"no divisor_override)")
    return graph.AvgPool(sizes.pop())


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)
