"""Diagnostics of Gram matrices: spectrum, kernel-target alignment, nu, label energy, normalisation, angles.

Gram matrices are torch tensors or numpy arrays; every function works in float64 on the Gram's device and
returns numpy arrays (for arrays) or Python floats (for scalars); `normalize` returns a float64 tensor (a Gram).

Targets `y` (one row per sample):
    integer class labels, two classes   y = +-1, the larger label +1 (the paper's convention for nu)
    integer class labels, C > 2 classes Y = one-hot minus 1/C, one column per class (rows sum to zero)
    floating point (N,) or (N, k)       used as given (pass +-1 or one-hot yourself for another encoding)
For several columns, y y^T means Y Y^T and y^T A y means trace(Y^T A Y).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

SYMMETRY_TOL = 1e-6  # max |K - K^T| allowed, relative to max |K|
PSD_TOL = 1e-5       # smallest eigenvalue allowed: -PSD_TOL * ||K||_F


# ------------------------------------------------------------------------------------------ input checks
def as_float64(K, name: str = "K") -> torch.Tensor:
    """K as a finite 2-D float64 tensor (on K's device), or a ValueError saying what is wrong."""
    K = torch.as_tensor(K)
    if K.dim() != 2:
        raise ValueError(f"{name} must be a 2-D Gram matrix, got shape {tuple(K.shape)}")
    if K.is_complex() or K.dtype == torch.bool:
        raise ValueError(f"{name} must be real, got dtype {K.dtype}")
    K = K.to(torch.float64)
    if not torch.isfinite(K).all():
        bad = (~torch.isfinite(K)).nonzero()[:3].tolist()
        raise ValueError(f"{name} contains NaN or inf (first bad entries (row, col): {bad}); recompute the Gram "
                         f"(in float64 if it overflowed) or drop the offending samples")
    return K


def check_gram(K, name: str = "K") -> torch.Tensor:
    """K as a square, symmetric (to SYMMETRY_TOL), finite float64 tensor, or a ValueError."""
    K = as_float64(K, name)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) Gram matrix of one sample set, got shape {tuple(K.shape)}")
    asym = (K - K.T).abs().max().item()
    scale = K.abs().max().item()
    if asym > SYMMETRY_TOL * scale:
        raise ValueError(f"{name} is not symmetric: max |K - K^T| = {asym:.3g} vs max |K| = {scale:.3g} "
                         f"(tolerance {SYMMETRY_TOL:g} relative); symmetrise it with (K + K.T) / 2 if that is "
                         f"round-off, otherwise check how it was computed")
    return K


def check_psd(K: torch.Tensor, name: str = "K") -> None:
    """Raise a ValueError unless the symmetric K has smallest eigenvalue >= -PSD_TOL * ||K||_F.

    A Cholesky factorisation of K + PSD_TOL ||K||_F I screens cheaply; only when it fails are the
    eigenvalues computed, to decide and to name the smallest one in the message.
    """
    tol = PSD_TOL * torch.linalg.matrix_norm(K).item()
    if torch.linalg.cholesky_ex(shifted(K, tol)).info.item() == 0:
        return
    s = torch.linalg.eigvalsh(K)
    smallest, largest = s[0].item(), s[-1].item()
    if smallest < -tol:
        raise ValueError(
            f"{name} is not positive semi-definite: smallest eigenvalue {smallest:.4g} (largest {largest:.4g}), "
            f"below the tolerance -{PSD_TOL:g} * ||K||_F = {-tol:.3g}. A kernel Gram must be PSD: recompute it "
            f"in float64, add a jitter ({name} + eps * I with eps >= {-smallest:.3g}), or normalise it "
            f"(npk.kernels.linalg.normalize(K, 'cosine'))")


def shifted(K: torch.Tensor, shift: float) -> torch.Tensor:
    """K + shift * I as a new tensor (no identity matrix is formed)."""
    A = K.clone()
    A.diagonal().add_(shift)
    return A


def cholesky(A: torch.Tensor, hint: str) -> torch.Tensor:
    """Lower Cholesky factor L of A, or a ValueError ending with `hint` when A is not numerically positive
    definite: the factorisation fails, or a pivot L_ii^2 (an upper bound on the smallest eigenvalue) is
    below N * eps_float64 * max_i A_ii."""
    L, info = torch.linalg.cholesky_ex(A)
    pivot = torch.diagonal(L).min().item() ** 2 if info.item() == 0 else 0.0
    if pivot <= len(A) * torch.finfo(torch.float64).eps * torch.diagonal(A).max().item():
        where = f"failed at pivot {info.item()}" if info.item() else f"has a pivot of {pivot:.3g}"
        raise ValueError(f"the {len(A)} x {len(A)} matrix is not numerically positive definite (its Cholesky "
                         f"factorisation {where}): {hint}")
    return L


