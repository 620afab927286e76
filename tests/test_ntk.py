"""Empirical NTK: the three implementations agree to 1e-10 in float64, match a closed form and
neural-tangents, and bad input fails with a clear error."""
import numpy as np
import pytest
import torch
from torch import nn

from npk import graph
from npk.kernels import ntk_structured
from npk.kernels.ntk import _choose, ntk_gram, parameter_group
from npk.models.base import GatedNet
from npk.models.conv import ConvDGN, ConvDLGN, ConvDNN
from npk.models.fc import DGN, DLGN, DNN
from npk.models.resnet import ResDLGN

IMPLS = ("jacobian", "ntk-vp", "structured")
TOL = 1e-10  # relative to the Gram's largest entry


@pytest.fixture(autouse=True, scope="module")
def float64_one_thread():
    """float64 for exactness; one thread, since the tensors are tiny (threads only add overhead here)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def assert_close(K, ref):
    scale = ref.abs().max().item()
    assert scale > 0
    assert (K - ref).abs().max().item() <= TOL * scale


def agree(model, X, Y, params="all", outputs="trace", impls=IMPLS):
    """The implementations' Grams agree; returns the Gram."""
    Ks = [ntk_gram(model, X, Y, params=params, implementation=impl, outputs=outputs) for impl in impls]
    for K in Ks[1:]:
        assert_close(K, Ks[0])
    return Ks[0]


# ------------------------------------------------------------------------------- fully connected
@pytest.mark.parametrize("cls", [DNN, DGN, DLGN])
@pytest.mark.parametrize("gate", ["hard", "soft"])
def test_fc_implementations_agree(cls, gate):
    torch.manual_seed(0)
    model = cls(5, [6, 4], 3, bias=True, gate=gate)
    X, Y = torch.randn(7, 5), torch.randn(4, 5)
    groups = ("value", "all") if gate == "hard" and cls is not DNN else ("value", "gating", "all")  # hard: see below
    for params in groups:
        full = agree(model, X, Y, params, "full")
        trace = agree(model, X, Y, params, "trace")
        assert_close(trace, full.diagonal(0, 2, 3).sum(-1))     # the trace is the sum of the blocks' diagonals
    K = agree(model, X, None, "all", "full")
    assert_close(K, K.permute(1, 0, 3, 2))                      # K(x, y)[k, k'] = K(y, x)[k', k]


def test_gating_ntk_zero_for_hard_gates_nonzero_for_soft():
    torch.manual_seed(1)
    X = torch.randn(6, 5)
    for cls in (DGN, DLGN):
        hard = cls(5, [6, 4], 2, bias=True)
        for impl in IMPLS:
            assert ntk_gram(hard, X, params="gating", implementation=impl).abs().max().item() == 0.0
        for p in hard.parameters():
            p.requires_grad_(False)                  # frozen (as in the fixed-gate regimes): still 0
        assert ntk_gram(hard, X, params="gating", implementation="structured").abs().max().item() == 0.0
        soft = cls(5, [6, 4], 2, bias=True, gate="soft")
        K = ntk_gram(soft, X, params="gating")
        assert K.diagonal().min().item() > 1e-3 * K.abs().max().item() > 0
        assert_close(ntk_gram(soft, X, params="all"), K + ntk_gram(soft, X, params="value"))


def test_dnn_groups_are_the_same_tensors():
    torch.manual_seed(2)
    model = DNN(4, [5, 5], 2, gate="soft")
    X = torch.randn(5, 4)
    K = ntk_gram(model, X, params="value")
    assert_close(ntk_gram(model, X, params="gating"), K)
    assert_close(ntk_gram(model, X, params="all"), K)


def test_one_hidden_layer_closed_form():
    """y = W2 relu(W1 x): K(x, y) = <x, y> sum_j |W2[:, j]|^2 g_j(x) g_j(y) + K_out <relu(W1 x), relu(W1 y)>."""
    torch.manual_seed(3)
    model = DNN(4, [6], 3)
    W1, W2 = (m.weight.detach().numpy() for m in model.value_layers)
    X, Y = torch.randn(5, 4), torch.randn(3, 4)
    x, y = X.numpy(), Y.numpy()
    hx, hy = x @ W1.T, y @ W1.T
    gx, gy = (hx > 0) * 1.0, (hy > 0) * 1.0
    expected = (x @ y.T) * ((gx * (W2**2).sum(0)) @ gy.T) + 3 * np.maximum(hx, 0) @ np.maximum(hy, 0).T
    for impl in IMPLS:
        K = ntk_gram(model, X, Y, implementation=impl).numpy()
        assert np.abs(K - expected).max() <= TOL * np.abs(expected).max()
    wrong = (x @ y.T) * (gx @ gy.T) + 3 * np.maximum(hx, 0) @ np.maximum(hy, 0).T   # drops the W2 weights
    assert np.abs(K - wrong).max() > 1e-3 * np.abs(expected).max()


