"""Every NPK op rule against brute-force path enumeration (npk.kernels.reference), in float64 to 1e-10.

For each network: npk_gram(X) == Phi Phi^T, npk_gram(X, Y) == Phi(X) Phi(Y)^T and model(X) == Phi v.
"""
import itertools

import pytest
import torch
from torch import nn

from npk import graph
from npk.kernels.npk import npk_gram
from npk.kernels.reference import check_size, path_features, reference_npk, reference_output
from npk.models.fc import DGN, DLGN, DLGNSF, DNN
from npk.theory.duality import relative_error
from helpers import TOL, assert_exact, conv, conv_net, dense, inputs, randomize, tiny

# ---------------------------------------------------------------------------------- fully connected
FC_CASES = [(cls, gate, value_input, bias)
            for cls, gate, value_input, bias in itertools.product([DNN, DGN, DLGN, DLGNSF], ["hard", "soft"],
                                                                  ["x", "ones"], [False, True])
            if not (cls is DNN and value_input == "ones")]


@pytest.mark.parametrize("cls,gate,value_input,bias", FC_CASES,
                         ids=[f"{c.__name__}-{g}-{v}-bias{b}" for c, g, v, b in FC_CASES])
def test_fully_connected(cls, gate, value_input, bias):
    opts = {} if cls is DNN else {"value_input": value_input}
    model = randomize(cls(3, [3, 4, 2], 2, bias=bias, gate=gate, **opts), seed=2)
    phi = assert_exact(model)
    # classes: one per (input, unit, unit, unit) chain, plus the bias-started ones
    assert phi.shape[1] == 3 * 3 * 4 * 2 + bias * (3 * 4 * 2 + 4 * 2 + 2 + 1)


@pytest.mark.parametrize("cls", [DGN, DLGN])
def test_gate_kind_override(cls):
    """npk_gram(gates="soft") of a hard-gated model is the NPK of its soft gates, and vice versa."""
    for kind in ("hard", "soft"):
        model = randomize(cls(3, [4, 3], 2, gate=kind), seed=2)
        other = "soft" if kind == "hard" else "hard"
        assert_exact(model, gates=other)
        assert relative_error(npk_gram(model, inputs((3,), 4, 0), gates=other),
                              npk_gram(model, inputs((3,), 4, 0))) > 1e-3


def test_fc_closed_form():
    """H = (X X^T) * prod_l (G_l G_l^T) for a bias-free fully connected net (PAPER.md section 2)."""
    model = randomize(DLGN(3, [4, 3, 2], 2), seed=3)
    X = inputs((3,), 6, 0)
    H = X @ X.T
    for g in model.gates(X):
        H = H * (g @ g.T)
    assert relative_error(reference_npk(model, X), H) < TOL


def test_dnn_is_a_relu_mlp():
    model = randomize(DNN(3, [4, 5], 2, bias=True), seed=4)
    layers = [op.module for op in model.ops if isinstance(op, (graph.Linear, graph.Readout))]
    mlp = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])
    X = inputs((3,), 20, 0)
    with torch.no_grad():
        assert torch.equal(model(X), mlp(X))
        assert relative_error(reference_output(model, X), mlp(X)) < TOL


# ---------------------------------------------------------------------------------- convolutions
CONV1D = list(itertools.product(["zeros", "circular"], [False, True], ["gap", "flatten", "pool_flatten"], [1, 3]))


@pytest.mark.parametrize("padding,bias,head,k", CONV1D, ids=["-".join(map(str, c)) for c in CONV1D])
def test_conv1d(padding, bias, head, k):
    assert_exact(randomize(tiny("linear")(conv_net(1, padding, bias, head, k), (2, 5)), seed=5))


CONV2D = [("zeros", True, "gap", 3, "linear", "hard"), ("circular", False, "gap", 3, "self", "soft"),
          ("zeros", False, "flatten", 3, "relu", "hard"), ("circular", True, "flatten", 1, "linear", "soft"),
          ("zeros", False, "pool_flatten", 3, "shallow", "hard"), ("circular", True, "pool_flatten", 3, "self", "hard")]