def label_codes(y, name: str = "y") -> tuple[np.ndarray, torch.Tensor]:
    """(classes, codes) for integer labels y: classes sorted, y = classes[codes]; ValueError otherwise."""
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer class labels, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}; convert with "
                         f"y.long() / y.astype(int) (regression targets are not supported here)")
    classes, codes = np.unique(y, return_inverse=True)
    return classes, torch.as_tensor(codes.reshape(-1), dtype=torch.long)


def targets(y, n: int, device=None) -> torch.Tensor:
    """Target matrix (n, k) in float64 for labels or float targets y (encoding in the module docstring)."""
    a = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if np.issubdtype(a.dtype, np.floating):
        if a.ndim not in (1, 2) or not np.isfinite(a).all():
            raise ValueError(f"float targets must be finite with shape (N,) or (N, k), got shape {a.shape}")
        Y = torch.as_tensor(a, dtype=torch.float64).reshape(len(a), -1)
    else:
        classes, codes = label_codes(a)
        if len(classes) < 2:
            raise ValueError(f"targets need at least two classes, got only label {classes.tolist()}")
        if len(classes) == 2:
            Y = (2.0 * codes - 1.0).to(torch.float64)[:, None]
        else:
            Y = torch.nn.functional.one_hot(codes, len(classes)).to(torch.float64) - 1.0 / len(classes)
    if len(Y) != n:
        raise ValueError(f"y has {len(Y)} samples but the Gram has {n}: pass one target per row of K")
    return Y.to(device)


def _gram_and_targets(K, y) -> tuple[torch.Tensor, torch.Tensor]:
    K = check_gram(K)
    return K, targets(y, len(K), K.device)


