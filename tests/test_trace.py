"""from_module: torch.fx tracing of ReLU networks into gated models, the classic architectures, refusals."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from npk.kernels.npk import npk_gram
from npk.models import zoo
from npk.models.base import GATINGS
from npk.models.trace import from_module
from npk.theory.duality import duality


def batch(shape, n=4, seed=0):
    return torch.randn((n, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


class Spellings(nn.Module):
    """Every ReLU spelling, a max pool before its ReLU, a strided conv, a functional average pool, view(N, -1)."""

    def __init__(self, functional_pool: bool = False):
        super().__init__()
        self.functional_pool = functional_pool           # else: max pool, then ReLU
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 2, stride=2), \
            nn.Conv2d(2, 2, 2, padding="same", dilation=2, padding_mode="circular")
        self.act, self.pool, self.fc = nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Linear(2, 1)
        self.l1, self.l2 = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2) if self.functional_pool else F.relu(self.pool(self.c1(x)))
        x = self.act(self.c2(x))
        x = torch.relu(self.c3(x)) + x
        x = F.avg_pool2d(x, 2, 1, 1, count_include_pad=False)
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.l1(x.view(x.size(0), -1)).relu()
        x = self.l2(x).relu_()
        return self.fc(x)


@pytest.mark.parametrize("functional_pool", [False, True])
def test_every_relu_spelling_traces_to_a_gate_and_the_model_is_the_same_function(functional_pool):
    net = Spellings(functional_pool).double()
    X = batch((1, 8, 8))
    model = from_module(net, X)
    kinds = [type(op).__name__ for op in model.ops]
    assert kinds == ["Linear", "Gate", "MaxPool", "Linear", "Gate", "Residual", "AvgPool", "GlobalAvgPool",
                     "Flatten", "Linear", "Gate", "Linear", "Gate", "Readout"]
    assert model.n_gated == 5 and model.value_layers[0] is net.c1
    with torch.no_grad():
        assert torch.allclose(model(batch((1, 8, 8), 6, 1)), net(batch((1, 8, 8), 6, 1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("gating", GATINGS)
def test_traced_models_are_exact_against_path_enumeration(gating):
    assert duality(from_module(Spellings().double(), batch((1, 4, 4)), gating=gating), batch((1, 4, 4), 5)).passed


def test_batch_norm_is_folded_into_the_weight_layer_before_it():
    net = zoo.randomize_batch_norms(nn.Sequential(nn.Conv1d(1, 3, 3, padding=1, bias=False), nn.BatchNorm1d(3),
                                                  nn.ReLU(), nn.Flatten(), nn.Linear(12, 1))).double().eval()
    model = from_module(net, batch((1, 4)))
    assert len(model.value_layers) == 2 and model.value_layers[0].bias is not None
    with torch.no_grad():
        assert torch.allclose(model(batch((1, 4), 6, 1)), net(batch((1, 4), 6, 1)), rtol=0, atol=1e-12)


def test_dropout_and_identity_in_eval_mode_are_no_ops_and_dropout_in_train_mode_is_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5), nn.Identity(), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match=r"dropout in train mode: call .eval\(\)"):
        from_module(net, batch((3,)))
    model = from_module(net.eval(), batch((3,)))
    assert [type(op).__name__ for op in model.ops] == ["Linear", "Gate", "Readout"]


def test_batch_norm_in_train_mode_is_refused_with_the_fix():
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 1))
    with pytest.raises(ValueError, match=r"node '_1' \(call_module BatchNorm1d\).*call .eval\(\)"):
        from_module(net, torch.randn(2, 1, 4))


@pytest.mark.parametrize("layer, name", [(nn.Tanh(), "Tanh"), (nn.Conv1d(2, 2, 3, padding=1, groups=2), "groups"),
                                         (nn.LeakyReLU(), "LeakyReLU")])
def test_an_unsupported_op_is_refused_with_its_node_and_name(layer, name):
    net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), layer, nn.Flatten(), nn.Linear(8, 1))
    with pytest.raises((ValueError, TypeError), match=name):
        from_module(net, torch.randn(2, 1, 4))


def test_an_unsupported_function_is_refused_with_its_node_and_the_supported_list():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(torch.sigmoid(x))

    with pytest.raises(ValueError, match=r"node 'sigmoid' \(call_function sigmoid\): unsupported. Supported: nn.Conv"):
        from_module(Net(), torch.randn(2, 3))


def test_a_network_ending_in_a_relu_is_refused():
    with pytest.raises(ValueError, match="must end with an nn.Linear readout"):
        from_module(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), torch.randn(2, 3))


# ------------------------------------------------------------------------------ classic architectures
@pytest.mark.parametrize("make", [zoo.vgg11_bn, zoo.resnet18], ids=["vgg11_bn", "resnet18"])
def test_the_classic_architectures_trace_and_compute_the_same_function_on_cifar_inputs(make):
    net = zoo.randomize_batch_norms(make().double().eval(), torch.Generator().manual_seed(0))
    X = batch((3, 32, 32), 2)
    model = from_module(net, X)
    with torch.no_grad():
        ours, theirs = model(X), net(X)
    assert (ours - theirs).abs().max() <= 1e-10 * theirs.abs().max()
    pools = sum(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert (model.n_gated, model.n_pools) == ((10, 5) if make is zoo.vgg11_bn else (17, 0)) and model.n_pools == pools


@pytest.mark.parametrize("gating", GATINGS)
@pytest.mark.parametrize("net, shape", [
    (zoo.vgg11_bn(cfg=[1, "M", 2, "M"], hidden=2, in_channels=2), (2, 4, 4)),
    (zoo.resnet18(width=1, layers=(1, 1), in_channels=2), (2, 2, 2)),
], ids=["vgg", "resnet"])
def test_reduced_copies_of_the_classic_architectures_are_exact_against_path_enumeration(net, shape, gating):
    net = zoo.randomize_batch_norms(net.double().eval(), torch.Generator().manual_seed(1))
    X = batch(shape, 5)
    model = from_module(net, X, gating=gating)
    result = duality(model, X)
    assert result.passed and result.details["n_path_classes"] > 500
    assert (npk_gram(model, X).diagonal() > 0).all()


@pytest.mark.parametrize("gating, gate", [("self", "hard"), ("relu", "soft")])
def test_the_structured_ntk_of_a_traced_network_equals_the_jacobian_one(gating, gate):
    """Strided and 'same' even-kernel convs, max pooling and projection shortcuts in the structured NTK."""
    from npk.kernels.ntk import ntk_gram
    net = Spellings().double()
    X = batch((1, 8, 8), 3)
    model = from_module(net, X, gating=gating, gate=gate)
    for params in ("value", "all"):
        exact = ntk_gram(model, X, params=params, implementation="jacobian")
        structured = ntk_gram(model, X, params=params, implementation="structured")
        assert (structured - exact).abs().max() <= 1e-10 * exact.abs().max()


# ------------------------------------------------------------------------------ theorem checks
def test_the_ensemble_decomposition_holds_on_a_traced_resnet_with_biases_and_projection_shortcuts():
    from npk.theory import structure
    torch.manual_seed(0)
    net = zoo.randomize_batch_norms(zoo.resnet18(width=2, layers=(1, 1), in_channels=1).double().eval(),
                                    torch.Generator().manual_seed(2))
    X = batch((1, 4, 4), 4)
    model = from_module(net, X, gating="relu")
    result = structure.ensemble_decomposition(model, X)
    assert result.details["n_blocks"] == 2 and result.passed, result.details


def test_the_ensemble_decomposition_fails_when_biases_are_counted_in_every_sub_network(monkeypatch):
    from npk.theory import structure
    torch.manual_seed(0)
    net = zoo.randomize_batch_norms(zoo.resnet18(width=2, layers=(1, 1), in_channels=1).double().eval(),
                                    torch.Generator().manual_seed(2))
    X = batch((1, 4, 4), 4)
    model = from_module(net, X)
    monkeypatch.setattr(structure, "_bias_free", lambda op: op)
    assert structure.ensemble_decomposition(model, X).details["decomposition_error"] > 1e-6   # tolerance 1e-10


def rotation_net(stride: int, pool: bool) -> nn.Module:
    conv = lambda c_in, s: nn.Conv1d(c_in, 3, 3, stride=s, padding=1, padding_mode="circular", bias=False)
    layers = [conv(1, 1), nn.ReLU()] + ([nn.MaxPool1d(2)] if pool else []) + [conv(3, stride), nn.ReLU(),
                                                                              nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                                                              nn.Linear(3, 1, bias=False)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("stride, pool", [(1, False), (2, False), (1, True)])
def test_rotation_invariance_reports_how_far_strides_and_max_pooling_break_it(stride, pool):
    from npk.theory.structure import rotation_invariance
    torch.manual_seed(0)
    X = batch((1, 8), 5)
    result = rotation_invariance(from_module(rotation_net(stride, pool), X), X)
    assert result.details["conv_strides"] == ([[2]] if stride == 2 else []) and result.details["n_max_pools"] == pool
    if stride == 1 and not pool:
        assert result.passed
    else:   # shifts by a multiple of the stride / pool window commute; odd shifts do not
        deviation = dict(zip(map(tuple, result.details["shifts"]), result.details["deviation"]))
        assert deviation[(2,)] < 1e-12 and deviation[(1,)] > 1e-3 and not result.passed


def test_path_length_npks_refuses_what_it_cannot_read():
    from npk.theory.ntk_vs_npk import path_length_npks
    X = batch((1, 4, 4), 2)
    with pytest.raises(ValueError, match="not max pools, skip branches with ops or a ReLU after a shortcut"):
        path_length_npks(from_module(Spellings().double(), X), X)


def test_gates_of_a_traced_resnet_with_projection_shortcuts_can_be_shuffled():
    from npk.models.regimes import shuffled_gates
    torch.manual_seed(0)
    net = zoo.resnet18(width=2, layers=(1, 1), in_channels=1).double().eval()
    model = shuffled_gates(from_module(net, batch((1, 4, 4))))
    assert [len(p) for p in model.gate_permutations] == [2, 2, 2, 4, 4]
    assert torch.isfinite(npk_gram(model, batch((1, 4, 4)))).all()


def test_an_npk_beyond_float32s_range_says_to_use_float64():
    torch.manual_seed(0)
    model = from_module(zoo.vgg11_bn(cfg=[256] * 16 + ["M"], hidden=4, in_channels=1).eval(),
                        torch.randn(2, 1, 2, 2))
    with pytest.raises(OverflowError, match=r"overflowed torch.float32.*float64"):
        npk_gram(model, torch.randn(2, 1, 2, 2))
