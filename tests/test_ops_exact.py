"""The new op rules (strided / dilated / padded convs, average and max pooling, residual skip branches)
against brute-force path enumeration, float64 to 1e-10, for every gating kind; and the op checklist."""
import importlib
import re

import pytest
import torch
from torch import nn

from npk import graph
from npk.kernels import npk as npk_module
from npk.kernels import infinite, reference
from npk.kernels.infinite import expected_npk
from npk.models.base import GATINGS, GatedNet
from helpers import assert_exact, randomize

CONVS = [  # (kernel, stride, dilation, padding, padding_mode)
    (3, 2, 1, 1, "zeros"), (2, 1, 1, "same", "zeros"), (4, 1, 2, "same", "circular"), (3, 1, 1, "valid", "zeros"),
    (3, 2, 2, 2, "circular"), (2, 2, 1, 0, "zeros"), (3, 1, 1, 1, "circular"),
]


def model_of(ops, shape, gating, seed=0, **opts):
    return randomize(GatedNet(graph.number(ops), shape, gating=gating, **opts), seed)


def conv(d, c_in, c_out, k=3, stride=1, dilation=1, padding=1, mode="zeros", bias=True):
    return graph.Linear(nn.Conv1d(c_in, c_out, k, stride, padding, dilation, padding_mode=mode, bias=bias) if d == 1
                        else nn.Conv2d(c_in, c_out, k, stride, padding, dilation, padding_mode=mode, bias=bias))


@pytest.mark.parametrize("gating", ["self", "relu", "linear"])
@pytest.mark.parametrize("k,stride,dilation,padding,mode", CONVS)
def test_strided_dilated_padded_convs_are_exact(k, stride, dilation, padding, mode, gating):
    ops = [conv(1, 2, 3, k, stride, dilation, padding, mode), graph.Gate(0),
           conv(1, 3, 2, k, stride, dilation, padding, mode, bias=False), graph.Gate(1),
           graph.Flatten(), graph.Readout(nn.Linear(1, 2))]
    n_out = 9
    for layer in (ops[0], ops[2]):
        n_out = layer.axes[0].out_size(n_out)
    ops[-1] = graph.Readout(nn.Linear(2 * n_out, 2))
    assert_exact(model_of(ops, (2, 9), gating))


def test_a_2d_strided_conv_with_even_kernel_and_circular_padding_is_exact():
    ops = [conv(2, 2, 2, 2, 1, 1, "same", "circular"), graph.Gate(0), conv(2, 2, 3, 3, 2, 1, 1), graph.Gate(1),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(3, 1))]
    assert_exact(model_of(ops, (2, 5, 4), "relu"))


@pytest.mark.parametrize("pool", [graph.AvgPool(3, 2, 1), graph.AvgPool(3, 2, 1, count_include_pad=False),
                                  graph.AvgPool(2, 1), graph.AvgPool((2, 3), (1, 2), (1, 1), False)])
def test_general_average_pooling_is_exact(pool):
    ops = [conv(2, 1, 2), graph.Gate(0), pool, graph.Flatten(), graph.Readout(nn.Linear(1, 1))]
    shape = graph.shape_after(pool, (2, 5, 5))
    ops[-1] = graph.Readout(nn.Linear(shape[0] * shape[1] * shape[2], 1))
    assert_exact(model_of(ops, (1, 5, 5), "self"))


@pytest.mark.parametrize("gating", GATINGS)
def test_max_pooling_as_a_selection_gate_is_exact(gating):
    ops = [conv(2, 2, 3), graph.Gate(0), graph.MaxPool(2), conv(2, 3, 2, padding=0), graph.Gate(1),
           graph.MaxPool(3, 2, 1), graph.Flatten(), graph.Readout(nn.Linear(2, 2))]
    assert_exact(model_of(ops, (2, 6, 6), gating))


@pytest.mark.parametrize("pool", [graph.MaxPool(3, 2, 1), graph.MaxPool(2, 1, 0, dilation=2),
                                  graph.MaxPool(2, 3, 0, ceil_mode=True), graph.MaxPool(3, 1, 1)])
@pytest.mark.parametrize("gating", ["self", "relu"])
def test_max_pooling_with_any_window_geometry_is_exact(pool, gating):
    ops = [conv(1, 2, 2), graph.Gate(0), pool, graph.Flatten(), graph.Readout(nn.Linear(1, 2))]
    size = graph.shape_after(pool, (2, 7))
    ops[-1] = graph.Readout(nn.Linear(size[0] * size[1], 2))
    assert_exact(model_of(ops, (2, 7), gating))


def test_a_dnn_with_max_pooling_equals_torch_max_pooling():
    seq = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(9, 1))
    ops = [graph.Linear(seq[0]), graph.Gate(0), graph.MaxPool(2), graph.Flatten(), graph.Readout(seq[4])]
    model = GatedNet(graph.number(ops), (1, 6)).double()
    X = torch.randn(5, 1, 6, dtype=torch.float64)
    assert torch.allclose(model(X), seq.double()(X), atol=1e-12)


