"""Convolutional gated networks: ConvDNN, ConvDGN, ConvDLGN, ConvDLGNSF, and the papers' presets.

The value network is a stack of gated 'same'-size convolutions (stride 1, odd kernel, zero or circular
padding), optional AvgPool(2) after chosen layers, a head (global average pooling or flatten), optional
gated dense layers, and a linear readout:

    x -> [Conv, Gate, (AvgPool(2))] * L -> GAP | Flatten -> [Linear, Gate] * D -> Readout

Pooling is average pooling, never max pooling, so that every model stays a gated linear network whose
NPK `npk.kernels.npk` computes exactly. The four classes differ only in their gating network (see
`npk.models.base`). `input_size` is a required keyword: it fixes the input shape (C, *spatial) that
inputs are checked against and the width of a flatten head.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Sequence

from torch import nn

from .. import graph
from ..validate import positive_ints
from .base import GatedNet
from .init import he_init

PADDINGS = {"zero": "zeros", "circular": "circular"}
POOLINGS = ("gap", "flatten")
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d}


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def spatial_shape(input_size, spatial_dims: int) -> tuple[int, ...]:
    """input_size (an int for a square / cubic input, or one int per spatial axis) as a tuple."""
    check_choice("spatial_dims", spatial_dims, tuple(_CONVS))
    if isinstance(input_size, Integral):
        size = (input_size,) * spatial_dims
    else:
        size = tuple(input_size) if isinstance(input_size, (tuple, list)) else ()
    if len(size) != spatial_dims or any(not isinstance(s, Integral) or s < 1 for s in size):
        raise ValueError(f"input_size must be a positive int or a tuple of {spatial_dims} positive ints "
                         f"(spatial_dims={spatial_dims}), got {input_size!r}")
    return tuple(map(int, size))


class OpBuilder:
    """Builds an op list one gated layer at a time, tracking the stream's shape and numbering the gates.

    A gated layer is a dense Linear while the stream is flat (C,) and a convolution while it has
    spatial axes (C, *spatial).
    """

    def __init__(self, input_shape: tuple[int, ...], kernel_size: int = 3, padding: str = "zero", bias: bool = False):
        check_choice("padding", padding, PADDINGS)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int (a 'same'-size convolution pads "
                             f"kernel_size // 2 on each side), got {kernel_size!r}")
        if input_shape[0] < 1:
            raise ValueError(f"need at least one input channel / feature, got input shape {input_shape}")
        self.shape = tuple(input_shape)
        self.kernel_size, self.padding_mode, self.bias = kernel_size, PADDINGS[padding], bias
        self.n_gates = 0

    def gated(self, width: int) -> list[graph.Op]:
        """[Linear, Gate]: a weight layer to `width` channels followed by the next gate."""
        c, spatial = self.shape[0], self.shape[1:]
        if spatial:
            module = _CONVS[len(spatial)](c, width, self.kernel_size, padding=self.kernel_size // 2,
                                          padding_mode=self.padding_mode, bias=self.bias)
        else:
            module = nn.Linear(c, width, bias=self.bias)
        self.shape = (width, *spatial)
        self.n_gates += 1
        return [graph.Linear(module), graph.Gate(self.n_gates - 1)]

    def avgpool(self) -> graph.AvgPool:
        """AvgPool(2), halving every spatial axis (rounding down)."""
        spatial = self.shape[1:]
        if not spatial or min(spatial) < 2:
            raise ValueError(f"the input is too small for this network: the AvgPool(2) after gated layer "
                             f"{self.n_gates - 1} meets spatial size {spatial}; every AvgPool(2) halves the "
                             f"size, so use a larger input_size or pool fewer times")
        self.shape = (self.shape[0], *(s // 2 for s in spatial))
        return graph.AvgPool(2)

    def head(self, pooling: str) -> graph.Op:
        """GlobalAvgPool (stream -> (C,)) or Flatten (stream -> (C * prod(spatial),))."""
        check_choice("pooling", pooling, POOLINGS)
        if pooling == "gap":
            self.shape = (self.shape[0],)
            return graph.GlobalAvgPool()
        self.shape = (math.prod(self.shape),)
        return graph.Flatten()

    def readout(self, d_out: int) -> graph.Readout:
        if not isinstance(d_out, int) or d_out < 1:
            raise ValueError(f"d_out must be a positive int, got {d_out!r}")
        return graph.Readout(nn.Linear(self.shape[0], d_out, bias=self.bias))


def conv_ops(in_channels: int, channels: Sequence[int], *, input_size, kernel_size: int = 3,
             padding: str = "zero", pooling: str = "gap", d_out: int = 10, spatial_dims: int = 2,
             pool_every: Sequence[int] | None = None, dense_widths: Sequence[int] = (),
             bias: bool = False) -> tuple[list[graph.Op], tuple[int, ...]]:
    """The op list of a convolutional value network and its input shape (in_channels, *input_size)."""
    channels = positive_ints("channels", channels)
    dense_widths = positive_ints("dense_widths", dense_widths, allow_empty=True)
    pools = sorted(set(pool_every or ()))
    if len(pools) != len(list(pool_every or ())) or any(p not in range(len(channels)) for p in pools):
        raise ValueError(f"pool_every must list distinct conv layer indices in 0..{len(channels) - 1} "
                         f"(AvgPool(2) after each), got {pool_every}")
    input_shape = (in_channels, *spatial_shape(input_size, spatial_dims))
    b = OpBuilder(input_shape, kernel_size, padding, bias)
    ops: list[graph.Op] = []
    for layer, width in enumerate(channels):
        ops += b.gated(width)
        if layer in pools:
            ops.append(b.avgpool())
    ops.append(b.head(pooling))
    for width in dense_widths:
        ops += b.gated(width)
    ops.append(b.readout(d_out))
    return ops, input_shape


class ConvNet(GatedNet):
    """Convolutional gated network; `gating=` as a keyword or fixed by a thin name. Arguments as in `conv_ops`.

    `gating=` picks the network that computes the pre-activations, `gate=` how they become gates (`GatedNet`).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], kernel_size: int = 3, padding: str = "zero",
                 pooling: str = "gap", d_out: int = 10, spatial_dims: int = 2, *, input_size,
                 pool_every: Sequence[int] | None = None, dense_widths: Sequence[int] = (), bias: bool = False,
                 **gate_opts):
        ops, input_shape = conv_ops(in_channels, channels, input_size=input_size, kernel_size=kernel_size,
                                    padding=padding, pooling=pooling, d_out=d_out, spatial_dims=spatial_dims,
                                    pool_every=pool_every, dense_widths=dense_widths, bias=bias)
        super().__init__(ops, input_shape, **gate_opts)
        self.channels, self.dense_widths = list(channels), list(dense_widths)
        self.config = dict(kernel_size=kernel_size, padding=padding, pooling=pooling, d_out=d_out,
                           pool_every=sorted(pool_every or ()))
        he_init(self)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return (f"input_shape={self.input_shape}, channels={self.channels}, dense_widths={self.dense_widths}, "
                f"{opts}, gate={self.gate_kind!r}")