# ------------------------------------------------------------------------------- conv, residual
CONV_CASES = {
    "ConvDNN zero gap 2d": lambda: ConvDNN(2, [3, 4], padding="zero", pooling="gap", d_out=3, input_size=5, bias=True),
    "ConvDLGN circular flatten soft": lambda: ConvDLGN(2, [3, 4], padding="circular", pooling="flatten", d_out=3,
                                                       input_size=(4, 5), gate="soft", bias=True),
    "ConvDGN circular gap 1d soft": lambda: ConvDGN(2, [3, 4], padding="circular", d_out=2, spatial_dims=1,
                                                    input_size=6, gate="soft", pool_every=[0]),
    "ResDLGN conv soft": lambda: ResDLGN(2, 3, 2, d_out=2, conv=True, input_size=4, gate="soft", bias=True),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_and_residual_implementations_agree(name, monkeypatch):
    torch.manual_seed(4)
    model = CONV_CASES[name]()
    X, Y = torch.randn(5, *model.input_shape), torch.randn(3, *model.input_shape)
    for outputs in ("trace", "full"):
        K = agree(model, X, Y, "all", outputs)
        for use_jacobian in (True, False):          # both per-layer contractions of the structured path
            monkeypatch.setattr(ntk_structured._Layer, "uses_jacobian", lambda self, k, f, u=use_jacobian: u)
            assert_close(ntk_gram(model, X, Y, implementation="structured", outputs=outputs), K)
            monkeypatch.undo()
    assert_close(agree(model, X, None, "value"), ntk_gram(model, X, X, params="value", implementation="jacobian"))


def test_plain_module_jacobian_and_ntk_vp_agree():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 3))
    X, Y = torch.randn(6, 4), torch.randn(5, 4)
    for outputs in ("trace", "full"):
        assert_close(ntk_gram(model, X, Y, implementation="auto", outputs=outputs),
                     agree(model, X, Y, outputs=outputs, impls=("jacobian", "ntk-vp")))
    with pytest.raises(ValueError, match="structured.*needs an npk gated network.*'jacobian' or 'ntk-vp'"):
        ntk_gram(model, X, implementation="structured")


def test_blocks_match_one_block():
    """Small budgets split the Gram into many blocks (and the symmetric case mirrors them)."""
    torch.manual_seed(6)
    model = ConvDLGN(2, [3], d_out=3, input_size=4, gate="soft")
    X, Y = torch.randn(9, 2, 4, 4), torch.randn(7, 2, 4, 4)
    for impl in IMPLS:
        for Yi in (Y, None):
            one = ntk_gram(model, X, Yi, implementation=impl, outputs="full")
            for budget in (150_000, 40_000):       # 2-4 samples per block; the smaller one recomputes features
                assert_close(ntk_gram(model, X, Yi, implementation=impl, outputs="full", memory_budget=budget), one)


def test_auto_choice():
    torch.manual_seed(7)
    gated, plain = DNN(50, [100], 10), nn.Sequential(nn.Linear(50, 100), nn.Tanh(), nn.Linear(100, 10))
    assert _choose("auto", gated, "all", parameter_group(gated, "all"), 10, 0, False, 2**30).name == "structured"
    assert _choose("auto", plain, "all", parameter_group(plain, "all"), 10, 0, False, 2**30).name == "jacobian"
    assert _choose("auto", plain, "all", parameter_group(plain, "all"), 10, 0, False, 750_000).name == "ntk-vp"


# ------------------------------------------------------------------------------------ bad input
class _Readout(GatedNet):
    gating = "linear"


def test_error_no_parameters_in_group():
    model = _Readout([graph.Readout(nn.Linear(3, 2))], (3,))          # no gated layers: no gating network
    with pytest.raises(ValueError, match="no parameters in group 'gating'.*groups with parameters: \\['value'\\]"):
        ntk_gram(model, torch.randn(4, 3), params="gating")
    with pytest.raises(ValueError, match="needs an npk gated network.*use params='all'"):
        ntk_gram(nn.Linear(3, 2), torch.randn(4, 3), params="value")


class _Shared(GatedNet):
    gating = "self"


