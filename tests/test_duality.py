"""The duality check: passes on tiny nets (1e-10 in float64), fails on wrong gates or a broken NPK rule."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from npk import graph
from npk.kernels import compact, conv_fast
from npk.kernels import rules
from npk.models.base import GatedNet
from npk.models.fc import DLGN, DNN
from npk.theory.duality import duality


class TinyConv(GatedNet):
    gating = "linear"


def tiny_conv(padding: str) -> TinyConv:
    ops = [graph.Linear(nn.Conv1d(2, 2, 3, padding=1, padding_mode=padding)), graph.Gate(0),
           graph.Linear(nn.Conv1d(2, 2, 3, padding=1, padding_mode=padding)), graph.Gate(1),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 2))]
    torch.manual_seed(0)
    return TinyConv(ops, (2, 5)).double()


def data(shape, n=6, dtype=torch.float64):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("make", [lambda: DLGN(3, [4, 3], 2, bias=True).double(), lambda: tiny_conv("zeros")],
                         ids=["dlgn", "conv"])
def test_passes_on_tiny_nets(make, tmp_path):
    model = make()
    result = duality(model, data(model.input_shape))
    assert result.passed and result.tolerance == 1e-10
    assert result.statistic < 1e-10
    assert result.statistic == max(result.details["output_error"], result.details["gram_error"])
    json.dumps(result.to_dict())
    result.plot(path=tmp_path / "duality.png")
    assert (tmp_path / "duality.png").stat().st_size > 1000


def test_float32_tolerance():
    torch.manual_seed(0)
    model = DLGN(3, [4, 3], 2, bias=True)
    result = duality(model, data((3,), dtype=torch.float32))
    assert result.tolerance == 1e-4 and result.details["dtype"] == "torch.float32"
    assert result.passed and result.statistic < 1e-5


def test_fails_when_the_gates_are_not_the_forward_ones(monkeypatch):
    """A DNN's forward gates itself; if `gates` reported other gates, the features would not give the output."""
    torch.manual_seed(0)
    model = DNN(3, [4, 3], 2).double()
    own = model.gates
    monkeypatch.setattr(model, "gates", lambda X, kind=None: [1 - g for g in own(X, kind)])
    result = duality(model, data((3,)))
    assert not result.passed
    assert result.details["output_error"] > 0.01
    assert result.details["gram_error"] < 1e-10  # npk_gram and Phi both see the flipped gates


def test_fails_when_an_npk_rule_is_wrong(monkeypatch):
    """Treating zero padding as circular in the conv rule must be caught by the Gram half of the check.

    (The generic rules, where the wrong rule is planted: the fused conv path does not call conv_sum.)
    """
    model = tiny_conv("zeros")
    assert duality(model, data((2, 5))).passed
    conv_sum = rules.conv_sum
    monkeypatch.setattr(rules, "conv_sum",
                        lambda M, axes: conv_sum(M, [dataclasses.replace(a, circular=True) for a in axes]))
    monkeypatch.setitem(conv_fast._state, "backend", "off")
    result = duality(model, data((2, 5)))
    assert not result.passed
    assert result.details["gram_error"] > 0.01 and result.details["output_error"] < 1e-10


@pytest.mark.extension
def test_fails_when_the_fused_conv_kernel_reads_wrong_gates(monkeypatch):
    """The default path for conv nets is checked too: wrongly packed gates must fail the Gram half."""
    model = tiny_conv("zeros")
    pack_bits = compact.pack_bits
    monkeypatch.setattr(compact, "pack_bits", lambda g: pack_bits(1 - g))
    monkeypatch.setitem(conv_fast._state, "backend", "extension")
    result = duality(model, data((2, 5)))
    assert not result.passed
    assert result.details["gram_error"] > 0.01 and result.details["output_error"] < 1e-10


def test_too_big_to_enumerate():
    model = DLGN(20, [64, 64], 1)
    with pytest.raises(ValueError, match=r"up to 81,920 partial path classes.*max_classes=.*smaller widths"):
        duality(model, data((20,), dtype=torch.float32), max_classes=50_000)


def test_bad_input():
    with pytest.raises(TypeError, match="npk gated model"):
        duality(nn.Linear(3, 1), data((3,)))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        duality(DLGN(3, [4], 1), data((4,)))
