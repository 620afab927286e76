"""Convolutional and residual gated models, presets, and from_sequential."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from npk.kernels.npk import npk_gram
from npk.models.conv import C4GAP, GCONV, VCONV, VGG, ConvDGN, ConvDLGN, ConvDLGNSF, ConvDNN
from npk.models.convert import from_sequential
from npk.models.resnet import ResDGN, ResDLGN, ResDNN, resnet_preset


@pytest.fixture(autouse=True)
def float64_and_seed():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def images(n, channels, size, spatial_dims):
    return torch.randn(n, channels, *(size,) * spatial_dims)


def plain_sequential(model, spatial_dims, pool_every, pooling):
    """The ReLU nn.Sequential a ConvDNN stands for, sharing its modules."""
    mods, n_conv = list(model.value_layers), len(model.channels)
    avgpool = (nn.AvgPool1d, nn.AvgPool2d)[spatial_dims - 1]
    gap = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)[spatial_dims - 1]
    layers = []
    for i, conv in enumerate(mods[:n_conv]):
        layers += [conv, nn.ReLU()] + ([avgpool(2)] if i in pool_every else [])
    layers += [gap(1), nn.Flatten()] if pooling == "gap" else [nn.Flatten()]
    for lin in mods[n_conv:-1]:
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, mods[-1])


# ------------------------------------------------------------------------- forward = plain network
@pytest.mark.parametrize("spatial_dims", [1, 2])
@pytest.mark.parametrize("padding", ["zero", "circular"])
@pytest.mark.parametrize("pooling, pool_every, dense", [("gap", [], ()), ("flatten", [0], (5,)), ("gap", [0, 1], (4,))])
def test_conv_dnn_equals_plain_sequential(spatial_dims, padding, pooling, pool_every, dense):
    model = ConvDNN(2, [3, 4], padding=padding, pooling=pooling, d_out=2, spatial_dims=spatial_dims,
                    input_size=6, pool_every=pool_every, dense_widths=dense, bias=True)
    seq = plain_sequential(model, spatial_dims, pool_every, pooling)
    X = images(5, 2, 6, spatial_dims)
    torch.testing.assert_close(model(X), seq(X), rtol=0, atol=1e-12)
    converted = from_sequential(seq, model.input_shape)
    assert converted.value_layers[0] is seq[0]
    torch.testing.assert_close(converted(X), seq(X), rtol=0, atol=1e-12)
    torch.testing.assert_close(npk_gram(converted, X), npk_gram(model, X), rtol=1e-12, atol=0)


def test_from_sequential_fully_connected_and_same_padding():
    seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    X = torch.randn(7, 4)
    torch.testing.assert_close(from_sequential(seq, 4)(X), seq(X), rtol=0, atol=1e-12)
    seq = nn.Sequential(nn.Conv2d(1, 3, 5, padding="same", padding_mode="circular"), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1))
    X = images(3, 1, 7, 2)
    torch.testing.assert_close(from_sequential(seq, (1, 7, 7))(X), seq(X), rtol=0, atol=1e-12)


def test_res_dnn_fc_equals_hand_written_forward():
    model = ResDNN(3, 5, n_blocks=2, layers_per_block=2, d_out=2, bias=True)
    W = list(model.value_layers)
    X = torch.randn(6, 3)
    h = torch.relu(W[0](X))
    for a, b in [(W[1], W[2]), (W[3], W[4])]:
        h = h + torch.relu(b(torch.relu(a(h))))
    torch.testing.assert_close(model(X), W[5](h), rtol=0, atol=1e-12)
    assert model.n_gated == 5


def test_res_dnn_conv_stages_equal_hand_written_forward():
    model = ResDNN(2, [3, 4], [1, 1], d_out=2, conv=True, input_size=8, spatial_dims=1, padding="circular")
    W = list(model.value_layers)
    X = images(4, 2, 8, 1)
    h = torch.relu(W[0](X))
    h = h + torch.relu(W[1](h))
    h = torch.relu(W[2](F.avg_pool1d(h, 2)))
    h = h + torch.relu(W[3](h))
    torch.testing.assert_close(model(X), W[4](h.mean(-1)), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ gates
def test_gate_shapes_and_hard_gates_are_binary():
    model = ConvDLGN(3, [4, 5], pooling="flatten", input_size=(6, 4), pool_every=[0], dense_widths=(7,))
    X = torch.randn(2, 3, 6, 4)
    gates = model.gates(X)
    assert [tuple(g.shape) for g in gates] == [(2, 4, 6, 4), (2, 5, 3, 2), (2, 7)]
    for g in gates:
        assert set(g.unique().tolist()) == {0.0, 1.0}
    soft = model.gates(X, "soft")
    assert all(((s > 0) & (s < 1.1)).all() and not set(s.unique().tolist()) <= {0.0, 1.0} for s in soft)


LINEAR_GATING = [
    lambda: ConvDLGN(2, [3, 4], pooling="flatten", spatial_dims=2, input_size=6, pool_every=[0], dense_widths=(5,)),
    lambda: ConvDLGNSF(2, [3, 4], pooling="gap", spatial_dims=1, input_size=6, pool_every=[1], dense_widths=(5,)),
    lambda: ResDLGN(2, [3, 4], [1, 2], layers_per_block=2, conv=True, input_size=6, spatial_dims=2),
]


@pytest.mark.parametrize("make", LINEAR_GATING)
def test_dlgn_preactivations_are_linear_in_x(make):
    model = make()
    shape = (4, *model.input_shape)
    x1, x2, a, b = torch.randn(shape), torch.randn(shape), 0.7, -1.3
    q = model.gating_preactivations
    for lhs, q1, q2 in zip(q(a * x1 + b * x2), q(x1), q(x2)):
        torch.testing.assert_close(lhs, a * q1 + b * q2, rtol=0, atol=1e-10)


def test_dgn_preactivations_are_not_linear_in_x():
    model = ConvDGN(2, [3, 4], input_size=6, spatial_dims=1)
    x1, x2 = torch.randn(4, 2, 6), torch.randn(4, 2, 6)
    q = model.gating_preactivations
    assert (q(x1 + x2)[1] - q(x1)[1] - q(x2)[1]).abs().max() > 1e-3


def test_dlgnsf_gating_layer_reads_x_directly():
    model = ConvDLGNSF(3, [4, 5, 6], pooling="flatten", input_size=6, pool_every=[0], dense_widths=(7,))
    g = list(model.gating_layers)
    X = torch.randn(2, 3, 6, 6)
    pooled = F.avg_pool2d(X, 2)
    expected = [g[0](X), g[1](pooled), g[2](pooled), g[3](pooled.flatten(1))]
    assert [m.weight.shape[1] for m in g] == [3, 3, 3, 3 * 3 * 3]
    for q, e in zip(model.gating_preactivations(X), expected):
        torch.testing.assert_close(q, e, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- presets
def gate_channels(model, X):
    return [g.shape[1] for g in model.gates(X)]


def test_presets_have_the_documented_layers():
    torch.set_default_dtype(torch.float32)  # full-size models: float32 halves the time (the fixture restores)
    X = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        m = C4GAP("dlgn")
        assert type(m) is ConvDLGN
        assert gate_channels(m, X) == [128] * 4 and m(X).shape == (2, 10)
        m = VCONV()
        assert type(m) is ConvDNN and gate_channels(m, X) == [64, 64, 128, 128, 256, 256]
        assert m.value_layers[4].in_features == 128 * 32 * 32 and m(X).shape == (2, 10)
        m = GCONV("dgn")
        assert gate_channels(m, X) == [64, 64, 128, 128, 256, 256] and m.value_layers[4].in_features == 128
        m = VGG("vgg11")
        assert [tuple(g.shape[1:3]) for g in m.gates(X)] == [(64, 32), (128, 16), (256, 8), (256, 8), (512, 4),
                                                             (512, 4), (512, 2), (512, 2)]
        assert torch.isfinite(m(X)).all() and m(X).shape == (2, 10)
        assert VGG("vgg16").n_gated == 13
        assert VGG([8, "M", 16], input_size=4).n_gated == 2
        m = resnet_preset(kind="dlgn")
        assert type(m) is ResDLGN
        assert gate_channels(m, X) == [16] * 5 + [32] * 5 + [64] * 5 and m(X).shape == (2, 10)
        assert resnet_preset((18, 18, 18)).n_gated == 111


def test_deep_resnet_output_stays_bounded_at_init():
    m = resnet_preset((6, 6), (4, 8), input_size=8)
    assert 0.05 < m(torch.randn(16, 3, 8, 8)).std() < 20


def test_value_input_ones_depends_on_x_only_through_gates():
    model = ConvDLGN(2, [3, 4], spatial_dims=1, input_size=6, value_input="ones")
    X = torch.randn(5, 2, 6)
    torch.testing.assert_close(model(2 * X), model(X), rtol=0, atol=1e-12)
    torch.testing.assert_close(npk_gram(model, 2 * X), npk_gram(model, X), rtol=1e-12, atol=0)
    model.value_input = "x"
    torch.testing.assert_close(npk_gram(model, 2 * X), 4 * npk_gram(model, X), rtol=1e-12, atol=0)


# -------------------------------------------------------------------------------------------- NPK
def shifted(X, shifts):
    return torch.roll(X, shifts=shifts, dims=tuple(range(2, 2 + len(shifts))))


@pytest.mark.parametrize("spatial_dims, pool_every, shifts", [(1, [], (3,)), (2, [], (1, 2)), (2, [0], (2, 4))])
def test_circular_npk_is_shift_invariant_and_zero_padding_is_not(spatial_dims, pool_every, shifts):
    X, Y = images(3, 2, 6, spatial_dims), images(4, 2, 6, spatial_dims)
    circ = ConvDLGN(2, [3, 3], padding="circular", spatial_dims=spatial_dims, input_size=6, pool_every=pool_every)
    H = npk_gram(circ, X, Y)
    torch.testing.assert_close(npk_gram(circ, shifted(X, shifts), shifted(Y, shifts)), H, rtol=1e-10, atol=0)
    torch.testing.assert_close(npk_gram(circ, X, shifted(Y, shifts)), H, rtol=1e-10, atol=0)
    zero = ConvDLGN(2, [3, 3], padding="zero", spatial_dims=spatial_dims, input_size=6, pool_every=pool_every)
    H0 = npk_gram(zero, X, Y)
    assert (npk_gram(zero, shifted(X, shifts), shifted(Y, shifts)) - H0).abs().max() > 1e-3 * H0.abs().max()


def test_res_dlgn_npk_is_product_of_one_plus_overlaps():
    model = ResDLGN(6, 6, n_blocks=3, stem=False)
    X = torch.randn(7, 6)
    G = model.gates(X)
    expected = X @ X.T
    for g in G:
        expected = expected * (1 + g @ g.T)
    H = npk_gram(model, X)
    torch.testing.assert_close(H, expected, rtol=1e-10, atol=0)
    no_skips = X @ X.T
    for g in G:
        no_skips = no_skips * (g @ g.T)
    assert (H - no_skips).abs().max() > 1e-3 * H.abs().max()


@pytest.mark.parametrize("make", [
    lambda: ConvDLGN(2, [2, 3], padding="circular", pooling="flatten", spatial_dims=1, input_size=6,
                     pool_every=[0], dense_widths=(3,), bias=True),
    lambda: ConvDLGNSF(1, [2, 2], spatial_dims=2, input_size=4, pool_every=[0]),
    lambda: ResDLGN(1, [1, 2], [1, 1], conv=True, input_size=4, spatial_dims=1, bias=True),
])
def test_op_lists_agree_with_brute_force_path_enumeration(make):
    from npk.kernels.reference import reference_npk, reference_output
    model = make()
    X = torch.randn(3, *model.input_shape)
    torch.testing.assert_close(npk_gram(model, X), reference_npk(model, X), rtol=1e-10, atol=0)
    torch.testing.assert_close(model(X), reference_output(model, X), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: ConvDLGN(1, [2, 2, 2], spatial_dims=1, input_size=4, pool_every=[0, 1, 2]), "too small"),
    (lambda: ConvDLGN(1, [2], kernel_size=4, input_size=8), "odd positive int"),
    (lambda: ConvDLGN(1, [2], padding="same", input_size=8), "padding must be one of"),
    (lambda: ConvDLGN(1, [2], pooling="max", input_size=8), "pooling must be one of"),
    (lambda: ConvDLGN(1, [2], spatial_dims=3, input_size=8), "spatial_dims must be one of"),
    (lambda: ConvDLGN(1, [2], input_size=(8,)), "input_size must be a positive int or a tuple of 2"),
    (lambda: ConvDLGN(1, [2, 3], input_size=8, pool_every=[2]), "pool_every must list distinct"),
    (lambda: ConvDLGN(1, [], input_size=8), "channels must be a non-empty list"),
    (lambda: C4GAP("cnn"), "kind must be one of"),
    (lambda: VGG("vgg99"), "cfg must be one of"),
    (lambda: VGG(["M", 8]), "never first"),
    (lambda: ResDLGN(3, 5, 2, stem=False), r"width\[0\] must equal d_in = 3"),
    (lambda: ResDLGN(3, 5, 2, conv=True), "needs input_size"),
    (lambda: ResDLGN(3, 5, 2, input_size=8), "input_size is for conv=True"),
    (lambda: ResDLGN(3, [5, 6], [2]), "one entry per stage"),
    (lambda: resnet_preset(input_size=2), "too small"),
    (lambda: resnet_preset(kind="galu"), "kind must be one of"),
])
def test_bad_model_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_missing_input_size_is_a_type_error():
    with pytest.raises(TypeError, match="input_size"):
        ConvDLGN(1, [2])


def test_channels_last_input_gets_a_permute_hint():
    model = ConvDLGN(3, [2], input_size=8)
    with pytest.raises(ValueError, match=r"channels-last\? use X.permute\(0, 3, 1, 2\)"):
        model(torch.randn(2, 8, 8, 3))


@pytest.mark.parametrize("layers, shape, error, match", [
    ([nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(128, 1)],
     (1, 4, 4), ValueError, r"node '_2' \(call_module Upsample\): unsupported. Supported: nn.Conv1d/2d"),
    ([nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)], (3,), ValueError, "call_module Tanh"),
    ([nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.ReLU()], (3,), ValueError, "must end with an nn.Linear"),
    ([nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool1d(3, stride=2, ceil_mode=True), nn.Flatten(),
      nn.Linear(8, 1)], (1, 8), ValueError, "ceil_mode=False"),
    ([nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(4, 1)], (1, 8),
     ValueError, "to size 1 only"),
    ([nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)], (5,), ValueError, r"does not fit the input shape \(5,\)"),
])
def test_from_sequential_rejects_what_it_cannot_take(layers, shape, error, match):
    with pytest.raises(error, match=match):
        from_sequential(nn.Sequential(*layers), shape)
