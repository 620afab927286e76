"""Turn a plain ReLU nn.Sequential into a DNN (a GatedNet that gates itself) sharing its modules.

A thin call of `npk.models.trace.from_module` (which takes any traceable ReLU network): each weight layer
followed by a ReLU becomes [Linear, Gate], pooling and flatten become the matching ops, and the last
nn.Linear becomes the Readout. The modules are shared, not copied: training either model trains both.
"""
from __future__ import annotations

from numbers import Integral

import torch
from torch import nn

from .base import GatedNet
from .trace import from_module


def from_sequential(seq: nn.Sequential, input_shape) -> GatedNet:
    """A DNN whose op list is `seq`'s layers; `input_shape` is one sample's shape, (d_in,) or (C, *spatial).

    Its forward equals seq's; ValueError names the first layer it cannot take.
    """
    if not isinstance(seq, nn.Sequential):
        raise TypeError(f"from_sequential takes an nn.Sequential, got {type(seq).__name__}")
    input_shape = (input_shape,) if isinstance(input_shape, Integral) else tuple(input_shape)
    param = next(seq.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    try:
        example = torch.zeros((1, *input_shape), dtype=dtype)
        seq(example)
    except RuntimeError as err:
        raise ValueError(f"the network does not fit the input shape {input_shape}: {err}") from err
    return from_module(seq, example)
