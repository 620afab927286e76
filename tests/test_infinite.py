"""Expected NPK at random initialisation and the infinite-width NNGP / NTK (npk.kernels.infinite)."""
import math

import numpy as np
import pytest
import torch

from npk.kernels.infinite import expected_npk, infinite_ntk
from npk.kernels.npk import npk_gram
from npk.models import DGN, DLGN, DLGNSF, DNN
from npk.models.conv import ConvDGN, ConvDLGNSF
from npk.models.init import he_init
from npk.models.resnet import ResDLGN


def monte_carlo_npk(model, X, draws):
    """Mean and standard error of npk_gram over `draws` fresh He-initialised gating networks."""
    layers = model.value_layers if model.gating == "self" else model.gating_layers
    Hs = []
    for _ in range(draws):
        he_init(layers)
        Hs.append(npk_gram(model, X))
    Hs = torch.stack(Hs)
    return Hs.mean(0), Hs.std(0) / math.sqrt(draws)


def relative(A, B):
    return float((A - B).norm() / B.norm())


# ------------------------------------------------------------------------------ expected NPK
def test_expected_npk_hand_computed_angles():
    """All-ones value input (M = d_in = 2), one gated layer of w units: H = 2 w (pi - t) / (2 pi)."""
    w = 10
    model = DGN(2, [w], value_input="ones")
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    angle = torch.tensor([[0, 90, 180, 45], [90, 0, 90, 45], [180, 90, 0, 135], [45, 45, 135, 0]],
                         dtype=torch.float64) * math.pi / 180
    expected = 2 * w * (math.pi - angle) / (2 * math.pi)
    assert torch.allclose(expected_npk(model, X), expected, rtol=0, atol=1e-12)


def test_first_gated_layer_is_exact_at_any_width():
    """Its pre-activations are exactly Gaussian, so E[H] = <x, x'> w (pi - t) / (2 pi) at width 6."""
    torch.manual_seed(0)
    X = torch.randn(6, 3, dtype=torch.float64)
    model = DGN(3, [6])
    mean, stderr = monte_carlo_npk(model, X, 800)
    E = expected_npk(model, X)
    assert (mean - E).norm() <= 3 * stderr.norm()
    wrong = expected_npk(model, X) * 2      # P(u > 0, v > 0) mistaken for (pi - t) / pi
    assert (mean - wrong).norm() > 10 * stderr.norm()


@pytest.mark.parametrize("cls, other", [(DGN, DLGN), (DLGN, DGN), (DNN, DLGN)])
def test_expected_npk_is_the_large_width_limit(cls, other):
    """Depth 3: E[H] deviates at order 1/width (correlated layers). At width 128 the Monte Carlo mean
    (standard error about 1.3 %) is within 2.5 % of the expected NPK, closer than at width 4, and further
    than 2.5 % from the other gating kind's expected NPK (ReLU vs linear recursion: about 4 % apart)."""
    torch.manual_seed(1)
    X = torch.randn(8, 5, dtype=torch.float64)
    errors = {}
    for width, draws in ((4, 400), (128, 150)):
        model = cls(5, [width] * 3)
        mean, _ = monte_carlo_npk(model, X, draws)
        errors[width] = relative(mean, expected_npk(model, X))
    assert errors[128] < 0.025 < relative(mean, expected_npk(other(5, [128] * 3), X))
    assert errors[128] < errors[4]


@pytest.mark.parametrize("make", [
    lambda: DLGNSF(5, [4] * 3),
    lambda: ConvDLGNSF(2, [3, 3], padding="circular", pooling="flatten", pool_every=[0], dense_widths=(3,),
                       d_out=1, spatial_dims=1, input_size=6),
], ids=["fc", "conv-flatten-avgpool"])
def test_shallow_gating_is_exact_at_any_width(make):
    """DLGN-SF layers read x with independent weights: E[H] = the product of expected overlaps, at width 3-4."""
    torch.manual_seed(2)
    model = make()
    X = torch.randn(6, *model.input_shape, dtype=torch.float64)
    mean, stderr = monte_carlo_npk(model, X, 300)
    assert (mean - expected_npk(model, X)).norm() <= 3 * stderr.norm()


@pytest.mark.parametrize("padding", ["zero", "circular"])
def test_conv_gap_expected_npk(padding):
    torch.manual_seed(3)
    model = ConvDGN(2, [64, 64], padding=padding, pooling="gap", d_out=1, spatial_dims=1, input_size=6)
    X = torch.randn(6, 2, 6, dtype=torch.float64)
    mean, stderr = monte_carlo_npk(model, X, 150)
    assert relative(mean, expected_npk(model, X)) < 0.03


