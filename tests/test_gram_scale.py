"""npk_gram(..., normalize="cosine"): exact, unit diagonal, and deep nets' NPKs then fit float32."""
import numpy as np
import pytest
import torch

import npk
from npk.kernels.linalg import cosine_normalize
from npk.kernels.npk import npk_diagonal


def manual_cosine(H, hx, hy):
    return H / np.sqrt(np.outer(hx, hy))


def test_cosine_npk_equals_the_manual_formula_to_1e12():
    torch.manual_seed(0)
    model = npk.models.ConvDLGN(2, [4, 4], kernel_size=3, d_out=2, input_size=5, spatial_dims=1).double()
    X, Y = torch.randn(6, 2, 5, dtype=torch.float64), torch.randn(4, 2, 5, dtype=torch.float64)
    hx = np.diag(npk.npk_gram(model, X).numpy())
    hy = np.diag(npk.npk_gram(model, Y).numpy())
    raw = npk.npk_gram(model, X, Y).numpy()
    np.testing.assert_allclose(npk.npk_gram(model, X, Y, normalize="cosine").numpy(), manual_cosine(raw, hx, hy),
                               rtol=1e-12, atol=0)
    square = npk.npk_gram(model, X, normalize="cosine").numpy()
    np.testing.assert_allclose(square, manual_cosine(npk.npk_gram(model, X).numpy(), hx, hx), rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.diag(square), 1.0, atol=1e-15)
    np.testing.assert_allclose(npk_diagonal(model, Y).numpy(), hy, rtol=1e-12)


def test_a_deep_nets_npk_overflows_float32_but_its_cosine_fits():
    torch.manual_seed(0)
    model = npk.models.DNN(8, [1024] * 16, 1)                       # H(x, x) about |x|^2 512^16 = 1e44
    X = torch.randn(5, 8)
    raw = npk.npk_gram(model.double(), X.double())
    assert raw.diagonal().min().item() > torch.finfo(torch.float32).max
    with pytest.raises(OverflowError, match="float64"):
        npk.npk_gram(model, X)
    C = npk.npk_gram(model, X, normalize="cosine")
    assert C.dtype == torch.float32 and torch.isfinite(C).all()
    expected = cosine_normalize(raw, raw.diagonal())
    np.testing.assert_allclose(C.numpy(), expected.numpy(), rtol=1e-6)
    assert C.abs().max().item() <= 1 + 1e-6


def test_cosine_normalize_checks_its_diagonals():
    K = torch.tensor([[4.0, 2.0, 1.0], [2.0, 9.0, 3.0]], dtype=torch.float64)
    np.testing.assert_allclose(cosine_normalize(K, [4.0, 9.0], [1.0, 4.0, 9.0]).numpy(),
                               K.numpy() / np.sqrt(np.outer([4.0, 9.0], [1.0, 4.0, 9.0])), rtol=1e-15)
    with pytest.raises(ValueError, match="diagonals of lengths"):
        cosine_normalize(K, [4.0, 9.0])
    with pytest.raises(ValueError, match="positive diagonal"):
        cosine_normalize(K, [4.0, 0.0], [1.0, 4.0, 9.0])


def test_bad_normalize_options_fail_in_one_line(tmp_path):
    model, X = npk.models.DLGN(3, [4], 2), torch.randn(3, 3)
    with pytest.raises(ValueError, match="None or 'cosine'"):
        npk.npk_gram(model, X, normalize="paths")
    with pytest.raises(ValueError, match="not with out="):
        npk.npk_gram(model, X, normalize="cosine", out=tmp_path / "H.npy")
