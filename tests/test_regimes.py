"""Tests for npk.models.regimes (and GatedNet.with_gating): the paper's training regimes, gate copying,
shuffled gates, frozen gates staying fixed through training, bad input."""
import copy
import types

import pytest
import torch
from torch import nn

from npk import graph
from npk.kernels.npk import npk_gram
from npk.models import regimes
from npk.models.base import GatedNet
from npk.models.conv import ConvDGN, ConvDNN, ConvNet
from npk.models.convert import from_sequential
from npk.models.fc import DGN, DLGN, DNN, FCNet
from npk.models.resnet import ResDGN, ResDNN
from npk.train import CHECKPOINT_FILE, train

D_IN, WIDTHS, D_OUT = 8, [16, 12], 3


def template(seed=0, **opts):
    torch.manual_seed(seed)
    return DNN(D_IN, WIDTHS, D_OUT, **opts)


@pytest.fixture(scope="module")
def data():
    """200 / 100 Gaussian inputs labelled by a random ReLU teacher (3 classes)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, D_IN, generator=g)
    torch.manual_seed(123)
    y = DNN(D_IN, [32], D_OUT)(X).argmax(1).detach()
    return types.SimpleNamespace(X_train=X[:200], y_train=y[:200], X_test=X[200:], y_test=y[200:])


@pytest.fixture(scope="module")
def trained_dnn(data):
    model = regimes.relu(template(seed=5))
    train(model, data, epochs=2, lr=0.05, momentum=0.9, progress=False)
    return model


def params(layers):
    return [p.detach().clone() for p in layers.parameters()]


def equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def gates(model, X):
    with torch.no_grad():
        return model.gates(X)


# ------------------------------------------------------------------------------- with_gating
def test_with_gating_keeps_the_value_network_and_sets_gating_on_the_architecture_class():
    dnn = template()
    before = params(dnn)
    dgn = dnn.with_gating("relu")
    assert type(dgn) is FCNet and dgn.gating == "relu" and dgn.gate_kind == "hard"
    assert equal(params(dgn.value_layers), params(dnn.value_layers))
    assert [m.weight.shape for m in dgn.gating_layers] == [m.weight.shape for m in dnn.value_layers[:-1]]
    assert equal(params(dnn), before)  # the source is untouched
    dlgn = dgn.with_gating("linear", gate="soft", value_input="ones")
    assert type(dlgn) is FCNet and dlgn.gating == "linear" and dlgn.gate_kind == "soft" and dlgn.value_input == "ones"
    conv = ConvDNN(1, [4], input_size=6, d_out=3).with_gating("relu")
    assert type(conv) is ConvNet and conv.gating == "relu"
    # a plain GatedNet (from nn.Sequential) stays a GatedNet, now gated by a separate network
    seq = nn.Sequential(nn.Linear(D_IN, 5), nn.ReLU(), nn.Linear(5, 2))
    plain = from_sequential(seq, (D_IN,)).with_gating("relu")
    assert type(plain) is GatedNet and plain.gating == "relu" and len(plain.gating_layers) == 1


def test_with_gating_bad_input():
    with pytest.raises(ValueError, match="gating must be one of"):
        template().with_gating("sigmoid")
    with pytest.raises(ValueError, match="must read x"):
        template().with_gating("relu", value_input="ones").with_gating("self")


def test_dnn_as_dgn_computes_the_same_function(data):
    dnn = template()
    dgn = regimes.dnn_as_dgn(dnn)
    X = data.X_test
    assert torch.equal(dgn(X), dnn(X))
    assert all(torch.equal(a, b) for a, b in zip(gates(dgn, X), gates(dnn, X)))


# ------------------------------------------------------------------------------- the regimes
def test_make_regime_builds_each_regime(trained_dnn):
    t = template()
    expected = {"ReLU": ("self", "hard", False), "DLNPF": ("relu", "soft", True),
                "FRNPF-II": ("relu", "hard", False), "FRNPF-DI": ("relu", "hard", False),
                "FLNPF": ("relu", "hard", False)}
    assert set(regimes.REGIMES) == set(expected)
    for name, (gating, kind, gating_trains) in expected.items():
        m = regimes.make_regime(name, t, trained_dnn=trained_dnn)
        assert isinstance(m, FCNet) and m.gating == gating and m.gate_kind == kind, name
        # every regime but FLNPF starts from the template's value weights; FLNPF's value network is fresh
        assert equal(params(m.value_layers), params(t.value_layers)) is (name != "FLNPF"), name
        assert all(p.requires_grad for p in m.value_parameters()), name
        if gating == "relu":
            assert all(p.requires_grad == gating_trains for p in m.gating_layers.parameters()), name
    dl = regimes.make_regime("DLNPF", t)
    assert (dl.beta, dl.eps) == (4.0, 0.1)


def test_frnpf_di_starts_with_value_weights_equal_to_gating_weights_and_ii_does_not():
    t = template()
    di = regimes.fixed_random_gates(t, dependent=True)
    ii = regimes.fixed_random_gates(t, dependent=False)
    for model, same in ((di, True), (ii, False)):
        for g, v in zip(model.gating_layers, model.value_layers[:-1]):
            assert torch.equal(g.weight, v.weight) is same
    # FRNPF-DI at initialisation is the DNN itself
    X = torch.randn(20, D_IN)
    assert torch.equal(di(X), t(X))


def test_flnpf_gates_equal_the_trained_dnns_and_stay_fixed_through_training(data, trained_dnn):
    model = regimes.fixed_learnt_gates(trained_dnn, template(seed=7))
    X = torch.cat([data.X_train, data.X_test])
    dnn_gates = gates(trained_dnn, X)
    assert all(torch.equal(a, b) for a, b in zip(gates(model, X), dnn_gates))
    gating_before, value_before = params(model.gating_layers), params(model.value_layers)
    result = train(model, data, epochs=2, lr=0.05, momentum=0.9, weight_decay=0.1, progress=False)
    assert equal(params(model.gating_layers), gating_before)
    assert all(torch.equal(a, b) for a, b in zip(gates(model, X), dnn_gates))
    assert not equal(params(model.value_layers), value_before)
    assert result.final_test_acc > 0.55  # measured: 0.68 (the largest class: 0.41)


def test_flnpf_without_value_init_redraws_the_value_network(trained_dnn):
    model = regimes.fixed_learnt_gates(trained_dnn)
    for new, old in zip(model.value_layers, trained_dnn.value_layers):
        assert not torch.equal(new.weight, old.weight)


def test_flnpfs_value_network_is_seeded_he_normal_and_independent_of_the_template_and_the_relu_net(trained_dnn):
    """The authors' FLNPF: a freshly initialised value network. Drawn from the global RNG's seed, yet not the
    network that same seed gives the template (nor the ReLU network's initial or trained weights)."""
    t = template(seed=5)                                 # the trained DNN's own initial weights
    torch.manual_seed(5)
    a = regimes.make_regime("FLNPF", t, trained_dnn)
    torch.manual_seed(5)
    b = regimes.make_regime("FLNPF", t, trained_dnn)
    assert equal(params(a.value_layers), params(b.value_layers))
    for new, init, trained in zip(a.value_layers, t.value_layers, trained_dnn.value_layers):
        assert not torch.equal(new.weight, init.weight) and not torch.equal(new.weight, trained.weight)
        # He normal: std sqrt(2 / fan_in) (within sampling error), uncorrelated with the template's weights
        fan_in = new.weight.shape[1]
        assert abs(float(new.weight.detach().std()) / (2 / fan_in) ** 0.5 - 1) < 0.35
        assert abs(float(torch.corrcoef(torch.stack([new.weight.flatten(), init.weight.flatten()]).detach())[0, 1])) < 0.3


def test_fresh_value_network_keeps_a_resnets_block_scaling():
    torch.manual_seed(0)
    res = ResDNN(D_IN, 256, 4)
    fresh = regimes.fresh_value_network(res)
    last = [[m for m in op.block if isinstance(m, graph.Linear)][-1].module.weight
            for net in (res, fresh) for op in net.ops if isinstance(op, graph.Residual)]
    stds = torch.tensor([float(w.detach().std()) for w in last])
    torch.testing.assert_close(stds[4:], stds[:4], rtol=0.1, atol=0)   # both scaled by 1 / sqrt(4)
    assert not torch.equal(last[0], last[4])
    dgn = ResDGN(D_IN, 8, 2)
    assert equal(params(regimes.fresh_value_network(dgn).gating_layers), params(dgn.gating_layers))


def test_frnpf_gates_stay_fixed_and_dlnpf_trains_both_networks(data):
    t = template()
    for name, gating_moves in (("FRNPF-II", False), ("DLNPF", True)):
        model = regimes.make_regime(name, t)
        gating_before, value_before = params(model.gating_layers), params(model.value_layers)
        train(model, data, epochs=1, lr=0.05, momentum=0.9, weight_decay=0.01, progress=False)
        assert equal(params(model.gating_layers), gating_before) is not gating_moves, name
        assert not equal(params(model.value_layers), value_before), name


def test_gate_copy_from_best_state_and_from_a_checkpoint_file(data, tmp_path):
    dnn = regimes.relu(template(seed=3))
    result = train(dnn, data, epochs=2, lr=0.05, keep_best=True, checkpoint_dir=tmp_path, progress=False)
    X = data.X_test
    from_file = regimes.gate_copy(template(), tmp_path / CHECKPOINT_FILE)   # the last epoch's weights
    assert all(torch.equal(a, b) for a, b in zip(gates(from_file, X), gates(dnn, X)))
    best_dnn = template()
    best_dnn.load_state_dict(result.best_state)
    from_best = regimes.gate_copy(template(), result.best_state)
    assert all(torch.equal(a, b) for a, b in zip(gates(from_best, X), gates(best_dnn, X)))
    assert not any(p.requires_grad for p in from_best.gating_layers.parameters())


def test_gate_copy_of_the_initial_state_is_frnpf_ii():
    """k = 0 of the gate-copying study: the initial ReLU network's gates (random), a value network independent
    of them; FRNPF-DI would instead start its values at the gating weights."""
    t = template(seed=3)
    copied = regimes.gate_copy(t, t.state_dict())
    X = torch.randn(30, D_IN)
    assert all(torch.equal(a, b) for a, b in zip(gates(copied, X), gates(t, X)))
    for g, v in zip(copied.gating_layers, copied.value_layers[:-1]):
        assert not torch.equal(g.weight, v.weight)
    assert not any(p.requires_grad for p in copied.gating_layers.parameters())


# ------------------------------------------------------------------------------- shuffled gates
def test_shuffled_gates_permute_units_identically_for_every_input():
    X = torch.randn(60, D_IN, dtype=torch.float64)
    dgn = DGN(D_IN, WIDTHS, D_OUT).double()
    shuffled = regimes.shuffled_gates(dgn, seed=1)
    assert dgn.gate_permutations is None  # the original keeps its gates
    for g, s in zip(gates(dgn, X), gates(shuffled, X)):
        # every column of the shuffled gates is one column of the original, over all inputs at once
        match = [[j for j in range(g.shape[1]) if torch.equal(s[:, i], g[:, j])] for i in range(g.shape[1])]
        perm = [m[0] for m in match]
        assert all(len(m) >= 1 for m in match) and sorted(perm) == list(range(g.shape[1]))
        assert perm != list(range(g.shape[1]))
    assert not torch.allclose(shuffled(X), dgn(X))  # the function changes ...
    # ... but the FC NPK does not: G P (G P)^T = G G^T, exactly
    torch.testing.assert_close(npk_gram(shuffled, X), npk_gram(dgn, X), rtol=0, atol=1e-10)
    # a different permutation per input would change it
    (g0, g1) = gates(dgn, X)
    rowwise = torch.stack([row[torch.randperm(len(row))] for row in g0])
    H_rowwise = (X @ X.T) * (rowwise @ rowwise.T) * (g1 @ g1.T)
    assert (H_rowwise - npk_gram(dgn, X)).abs().max() > 1.0


def test_shuffled_gates_are_seeded_and_take_dnns_and_conv_nets():
    dnn = template()
    a, b, c = (regimes.shuffled_gates(dnn, seed=s) for s in (2, 2, 3))
    assert type(a) is FCNet and a.gating == "relu"
    assert all(torch.equal(p, q) for p, q in zip(a.gate_permutations, b.gate_permutations))
    assert not all(torch.equal(p, q) for p, q in zip(a.gate_permutations, c.gate_permutations))
    X = torch.randn(10, D_IN)
    assert all(torch.equal(s, g[:, p]) for s, g, p in zip(gates(a, X), gates(dnn, X), a.gate_permutations))
    conv = ConvDGN(1, [5, 4], input_size=6, d_out=2)
    shuffled = regimes.shuffled_gates(conv, seed=0)
    Xc = torch.randn(3, 1, 6, 6)
    for s, g, p in zip(gates(shuffled, Xc), gates(conv, Xc), shuffled.gate_permutations):
        assert s.shape == g.shape and torch.equal(s, g[:, p])  # whole channels move


# ------------------------------------------------------------------------------- bad input
def test_bad_input(trained_dnn):
    t = template()
    with pytest.raises(ValueError, match="unknown regime 'GaLU'; known regimes: FRNPF-II, FRNPF-DI, DLNPF, FLNPF, ReLU"):
        regimes.make_regime("GaLU", t)
    with pytest.raises(ValueError, match="FLNPF copies the gates of a trained ReLU network: pass trained_dnn="):
        regimes.make_regime("FLNPF", t)
    with pytest.raises(ValueError, match="need a ReLU network .* got a FCNet with gating 'relu'"):
        regimes.fixed_learnt_gates(regimes.decoupled(t))
    with pytest.raises(ValueError, match="'soft' gates"):
        regimes.fixed_learnt_gates(template(gate="soft"))
    with pytest.raises(ValueError, match="same architecture"):
        regimes.fixed_learnt_gates(trained_dnn, DNN(D_IN, [16, 13], D_OUT))
    with pytest.raises(TypeError, match="npk gated model"):
        regimes.decoupled(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="checkpoint must be"):
        regimes.gate_copy(t, [1, 2])
    with pytest.raises(ValueError, match="(?s)does not fit the template's architecture.*size mismatch"):
        regimes.gate_copy(DNN(D_IN, [16, 13], D_OUT), trained_dnn.state_dict())