def test_expected_npk_blocks_and_cross_gram():
    torch.manual_seed(4)
    model = ConvDGN(1, [4], d_out=1, spatial_dims=1, input_size=5)
    X, Y = torch.randn(7, 1, 5, dtype=torch.float64), torch.randn(3, 1, 5, dtype=torch.float64)
    full = expected_npk(model, torch.cat([X, Y]))
    blocked = expected_npk(model, X, Y, memory_budget=4 * 8 * 25 * 4)   # two samples per block side
    assert torch.allclose(blocked, full[:7, 7:], rtol=1e-13, atol=0)
    assert blocked.dtype == torch.float64


def test_expected_npk_rejects_what_it_cannot_do():
    X = torch.randn(3, 4)
    with pytest.raises(ValueError, match="hard gates"):
        expected_npk(DGN(4, [3], gate="soft"), X)
    with pytest.raises(ValueError, match="not Residual"):
        expected_npk(ResDLGN(4, 3, 1), X)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        expected_npk(DGN(4, [3]), torch.randn(3, 5))
    with pytest.raises(TypeError, match="gated model"):
        expected_npk(torch.nn.Linear(4, 1), X)


# ------------------------------------------------------------------------------ infinite width
def test_infinite_ntk_hand_formulas():
    """Depth 0: W^2 <x, x'> / d + b^2. He scaling (W^2 = 2, b = 0) keeps K(x, x) = 2|x|^2 / d, so Theta(x, x)
    = (depth + 1) 2|x|^2 / d."""
    torch.manual_seed(5)
    X, Y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    linear = 1.3**2 * X @ Y.T / 3 + 0.2**2
    for kind in ("ntk", "nngp"):
        assert torch.allclose(infinite_ntk(X, Y, depth=0, W_std=1.3, b_std=0.2, kind=kind), linear, atol=1e-15)
    diag = infinite_ntk(X, depth=4).diagonal()
    assert torch.allclose(diag, 5 * 2 * (X * X).sum(1) / 3, rtol=1e-14, atol=0)


def test_infinite_ntk_keeps_full_precision_for_identical_points():
    """A point in both X and Y: the cross entry equals the diagonal entry (a plain arccos errs by ~1e-8)."""
    torch.manual_seed(6)
    X = torch.randn(6, 4, dtype=torch.float64)
    Y = torch.cat([X[2:4], torch.zeros(1, 4, dtype=torch.float64)])
    for b_std in (0.0, 0.3):
        cross = infinite_ntk(X, Y, depth=5, b_std=b_std)
        diag = infinite_ntk(X, depth=5, b_std=b_std).diagonal()
        assert torch.allclose(cross[[2, 3], [0, 1]], diag[2:4], rtol=1e-14, atol=0)
        assert torch.isfinite(cross).all()


def test_infinite_ntk_float32_and_errors():
    X = torch.randn(4, 3)
    assert infinite_ntk(X, depth=2).dtype == torch.float32
    with pytest.raises(ValueError, match="kind"):
        infinite_ntk(X, depth=2, kind="cntk")
    with pytest.raises(ValueError, match="depth"):
        infinite_ntk(X, depth=-1)
    with pytest.raises(ValueError, match=r"matrix \(N, d_in\)"):
        infinite_ntk(torch.randn(4, 3, 2), depth=1)
    with pytest.raises(ValueError, match="feature count"):
        infinite_ntk(X, torch.randn(2, 5), depth=1)


@pytest.mark.ntref
@pytest.mark.parametrize("depth, W_std, b_std", [(1, 2**0.5, 0.0), (3, 1.3, 0.2), (5, 2**0.5, 0.1), (0, 1.0, 0.5)])
def test_infinite_ntk_matches_neural_tangents(depth, W_std, b_std):
    pytest.importorskip("neural_tangents")
    import jax
    from neural_tangents import stax
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(depth)
    X, Y = rng.standard_normal((7, 5)), rng.standard_normal((4, 5))
    X[3] = 0.0                                                   # a zero input: a zero variance without bias
    layers = [layer for _ in range(depth) for layer in (stax.Dense(64, W_std=W_std, b_std=b_std), stax.Relu())]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=W_std, b_std=b_std))
    for A, B in ((X, Y), (X, None)):
        ref = kernel_fn(A, B, ("nngp", "ntk"))
        for kind in ("nngp", "ntk"):
            ours = infinite_ntk(torch.tensor(A), None if B is None else torch.tensor(B), depth=depth,
                                W_std=W_std, b_std=b_std, kind=kind).numpy()
            expected = np.asarray(getattr(ref, kind))
            assert np.abs(ours - expected).max() <= 1e-10 * np.abs(expected).max()