@pytest.mark.parametrize("padding,bias,head,k,gating,gate", CONV2D, ids=["-".join(map(str, c)) for c in CONV2D])
def test_conv2d(padding, bias, head, k, gating, gate):
    assert_exact(randomize(tiny(gating)(conv_net(2, padding, bias, head, k), (2, 4, 4), gate=gate), seed=6))


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_pool_then_conv_and_all_ones_input(padding):
    """AvgPool(2) on an odd length (the last position is dropped) followed by another conv; ones input."""
    ops = [conv(1, 2, 3, 3, padding, True), graph.Gate(0), graph.AvgPool(2), conv(1, 3, 2, 3, padding, True),
           graph.Gate(1), graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 3))]
    for value_input in ("x", "ones"):
        assert_exact(randomize(tiny("linear")(ops, (2, 5), value_input=value_input), seed=7))


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_conv2d_nonsquare_odd_pool(padding):
    """A 3 x 5 image: AvgPool(2) keeps 1 x 2 (the last row and column are dropped), then a conv and Flatten."""
    ops = [conv(2, 1, 2, 3, padding, True), graph.Gate(0), graph.AvgPool(2), conv(2, 2, 2, 3, padding, False),
           graph.Gate(1), graph.Flatten(), graph.Readout(nn.Linear(2 * 1 * 2, 2))]
    assert_exact(randomize(tiny("shallow")(ops, (1, 3, 5)), seed=8))


# ---------------------------------------------------------------------------------- residual blocks
@pytest.mark.parametrize("n_blocks,bias", list(itertools.product([1, 2, 3], [False, True])))
def test_dense_residual(n_blocks, bias):
    ops = [dense(3, 3, bias), graph.Gate(0)]
    ops += [graph.Residual([dense(3, 3, bias), graph.Gate(b + 1)]) for b in range(n_blocks)]
    ops.append(graph.Readout(nn.Linear(3, 2, bias=bias)))
    for gating, opts in (("linear", {}), ("self", {}), ("relu", {"gate": "soft", "value_input": "ones"})):
        assert_exact(randomize(tiny(gating)(ops, (3,), **opts), seed=8))


def test_dense_residual_closed_form():
    """One-layer blocks, no stem, no bias: H = <x, x'> prod_k (1 + overlap_k) (PAPER.md section 2)."""
    ops = [graph.Residual([dense(3, 3, False), graph.Gate(b)]) for b in range(3)] + [graph.Readout(nn.Linear(3, 1, bias=False))]
    model = randomize(tiny("linear")(ops, (3,)), seed=9)
    X = inputs((3,), 6, 0)
    H = X @ X.T
    for g in model.gates(X):
        H = H * (1 + g @ g.T)
    assert relative_error(reference_npk(model, X), H) < TOL
    assert relative_error(npk_gram(model, X), H) < TOL


@pytest.mark.parametrize("padding,bias,n_blocks", list(itertools.product(["zeros", "circular"], [False, True], [1, 2, 3])))
def test_conv1d_residual(padding, bias, n_blocks):
    ops = [conv(1, 2, 2, 3, padding, bias), graph.Gate(0)]
    ops += [graph.Residual([conv(1, 2, 2, 3 if b == 0 else 1, padding, bias), graph.Gate(b + 1)])
            for b in range(n_blocks)]
    ops += [graph.AvgPool(2), graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 2, bias=bias))]
    assert_exact(randomize(tiny("linear")(ops, (2, 5)), seed=10))


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_conv2d_residual(padding):
    ops = [conv(2, 2, 2, 3, padding, True), graph.Gate(0), graph.Residual([conv(2, 2, 2, 3, padding, True), graph.Gate(1)]),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 2))]
    assert_exact(randomize(tiny("self")(ops, (2, 4, 4)), seed=11))