def test_a_dlgn_with_max_pooling_keeps_its_gating_network_linear():
    """Its gates' pre-activations are affine in x (the gating stream pools by average); the selection is
    the argmax of the gate's pre-activation over each window."""
    ops = [conv(1, 1, 2), graph.Gate(0), graph.MaxPool(2), conv(1, 2, 2), graph.Gate(1), graph.Flatten(),
           graph.Readout(nn.Linear(6, 1))]
    model = model_of(ops, (1, 6), "linear")
    x, y = torch.randn(2, 1, 1, 6, dtype=torch.float64)
    q = lambda z: model.gating_preactivations(z)[1]
    assert torch.allclose(q(3 * x - 2 * y), 3 * q(x) - 2 * q(y), atol=1e-12)  # affine (biases): weights sum to 1
    q0 = model.gating_preactivations(x)[0]
    assert torch.equal(model.selections(x)[0], q0.reshape(1, 2, 3, 2).argmax(-1) + torch.arange(0, 6, 2))


@pytest.mark.parametrize("gating", GATINGS)
def test_residual_with_a_projection_shortcut_and_relu_after_the_sum_is_exact(gating):
    """The ResNet basic block: relu(block(h) + skip(h)) with a strided 1x1 projection, then an identity one."""
    ops = [conv(1, 1, 2), graph.Gate(0),
           graph.Residual([conv(1, 2, 2, stride=2), graph.Gate(1), conv(1, 2, 2)], [conv(1, 2, 2, 1, 2, padding=0)]),
           graph.Gate(2),
           graph.Residual([conv(1, 2, 2, bias=False), graph.Gate(3), conv(1, 2, 2, bias=False)]), graph.Gate(4),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 2))]
    model = model_of(ops, (1, 5), gating)
    assert npk_module.graph.channel_plan(model.ops), "the identity shortcut into a ReLU keeps channels"
    assert_exact(model)


@pytest.mark.parametrize("gate,channels", [("hard", 3), ("soft", 3), ("hard", 2)])
def test_identity_shortcuts_into_relus_keep_a_few_masked_shared_kernels_and_are_exact(gate, channels, monkeypatch):
    """Two identity blocks in a row: three terms E_k under per-channel masks where there are 3 channels,
    one kernel per channel where there are fewer channels than terms."""
    made, summed = [], []
    dense, summed_rule = npk_module.Pair.dense, npk_module.Pair.summed
    monkeypatch.setattr(npk_module.Pair, "dense", lambda self: made.append(self.kind) or dense(self))
    monkeypatch.setattr(npk_module.Pair, "summed", lambda self: summed.append(len(self.terms)) or summed_rule(self))
    c = channels
    ops = [conv(1, 1, c), graph.Gate(0), graph.Residual([conv(1, c, 1), graph.Gate(1), conv(1, 1, c)]), graph.Gate(2),
           graph.Residual([conv(1, c, 1, bias=False), graph.Gate(3), conv(1, 1, c)]), graph.Gate(4),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(c, 2))]
    assert_exact(model_of(ops, (1, 4), "relu", gate=gate))
    assert ("terms" in made) == (channels < 3) and max(summed) == (3 if channels == 3 else 2)


def test_an_identity_shortcut_into_a_max_pool_is_exact():
    ops = [conv(1, 1, 2), graph.Gate(0), graph.Residual([conv(1, 2, 2), graph.Gate(1)]), graph.Gate(2),
           graph.MaxPool(2), graph.Flatten(), graph.Readout(nn.Linear(4, 1))]
    assert_exact(model_of(ops, (1, 4), "relu"))


def test_a_max_pool_not_after_a_gate_is_refused():
    with pytest.raises(ValueError, match="must directly follow a Gate"):
        GatedNet(graph.number([conv(1, 1, 2), graph.MaxPool(2), graph.Gate(0), graph.Flatten(),
                               graph.Readout(nn.Linear(4, 1))]), (1, 4))


def test_the_expected_kernel_refuses_max_pooling_by_name():
    ops = [conv(1, 1, 2, bias=False), graph.Gate(0), graph.MaxPool(2), graph.Flatten(),
           graph.Readout(nn.Linear(4, 1, bias=False))]
    with pytest.raises(ValueError, match="max pooling"):
        expected_npk(GatedNet(graph.number(ops), (1, 4), gating="relu"), torch.randn(2, 1, 4))


