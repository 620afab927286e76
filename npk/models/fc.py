"""Fully connected gated networks: DNN, DGN, DLGN and DLGN-SF.

All four share the value network d_in -> widths[0] -> ... -> widths[-1] -> d_out, with a gate after
every hidden layer; they differ only in where the gates come from (see `npk.models.base`).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .. import graph
from ..validate import positive_int, positive_ints
from .base import GatedNet
from .init import he_init


def fc_ops(d_in: int, widths: Sequence[int], d_out: int, bias: bool) -> list[graph.Op]:
    """Op list of a fully connected value network with one gate per hidden layer."""
    d_in, widths, d_out = positive_int("d_in", d_in), positive_ints("widths", widths), positive_int("d_out", d_out)
    ops: list[graph.Op] = []
    sizes = [d_in, *map(int, widths)]
    for layer, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        ops += [graph.Linear(nn.Linear(a, b, bias=bias)), graph.Gate(layer)]
    ops.append(graph.Readout(nn.Linear(sizes[-1], d_out, bias=bias)))
    return ops


class FCNet(GatedNet):
    """Fully connected gated network; gating="self" | "relu" | "linear" | "shallow" (keyword, or a thin name).

    `gating=` picks the network that computes the pre-activations, `gate=` how they become gates (`GatedNet`).
    """

    def __init__(self, d_in: int, widths: Sequence[int], d_out: int = 1, *, bias: bool = False, **gate_opts):
        super().__init__(fc_ops(d_in, widths, d_out, bias), (d_in,), **gate_opts)
        self.d_in, self.widths, self.d_out = d_in, list(widths), d_out
        he_init(self)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, widths={self.widths}, d_out={self.d_out}, gate={self.gate_kind!r}"


class DNN(FCNet):
    """The ordinary ReLU network (hard gates) or its soft-gated version: gates from its own pre-activations."""
    gating = "self"


class DGN(FCNet):
    """Deep gated network: gates from a separate ReLU network of the same shape."""
    gating = "relu"


class DLGN(FCNet):
    """Deep linearly gated network: gates from a deep linear network, q_l = W_l ... W_1 x."""
    gating = "linear"


class DLGNSF(FCNet):
    """DLGN with shallow features: every gating layer reads x, q_l = W_l x."""
    gating = "shallow"