def test_error_structured_needs_each_layer_once_and_only_layer_weights():
    torch.manual_seed(10)
    layer = nn.Linear(3, 3)                                            # used twice: shared weights
    model = _Shared([graph.Linear(layer), graph.Gate(0), graph.Linear(layer), graph.Gate(1),
                     graph.Readout(nn.Linear(3, 2))], (3,))
    X = torch.randn(5, 3)
    agree(model, X, None, impls=("jacobian", "ntk-vp"))               # the generic paths handle sharing
    with pytest.raises(ValueError, match="called more than once per forward.*'jacobian' or 'ntk-vp'"):
        ntk_gram(model, X, implementation="structured")
    model = DNN(3, [4], 2)
    model.scale = nn.Parameter(torch.ones(()))                         # not a weight of a Linear / Conv layer
    with pytest.raises(ValueError, match=r"Linear / Conv layers only; group 'all' also has \['scale'\]"):
        ntk_gram(model, X, implementation="structured")


class _Output(nn.Module):
    def __init__(self, reshape):
        super().__init__()
        self.layer, self.reshape = nn.Linear(3, 4), reshape

    def forward(self, x):
        return self.reshape(self.layer(x))


@pytest.mark.parametrize("reshape", [lambda y: y.sum(1), lambda y: y.view(len(y), 2, 2)], ids=["1-D", "3-D"])
def test_error_output_shape(reshape):
    with pytest.raises(ValueError, match=r"outputs of shape \(n, K\).*returned \(1"):
        ntk_gram(_Output(reshape), torch.randn(4, 3))


def test_error_jacobian_does_not_fit_names_what_fits():
    torch.manual_seed(8)
    X = torch.randn(4, 50)
    plain = nn.Sequential(nn.Linear(50, 100), nn.Tanh(), nn.Linear(100, 10))
    with pytest.raises(MemoryError, match=r"'jacobian' needs about .* MiB.*use implementation='ntk-vp'"):
        ntk_gram(plain, X, implementation="jacobian", memory_budget=750_000)
    with pytest.raises(MemoryError, match=r"use implementation='structured' \(needs .*\) or 'ntk-vp'"):
        ntk_gram(DNN(50, [100], 10), X, implementation="jacobian", memory_budget=750_000)
    with pytest.raises(MemoryError, match="no implementation fits"):
        ntk_gram(plain, X, memory_budget=1000)


def test_error_bad_choices_and_inputs():
    model, X = DNN(3, [4], 2), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"implementation must be one of \['jacobian', 'ntk-vp', 'structured'"):
        ntk_gram(model, X, implementation="fast")
    with pytest.raises(ValueError, match="outputs must be one of"):
        ntk_gram(model, X, outputs="diag")
    with pytest.raises(ValueError, match="params must be one of"):
        ntk_gram(model, X, params="weights")
    with pytest.raises(ValueError, match=r"Y must have shape \(N, 3\)"):
        ntk_gram(model, X, torch.randn(2, 4))
    with pytest.raises(ValueError, match="model's dtype and device.*model.double"):
        ntk_gram(model, X.float())


# --------------------------------------------------------------------------- neural-tangents
NT_CASES = {  # (model, outputs): each neural-tangents kernel function compiles for a few seconds
    "MLP trace": (lambda: DNN(5, [7, 6], 3, bias=True), "trace"),
    "MLP full": (lambda: DNN(5, [7, 6], 3, bias=True), "full"),
    "conv circular GAP full": (lambda: ConvDNN(2, [3, 4], padding="circular", d_out=3, input_size=5, bias=True), "full"),
    "conv zero GAP trace": (lambda: ConvDNN(2, [3], padding="zero", d_out=2, input_size=(4, 5)), "trace"),
}


@pytest.mark.ntref
@pytest.mark.parametrize("name", list(NT_CASES))
def test_matches_neural_tangents_structured_derivatives(name):
    pytest.importorskip("neural_tangents")
    from npk.kernels._ntref import nt_ntk_fn, to_jax
    torch.manual_seed(9)
    build, outputs = NT_CASES[name]
    model = build()
    X, Y = torch.randn(6, *model.input_shape), torch.randn(4, *model.input_shape)
    K = ntk_gram(model, X, Y, outputs=outputs)
    K_nt = torch.tensor(np.asarray(nt_ntk_fn(model, "structured", outputs)(to_jax(X), to_jax(Y))))
    assert_close(K_nt * model(X[:1]).shape[1] if outputs == "trace" else K_nt, K)   # NT averages the trace
