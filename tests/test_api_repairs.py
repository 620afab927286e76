"""Small API repairs: channel_plan takes a model and names gates; a GatedNet prints its op list;
the gate= / gating= pair is explained where both appear."""
import pytest
import torch

import npk
from npk import graph
from npk.models import zoo


def test_channel_plan_takes_a_model_or_its_ops_and_names_the_gates():
    net = npk.models.from_module(zoo.resnet18(width=2).eval(), torch.randn(2, 3, 8, 8))
    names = graph.channel_plan(net)
    # the stem's ReLU and each stage's last block output feed an identity shortcut into a ReLU
    assert names == ["Gate(layer=0)", "Gate(layer=2)", "Gate(layer=6)", "Gate(layer=10)", "Gate(layer=14)"]
    assert graph.channel_plan(net.ops) == names
    assert len(graph.kept_gates(net.ops)) == len(names)
    assert graph.channel_plan(npk.models.ResDLGN(3, 4, 2, d_out=2)) == []   # a weight layer after every gate
    with pytest.raises(TypeError, match="from_module"):
        graph.channel_plan(zoo.resnet18(width=2))                            # a plain module: trace it first


def test_a_printed_gated_net_shows_its_op_list():
    text = repr(npk.models.ResDLGN(3, 4, 2, d_out=2))
    assert text.startswith("ResDLGN(gating='linear', gate='hard', value_input='x', input_shape=(3,),")
    lines = [line.strip() for line in text.splitlines()]
    assert lines.count("Residual(") == 2 and lines.count("identity") == 2
    assert [line for line in lines if line.startswith("Gate(")] == [f"Gate(layer={i})" for i in range(3)]
    assert "Readout(Linear(in_features=4, out_features=2, bias=False))" in lines


def test_the_store_fingerprint_does_not_read_the_new_repr(monkeypatch):
    from npk.kernels.store import model_fingerprint
    model = npk.models.DLGN(3, [4], 2)
    before = model_fingerprint(model)
    monkeypatch.setattr(npk.models.base.GatedNet, "__repr__", lambda self: "changed")
    assert repr(model) == "changed" and model_fingerprint(model) == before


@pytest.mark.parametrize("where", [npk.models.base.GatedNet, npk.models.base.GatedNet.with_gating,
                                   npk.models.from_module, npk.models.FCNet, npk.models.ConvNet,
                                   npk.models.ResNet])
def test_gate_and_gating_are_told_apart_where_both_appear(where):
    doc = where.__doc__
    assert "gating" in doc and "gate" in doc and "how" in doc.lower()