def test_the_expected_kernel_of_a_strided_conv_matches_the_mean_over_gating_networks():
    """One gated layer is exact at any width: E over gating nets of H equals expected_npk (Monte Carlo, 4 sd)."""
    ops = [conv(1, 1, 40, 3, 2, 1, 1, bias=False), graph.Gate(0), graph.AvgPool(3, 2, 1), graph.Flatten(),
           graph.Readout(nn.Linear(40 * 2, 1, bias=False))]
    model = GatedNet(graph.number(ops), (1, 7), gating="linear").double()
    X = torch.randn(3, 1, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    samples = torch.stack([npk_module.npk_gram(model.with_gating("linear"), X) for _ in range(200)])
    mean, sd = samples.mean(0), samples.std(0) / 200**0.5
    assert ((mean - expected_npk(model, X)).abs() <= 4 * sd + 1e-9).all()


# ------------------------------------------------------------------------------------ the checklist
def test_every_op_has_a_rule_in_every_reading():
    for op in graph.OPS:
        assert set(graph.RULES.get(op, {})) == set(graph.READINGS), f"{op.__name__} lacks a reading in graph.RULES"
    channel_aware = (graph.Gate, graph.MaxPool, graph.Residual)
    missing_npk = [op for op in graph.OPS if op not in npk_module.pair_rule.registry and op not in channel_aware]
    missing_ref = [op for op in graph.OPS if op not in reference._step.registry and op is not graph.Readout]
    missing_expected = [op for op in graph.OPS if op not in infinite.expected_rule.registry and op not in infinite.REFUSED]
    assert not missing_npk and not missing_ref and not missing_expected, (missing_npk, missing_ref, missing_expected)
    assert all(hasattr(op, "forward") or op in (graph.Gate, graph.Residual) for op in graph.OPS)
    for op, readings in graph.RULES.items():      # every "module: function" entry names a real function
        for reading, where in readings.items():
            if ":" in where and not where.startswith(("error", "no weights")):
                module, name = where.split(": ")
                name = re.match(r"\w+", name).group()
                assert hasattr(importlib.import_module(f"npk.{module}"), name), (op.__name__, reading, where)


def test_the_checklist_test_fails_for_an_op_without_rules(monkeypatch):
    class Stretch:
        pass

    monkeypatch.setattr(graph, "OPS", graph.OPS + (Stretch,))
    with pytest.raises(AssertionError, match="Stretch"):
        test_every_op_has_a_rule_in_every_reading()


def test_the_checklist_test_fails_for_an_op_with_every_rule_but_the_expected_one(monkeypatch):
    """A planted op with its checklist entries, an NPK rule and a reference step, but no expected rule: the
    checklist fails, and expected_npk refuses it by name instead of running its NPK rule."""
    class Stretch:                              # a GlobalAvgPool by another name
        forward = graph.GlobalAvgPool.forward

    monkeypatch.setattr(graph, "OPS", graph.OPS + (Stretch,))
    monkeypatch.setitem(graph.RULES, Stretch, graph.RULES[graph.GlobalAvgPool])
    for reading in (npk_module.pair_rule, reference._step):    # a local class: registering it leaks nothing
        reading.register(Stretch, reading.registry[graph.GlobalAvgPool])
    with pytest.raises(AssertionError, match=r"\[\], \[\], \[<class .*Stretch'>\]"):
        test_every_op_has_a_rule_in_every_reading()
    model = model_of([conv(1, 1, 2), graph.Gate(0), Stretch(), graph.Readout(nn.Linear(2, 1))], (1, 4), "relu")
    with pytest.raises(TypeError, match="expected_npk has no rule for op .*Stretch"):
        expected_npk(model, torch.randn(2, 1, 4, dtype=torch.float64))


# ------------------------------------------------------------------------------ gating as an argument
def test_gating_is_a_constructor_argument_and_the_thin_names_fix_it():
    from npk.models import FCNet, ResDLGNSF, ResNet
    from npk.models.fc import DNN
    assert FCNet(3, [4], gating="linear").gating == "linear" and FCNet(3, [4]).gating == "self"
    with pytest.raises(ValueError, match=r"DNN is the gating='self' name of FCNet; use FCNet\(..., gating='relu'\)"):
        DNN(3, [4], gating="relu")
    res = randomize(ResDLGNSF(2, 2, 2, conv=True, input_size=3, spatial_dims=1, bias=True), 0)
    assert isinstance(res, ResNet) and res.gating == "shallow"
    assert_exact(res)


def test_a_block_that_starts_with_a_gate_leaves_the_shortcut_kernel_alone():
    """s + conv(relu(s)) on a shortcut sum s: the block's gate must not overwrite the kernel the skip returns."""
    ops = [conv(1, 1, 2), graph.Gate(0), graph.Residual([conv(1, 2, 2)]),
           graph.Residual([graph.Gate(1), conv(1, 2, 2)]), graph.Gate(2), graph.Flatten(),
           graph.Readout(nn.Linear(8, 1))]
    assert_exact(model_of(ops, (1, 4), "relu"))