class ConvDNN(ConvNet):
    """The ordinary convolutional ReLU network (hard gates): gates from its own pre-activations."""
    gating = "self"


class ConvDGN(ConvNet):
    """Convolutional deep gated network: gates from a separate ReLU network of the same shape."""
    gating = "relu"


class ConvDLGN(ConvNet):
    """Convolutional DLGN: gates from a deep linear (conv, pool) network, so each is a half-space in x."""
    gating = "linear"


class ConvDLGNSF(ConvNet):
    """Convolutional DLGN with shallow features: gating layer l convolves x (pooled to its resolution)."""
    gating = "shallow"


CONV_KINDS = {"dnn": ConvDNN, "dgn": ConvDGN, "dlgn": ConvDLGN, "dlgnsf": ConvDLGNSF}


def model_class(kinds: dict, kind: str) -> type:
    """The class for `kind` ("dnn", "dgn", ...) in a kind -> class table."""
    check_choice("kind", kind, kinds)
    return kinds[kind]


# ------------------------------------------------------------------------------------------ presets
def C4GAP(kind: str = "dnn", *, in_channels: int = 3, input_size=32, d_out: int = 10, width: int = 128,
          **opts) -> ConvNet:
    """Four 3x3 convolutions of `width` channels (zero padding 1), global average pooling, one linear layer.

    The C4GAP of 2110.03403 (the authors' later code); `opts` go to the model class (gate, value_input, ...).
    """
    return model_class(CONV_KINDS, kind)(in_channels, [width] * 4, d_out=d_out, pooling="gap",
                                         input_size=input_size, **opts)


def _paper_conv(pooling: str, kind: str, in_channels: int, input_size, d_out: int, opts: dict) -> ConvNet:
    return model_class(CONV_KINDS, kind)(in_channels, [64, 64, 128, 128], d_out=d_out, pooling=pooling,
                                         input_size=input_size, dense_widths=(256, 256), **opts)


def VCONV(kind: str = "dnn", *, in_channels: int = 3, input_size=32, d_out: int = 10, **opts) -> ConvNet:
    """3x3 convs with 64, 64, 128, 128 channels ('same'), each gated; flatten; gated dense 256, 256; dense d_out.

    The VCONV of the NPF/NPK paper (PAPER.md section 3). At 32x32 the flatten feeds 131,072 features
    to the first dense layer (33.6M weights); `pool_every` shrinks that.
    """
    return _paper_conv("flatten", kind, in_channels, input_size, d_out, opts)


def GCONV(kind: str = "dnn", *, in_channels: int = 3, input_size=32, d_out: int = 10, **opts) -> ConvNet:
    """VCONV with global average pooling instead of flatten (PAPER.md section 3)."""
    return _paper_conv("gap", kind, in_channels, input_size, d_out, opts)


VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def vgg_layers(cfg) -> tuple[list[int], list[int]]:
    """A VGG config (a name in VGG_CONFIGS or a list of channel counts and "M") as (channels, pool_every)."""
    if isinstance(cfg, str):
        check_choice("cfg", cfg, VGG_CONFIGS)
        cfg = VGG_CONFIGS[cfg]
    channels, pools = [], []
    for item in cfg:
        if item == "M" and channels and (not pools or pools[-1] != len(channels) - 1):
            pools.append(len(channels) - 1)
        elif isinstance(item, int) and item >= 1:
            channels.append(item)
        else:
            raise ValueError(f"a VGG config lists positive channel counts and 'M' (AvgPool(2) after the conv "
                             f"before it; never first, never twice in a row), got {item!r} in {list(cfg)}")
    return channels, pools


def VGG(cfg="vgg16", kind: str = "dnn", *, in_channels: int = 3, input_size=32, d_out: int = 10,
        **opts) -> ConvNet:
    """A VGG-style stack of gated 3x3 convs with AvgPool(2) between stages and a GAP + linear head.

    Average pooling (not VGG's max pooling) keeps the model a gated linear network with an exact NPK;
    the GAP head replaces VGG's dense classifier, as in the CIFAR variants of 2110.03403.
    """
    channels, pools = vgg_layers(cfg)
    return model_class(CONV_KINDS, kind)(in_channels, channels, d_out=d_out, pooling="gap", pool_every=pools,
                                         input_size=input_size, **opts)