def _eigh_descending(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, U = torch.linalg.eigh(K)
    return s.flip(0), U.flip(1)


# ------------------------------------------------------------------------------------------ diagnostics
def spectrum(K) -> np.ndarray:
    """Eigenvalues of the symmetric Gram K in descending order (float64; negative ones are kept)."""
    return torch.linalg.eigvalsh(check_gram(K)).flip(0).cpu().numpy()


def alignment(K, y) -> float:
    """Kernel-target alignment A(K, y) = <K, y y^T>_F / (||K||_F ||y y^T||_F), in [-1, 1].

    <K, Y Y^T>_F = trace(Y^T K Y) and ||Y Y^T||_F = ||Y^T Y||_F, so nothing N x N is formed besides K.
    """
    K, Y = _gram_and_targets(K, y)
    return _ratio(K, Y, "alignment")


def centered_alignment(K, y) -> float:
    """Centred alignment (Cortes, Mohri, Rostamizadeh 2012): the alignment of H K H with (H y)(H y)^T,
    H = I - 1 1^T / N. Invariant to adding a constant to K (H 1 = 0)."""
    K, Y = _gram_and_targets(K, y)
    Kc = K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()
    return _ratio(Kc, Y - Y.mean(0, keepdim=True), "centred alignment")


def _ratio(K: torch.Tensor, Y: torch.Tensor, what: str) -> float:
    """<K, Y Y^T>_F / (||K||_F ||Y^T Y||_F), or a ValueError when a norm is zero."""
    nk, ny = torch.linalg.matrix_norm(K).item(), torch.linalg.matrix_norm(Y.T @ Y).item()
    if nk == 0 or ny == 0:
        zero = "kernel" if nk == 0 else "target"
        raise ValueError(f"{what} is undefined: the {zero} matrix is zero after the transformation "
                         f"(a constant kernel or a single class when centred)")
    return ((Y * (K @ Y)).sum().item()) / (nk * ny)


def nu(K, y, eps: float = 0.0) -> float:
    """nu = y^T (K / tr K + eps I)^{-1} y (the paper's nu_t with eps = 0), by a Cholesky solve.

    nu is small when y lies in the top eigendirections of K. eps > 0 is a ridge for a singular or
    ill-conditioned K (tr(K / tr K) = 1, so eps is relative to the mean eigenvalue times N); with eps = 0
    a singular K raises an error saying to pass eps.
    """
    K, Y = _gram_and_targets(K, y)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    tr = torch.trace(K)
    if tr.item() <= 0:
        raise ValueError(f"nu needs a Gram with positive trace, got trace {tr.item():.4g}")
    L = cholesky(shifted(K / tr, eps), f"K / tr K + {eps:g} I is singular or not PSD; pass eps > 0 (e.g. eps=1e-6) to compute "
                    f"y^T (K / tr K + eps I)^{{-1}} y instead")
    Z = torch.linalg.solve_triangular(L, Y, upper=False)
    return (Z * Z).sum().item()


def top_k_energy(K, y, k: int) -> float:
    """Share of the label energy in the top-k eigenvectors of K: ||U_k^T Y||_F^2 / ||Y||_F^2, in [0, 1].

    U_k holds the eigenvectors of the k largest eigenvalues (one full eigendecomposition; with tied
    eigenvalues at the cut the subspace, and so the share, is not unique).
    """
    K, Y = _gram_and_targets(K, y)
    if not 1 <= k <= len(K):
        raise ValueError(f"k must be in 1..N = 1..{len(K)}, got {k}")
    _, U = _eigh_descending(K)
    return (torch.linalg.matrix_norm(U[:, :k].T @ Y) ** 2 / torch.linalg.matrix_norm(Y) ** 2).item()


def normalize(K, mode: str = "trace") -> torch.Tensor:
    """A rescaled copy of the square Gram K (float64 tensor).

    "trace"   K * N / tr K: mean diagonal 1 (trace N), so that Grams of different scales compare
    "cosine"  K(x, x') / sqrt(K(x, x) K(x', x')): unit diagonal (`cosine_normalize` with K's diagonal)
    """
    K = check_gram(K)
    if mode == "trace":
        tr = torch.trace(K)
        if tr.item() <= 0:
            raise ValueError(f"trace normalisation needs a positive trace, got {tr.item():.4g}")
        return K * (len(K) / tr)
    if mode == "cosine":
        return cosine_normalize(K, torch.diagonal(K))
    raise ValueError(f"mode must be 'trace' or 'cosine', got {mode!r}")


def cosine_normalize(K, diag_x, diag_y=None) -> torch.Tensor:
    """K(x_a, y_b) / sqrt(K(x_a, x_a) K(y_b, y_b)) as a float64 tensor: the cosine of the feature angle.

    K (N, M) is a Gram between two sample sets, diag_x (N,) = K(x_a, x_a) and diag_y (M,) = K(y_b, y_b)
    (None: diag_x, for a square Gram of one set). The result has entries in [-1, 1], a unit diagonal for
    a square Gram, and is PSD when K is; it is exact up to one rounding per factor.

    Example:
        >>> K = torch.tensor([[4.0, 2.0], [2.0, 9.0]], dtype=torch.float64)
        >>> cosine_normalize(K, torch.diagonal(K))[0, 1].item()
        0.3333333333333333
    """
    K = as_float64(K)
    dx = as_float64(torch.as_tensor(diag_x).reshape(1, -1), "diag_x").flatten()
    dy = dx if diag_y is None else as_float64(torch.as_tensor(diag_y).reshape(1, -1), "diag_y").flatten()
    if (len(dx), len(dy)) != tuple(K.shape):
        raise ValueError(f"cosine normalisation of a {tuple(K.shape)} Gram needs diagonals of lengths "
                         f"{tuple(K.shape)}, got {(len(dx), len(dy))}")
    for name, d in (("x", dx), ("y", dy)):
        if (d <= 0).any():
            bad = (d <= 0).nonzero().flatten()[:5].tolist()
            raise ValueError(f"cosine normalisation needs a positive diagonal; K({name}, {name}) <= 0 at "
                             f"{bad} (a zero input? drop it or use mode='trace')")
    return K * dx.rsqrt().to(K.device)[:, None] * dy.rsqrt().to(K.device)[None, :]


def principal_angles(K1, K2, k: int) -> np.ndarray:
    """Principal angles (radians, ascending) between the top-k eigenspaces of two Grams on the same samples.

    0 means a shared direction, pi/2 an orthogonal one (scipy.linalg.subspace_angles on the
    eigenvectors of the k largest eigenvalues of each).
    """
    K1, K2 = check_gram(K1, "K1"), check_gram(K2, "K2")
    if K1.shape != K2.shape:
        raise ValueError(f"K1 and K2 must be Grams of the same samples, got shapes {tuple(K1.shape)} and {tuple(K2.shape)}")
    if not 1 <= k <= len(K1):
        raise ValueError(f"k must be in 1..N = 1..{len(K1)}, got {k}")
    U1, U2 = (_eigh_descending(K)[1][:, :k].cpu().numpy() for K in (K1, K2))
    return np.sort(scipy.linalg.subspace_angles(U1, U2))