def test_residual_around_input_and_deep_block():
    """A skip around two gated layers straight from the input, a pool, a conv, flatten, a dense residual."""
    ops = [graph.Residual([conv(1, 2, 2, 3, "zeros", True), graph.Gate(0), conv(1, 2, 2, 3, "circular", True),
                           graph.Gate(1)]),
           graph.AvgPool(2), conv(1, 2, 2, 3, "zeros", True), graph.Gate(2), graph.Flatten(),
           graph.Residual([dense(4, 4, True), graph.Gate(3)]), graph.Readout(nn.Linear(4, 2))]
    for gating, opts in (("linear", {}), ("self", {"gate": "soft"}), ("shallow", {"value_input": "ones"})):
        assert_exact(randomize(tiny(gating)(ops, (2, 5), **opts), seed=12))


# ---------------------------------------------------------------------------------- models of npk.models
def test_conv_models():
    from npk.models.conv import ConvDGN, ConvDLGN, ConvDNN
    cases = [ConvDLGN(2, [2, 2], kernel_size=3, padding="zero", pooling="gap", d_out=2, spatial_dims=1,
                      input_size=5, bias=True),
             ConvDNN(2, [2, 2], kernel_size=3, padding="circular", pooling="flatten", d_out=2, spatial_dims=1,
                     input_size=5, gate="soft"),
             ConvDGN(1, [2, 2], kernel_size=3, padding="circular", pooling="gap", d_out=2, spatial_dims=2,
                     input_size=4, pool_every=[0], value_input="ones")]
    for seed, model in enumerate(cases):
        assert_exact(randomize(model, seed))


def test_residual_models():
    from npk.models.resnet import ResDLGN, ResDNN
    cases = [ResDLGN(3, 3, 2, layers_per_block=1, d_out=2, bias=True),
             ResDNN(3, 3, 2, layers_per_block=2, d_out=2, gate="soft"),
             ResDLGN(2, 2, 1, d_out=2, conv=True, input_size=5, spatial_dims=1, padding="circular", bias=True)]
    for seed, model in enumerate(cases):
        assert_exact(randomize(model, seed))


# ---------------------------------------------------------------------------------- blocking
@pytest.mark.parametrize("make", [lambda: DLGN(3, [4, 3], 2, bias=True),
                                  lambda: tiny("linear")(conv_net(1, "zeros", True, "gap", 3), (2, 5))],
                         ids=["dense", "conv"])
def test_blocks_match_one_block(make):
    """A budget of 1 byte forces 1-sample blocks; the Gram is the one-block Gram up to rounding.

    (Not bit for bit: products of differently shaped blocks round differently, about 1e-16 relative.)
    """
    model = randomize(make(), seed=13)
    X, Y = inputs(model.input_shape, 7, 0), inputs(model.input_shape, 5, 1)
    for Y_ in (None, Y):
        one = npk_gram(model, X, Y_)
        many = npk_gram(model, X, Y_, memory_budget=1, progress=False)
        assert relative_error(many, one) < 1e-14
        assert relative_error(one, reference_npk(model, X, Y_)) < TOL


# ---------------------------------------------------------------------------------- bad input
def test_reference_rejects_bad_gates_and_shapes():
    model = randomize(DLGN(3, [4, 3], 2), seed=14)
    X = inputs((3,), 4, 0)
    with pytest.raises(ValueError, match="one gate tensor per gated layer"):
        path_features(model, X, gates=model.gates(X)[:1])
    with pytest.raises(ValueError, match="units per sample"):
        path_features(model, X, gates=[torch.ones(4, 5), torch.ones(4, 3)])
    with pytest.raises(ValueError, match="rows"):
        path_features(model, X, gates=[g[:2] for g in model.gates(X)])
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        path_features(model, X[:, :2])
    with pytest.raises(ValueError, match="does not fit the input shape.*put Flatten or GlobalAvgPool before it"):
        tiny("linear")([conv(1, 2, 2, 3, "zeros", False), graph.Gate(0), graph.Readout(nn.Linear(5, 1))], (2, 5))


def test_size_estimate_bounds_the_enumeration():
    """check_size is an upper bound on the partial classes: exact for a dense net, and it refuses big ones."""
    model = DLGN(3, [4, 3], 2, bias=True)
    assert check_size(model) == 3 * 4 * 3 + 4 * 3 + 3
    with pytest.raises(ValueError, match="max_classes=10 .*smaller widths"):
        path_features(model, inputs((3,), 2, 0), max_classes=10)
