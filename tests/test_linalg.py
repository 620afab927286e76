"""Kernel diagnostics on small matrices whose values are known by hand."""
import math

import numpy as np
import pytest
import torch

from npk.kernels.linalg import (alignment, centered_alignment, check_gram, check_psd, normalize, nu,
                                principal_angles, spectrum, targets, top_k_energy)

PM = np.array([1.0, -1.0, 1.0, 1.0, -1.0])  # +-1 targets


def _rot(theta):
    R = np.eye(4)
    R[:2, :2] = [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    return R


def test_targets_encodings():
    assert targets(np.array([3, 7, 7]), 3).flatten().tolist() == [-1.0, 1.0, 1.0]  # two classes: larger label +1
    Y = targets(torch.tensor([0, 2, 1, 2]), 4)
    assert torch.allclose(Y, torch.tensor([[2, -1, -1], [-1, -1, 2], [-1, 2, -1], [-1, -1, 2]], dtype=torch.float64) / 3)
    assert targets(PM, 5).shape == (5, 1)


def test_spectrum_descending_float64():
    K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float32)
    s = spectrum(K)
    assert s.dtype == np.float64
    np.testing.assert_allclose(s, [3.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(spectrum(np.diag([1.0, -2.0, 5.0])), [5.0, 1.0, -2.0], atol=1e-14)


def test_alignment_exact_values():
    assert alignment(np.outer(PM, PM), PM) == pytest.approx(1.0, abs=1e-14)
    assert alignment(np.eye(5), PM) == pytest.approx(1 / math.sqrt(5), abs=1e-14)   # N / (sqrt N * N)
    # K = [[2, 1], [1, 2]], y = (+1, -1): <K, yy^T> = 2, ||K|| = sqrt 10, ||yy^T|| = 2
    K = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert alignment(K, [1, 0]) == pytest.approx(1 / math.sqrt(10), abs=1e-14)
    # one-hot minus 1/C for 3 classes: the same-class structure itself aligns perfectly
    y = np.array([0, 1, 2, 0, 1, 2])
    Y = targets(y, 6).numpy()
    assert alignment(Y @ Y.T, y) == pytest.approx(1.0, abs=1e-14)
    assert alignment(-np.outer(PM, PM) + 0 * np.eye(5), PM) == pytest.approx(-1.0, abs=1e-14)


def test_centered_alignment_values_and_constant_invariance():
    K = np.array([[2.0, 1.0], [1.0, 2.0]])
    # centring removes the constant part: H K H = (1/2)[[1, -1], [-1, 1]] is y y^T / 2
    assert centered_alignment(K, [1, 0]) == pytest.approx(1.0, abs=1e-14)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 6))
    K = A @ A.T
    y = np.array([0, 1, 2, 1, 0, 2])
    c = centered_alignment(K, y)
    assert centered_alignment(K + 7.5, y) == pytest.approx(c, abs=1e-12)
    assert alignment(K + 7.5, y) != pytest.approx(alignment(K, y), abs=1e-3)  # the uncentred one moves
    with pytest.raises(ValueError, match="zero"):
        centered_alignment(np.ones((3, 3)), [0, 1, 1])


def test_nu_exact_values():
    n = 5
    assert nu(np.eye(n), PM) == pytest.approx(n * n, rel=1e-14)   # (I/N)^{-1} = N I, ||y||^2 = N
    y = np.array([0, 1, 2, 0, 1, 2])  # one-hot - 1/3: ||Y||_F^2 = N (1 - 1/C) = 4
    assert nu(3.0 * np.eye(6), y) == pytest.approx(6 * 4, rel=1e-14)
    # K = diag(1, 3): K / tr K = diag(1/4, 3/4), y = (+1, -1): nu = 4 + 4/3
    assert nu(np.diag([1.0, 3.0]), [1, 0]) == pytest.approx(16 / 3, rel=1e-14)
    # singular K = 1 1^T with y orthogonal to 1: K / tr K = (1/2) 1 1^T has eigenvalues 1, 0 -> ||y||^2 / eps
    assert nu(np.ones((2, 2)), [1, 0], eps=0.1) == pytest.approx(2 / 0.1, rel=1e-12)
    with pytest.raises(ValueError, match="pass eps > 0"):
        nu(np.ones((2, 2)), [1, 0])
    with pytest.raises(ValueError, match="eps must be"):
        nu(np.eye(2), [1, 0], eps=-1.0)


def test_nu_falls_when_labels_align():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 8))
    base = A @ A.T + np.eye(8)
    y = np.array([1, -1, 1, 1, -1, -1, 1, -1], dtype=float)
    assert nu(base + 20 * np.outer(y, y), y) < nu(base, y)


def test_top_k_energy_exact():
    K = np.diag([3.0, 2.0, 1.0])
    y = np.array([1.0, 2.0, 2.0])   # ||y||^2 = 9
    assert [top_k_energy(K, y, k) for k in (1, 2, 3)] == pytest.approx([1 / 9, 5 / 9, 1.0], abs=1e-14)
    with pytest.raises(ValueError, match="k must be"):
        top_k_energy(K, y, 4)


def test_normalize_modes():
    K = np.array([[4.0, 2.0], [2.0, 1.0]])
    assert normalize(K, "cosine").numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]
    np.testing.assert_allclose(normalize(K, "trace").numpy(), K * 2 / 5, atol=1e-15)
    with pytest.raises(ValueError, match="positive diagonal"):
        normalize(np.diag([1.0, 0.0]), "cosine")
    with pytest.raises(ValueError, match="'trace' or 'cosine'"):
        normalize(K, "max")


def test_principal_angles_identical_orthogonal_rotated():
    K1 = np.diag([4.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(principal_angles(K1, 2 * K1, 2), [0.0, 0.0], atol=1e-7)
    K2 = np.diag([1.0, 2.0, 3.0, 4.0])  # top-2: span(e4, e3), orthogonal to span(e1, e2)
    np.testing.assert_allclose(principal_angles(K1, K2, 2), [math.pi / 2] * 2, atol=1e-12)
    R = _rot(0.3)
    np.testing.assert_allclose(principal_angles(K1, R @ K1 @ R.T, 1), [0.3], atol=1e-12)
    with pytest.raises(ValueError, match="same samples"):
        principal_angles(K1, np.eye(3), 1)


def test_bad_gram_input():
    with pytest.raises(ValueError, match="square"):
        check_gram(np.ones((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        spectrum(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        alignment(np.array([[1.0, np.nan], [np.nan, 1.0]]), [0, 1])
    with pytest.raises(ValueError, match="not symmetric"):
        spectrum(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2 samples but the Gram has 3"):
        alignment(np.eye(3), [0, 1])
    with pytest.raises(ValueError, match="integer class labels"):
        targets(np.array(["a", "b"]), 2)


def test_check_psd_tolerance_names_smallest_eigenvalue():
    check_psd(torch.diag(torch.tensor([1.0, 0.0, -1e-7], dtype=torch.float64)))  # within -1e-5 ||K||_F
    with pytest.raises(ValueError, match=r"smallest eigenvalue -0\.5 .*jitter"):
        check_psd(torch.diag(torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)))
