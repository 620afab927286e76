"""Residual gated networks: ResDNN, ResDGN, ResDLGN, ResDLGNSF: identity skips around blocks of gated layers.

The value network, fully connected or convolutional ('same'-size convs, GAP head):

    x -> [stem: Linear, Gate] -> stage 1 -> stage 2 -> ... -> (GAP) -> Readout
    stage s = (AvgPool(2) if conv) [Linear, Gate] (s > 1 only: changes the width)
              Residual([Linear, Gate] * layers_per_block) * n_blocks[s]

A residual block maps h -> h + block(h), so every path either enters a block or skips it and the NPK
is a sum over the 2^b subsets of blocks (PAPER.md section 2); for one-layer blocks without stem or
biases, H(x, x') = <x, x'> prod_k (1 + overlap_k). Width changes cannot be identity skips, so the stem
and the stage transitions are gated layers outside any Residual. The stem is on by default; with
stem=False the blocks read the input directly, which needs d_in == width[0].

Initialisation: He normal weights, then the last weight layer of every residual block (in the value
and the gating network) scaled by 1/sqrt(number of blocks), so that the stream's variance grows by a
bounded factor (about e for ReLU blocks) however deep the network: ResNet-110 at plain He init
reaches outputs of order 1e12.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Sequence

import torch

from .. import graph
from .base import GatedNet
from .conv import OpBuilder, model_class, positive_ints, spatial_shape
from .init import he_init


def res_ops(d_in: int, width, n_blocks, layers_per_block: int = 1, d_out: int = 1, *, stem: bool = True,
            conv: bool = False, input_size=None, spatial_dims: int = 2, kernel_size: int = 3,
            padding: str = "zero", bias: bool = False) -> tuple[list[graph.Op], tuple[int, ...]]:
    """The op list of a residual value network and its input shape ((d_in,), or (d_in, *input_size) if conv).

    width and n_blocks are ints (one stage) or equal-length sequences (one entry per stage).
    """
    widths = positive_ints("width", [width] if isinstance(width, Integral) else width)
    blocks = positive_ints("n_blocks", [n_blocks] if isinstance(n_blocks, Integral) else n_blocks)
    if len(widths) != len(blocks):
        raise ValueError(f"width and n_blocks need one entry per stage, got {len(widths)} widths and "
                         f"{len(blocks)} block counts")
    (layers_per_block,) = positive_ints("layers_per_block", [layers_per_block])
    if conv and input_size is None:
        raise ValueError("a convolutional ResNet needs input_size, the spatial size of its inputs (e.g. 32)")
    if not conv and input_size is not None:
        raise ValueError("input_size is for conv=True; a fully connected ResNet reads (N, d_in) inputs")
    input_shape = (d_in, *spatial_shape(input_size, spatial_dims)) if conv else (d_in,)
    b = OpBuilder(input_shape, kernel_size, padding, bias)
    ops: list[graph.Op] = []
    if stem:
        ops += b.gated(widths[0])
    elif d_in != widths[0]:
        raise ValueError(f"without a stem the residual blocks read the input directly, so width[0] must equal "
                         f"d_in = {d_in}, got {widths[0]}; pass stem=True to map d_in to the width")
    for stage, (w, n) in enumerate(zip(widths, blocks)):
        if stage > 0:
            if conv:
                ops.append(b.avgpool())
            ops += b.gated(w)
        for _ in range(n):
            ops.append(graph.Residual([op for _ in range(layers_per_block) for op in b.gated(w)]))
    if conv:
        ops.append(b.head("gap"))
    ops.append(b.readout(d_out))
    return ops, input_shape


class ResNet(GatedNet):
    """Residual gated network; `gating=` as a keyword or fixed by a thin name. Arguments as in `res_ops`.

    `gating=` picks the network that computes the pre-activations, `gate=` how they become gates (`GatedNet`).
    """

    def __init__(self, d_in: int, width, n_blocks, layers_per_block: int = 1, d_out: int = 1, *,
                 stem: bool = True, conv: bool = False, input_size=None, spatial_dims: int = 2,
                 kernel_size: int = 3, padding: str = "zero", bias: bool = False, **gate_opts):
        ops, input_shape = res_ops(d_in, width, n_blocks, layers_per_block, d_out, stem=stem, conv=conv,
                                   input_size=input_size, spatial_dims=spatial_dims, kernel_size=kernel_size,
                                   padding=padding, bias=bias)
        super().__init__(ops, input_shape, **gate_opts)
        self.config = dict(width=width, n_blocks=n_blocks, layers_per_block=layers_per_block, d_out=d_out,
                           stem=stem, conv=conv)
        he_init(self)
        scale_block_outputs(self, 1 / math.sqrt(sum(isinstance(op, graph.Residual) for op in self.ops)))

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"input_shape={self.input_shape}, {opts}, gate={self.gate_kind!r}"


@torch.no_grad()
def scale_block_outputs(model: GatedNet, factor: float) -> None:
    """Multiply the weights of the last weight layer inside every Residual block by `factor`."""
    for ops in (model.ops, model.gating_ops or []):
        for op in graph.walk(ops):
            if isinstance(op, graph.Residual):
                [*_, last] = [o for o in op.block if isinstance(o, graph.Linear)]
                last.module.weight.mul_(factor)


class ResDNN(ResNet):
    """The residual ReLU network (hard gates): gates from its own pre-activations."""
    gating = "self"


class ResDGN(ResNet):
    """Residual deep gated network: gates from a separate residual ReLU network of the same shape."""
    gating = "relu"


class ResDLGN(ResNet):
    """Residual DLGN: gates from the same residual network without ReLUs (a linear map of x per layer)."""
    gating = "linear"


class ResDLGNSF(ResNet):
    """Residual DLGN with shallow features: every gating layer reads x (pooled to its resolution), q_l = W_l x."""
    gating = "shallow"


RES_KINDS = {"dnn": ResDNN, "dgn": ResDGN, "dlgn": ResDLGN, "dlgnsf": ResDLGNSF}


def resnet_preset(depth_per_stage: Sequence[int] = (2, 2, 2), widths: Sequence[int] = (16, 32, 64),
                  kind: str = "dnn", *, in_channels: int = 3, input_size=32, d_out: int = 10, **opts) -> ResNet:
    """A CIFAR-style ResNet: a gated 3x3 stem, then per stage `depth_per_stage[s]` basic blocks (two gated
    3x3 convs inside one identity skip) at width `widths[s]`; between stages AvgPool(2) and a gated conv
    that changes the width; GAP and a linear readout.

    Gated layers: 1 + 2 * sum(depth_per_stage) + (stages - 1); (18, 18, 18) is the shape of ResNet-110.
    `opts` go to the model class (padding, bias, gate, value_input, ...).
    """
    return model_class(RES_KINDS, kind)(in_channels, list(widths), list(depth_per_stage), layers_per_block=2,
                                        d_out=d_out, conv=True, input_size=input_size, **opts)
