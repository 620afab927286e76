"""Kernel ridge on Grams larger than memory: row-block streaming and Nyström-preconditioned CG.

Streaming. A Gram K (N, M) stays where it is: a `.npy` file or `np.memmap` is read in row blocks K[I, :]
with plain file reads (no mapping: the file's pages are page cache, never the process's anonymous
memory), each block converted to float64 and multiplied into a float64 (M, k) block of vectors. One pass
over the file gives K[rows] @ P for all k columns at once (`StreamedGram.matmul`). The product is formed
as (P^T K[I, :]^T)^T with P^T contiguous, on blocks of a few hundred rows: for k ~ 40 vectors this BLAS
shape runs about 2x faster than K[I, :] @ P on blocks of a few dozen rows (`benchmarks/streamed_pass.py`).

Shifted systems in one Krylov pass. For the ridge values lam_1..lam_L of a grid and the C one-vs-rest
targets, `ridge_cg` solves on the rows R of a split (all rows, or the fit part of a validation split)

    (K_RR + lam_l I) alpha_lc = y_c          for every (l, c): L * C independent CG recurrences,

whose products K_RR p all come from one pass: an iteration reads the Gram once, whatever L and C are.
A column leaves the block when its relative residual ||r|| / ||y|| <= tol. K_RR is never formed: a pass
reads whole row blocks, keeps the rows of R, and multiplies by vectors that vanish outside R.

Preconditioner (randomised Nyström PCG, Frangella, Tropp & Udell 2023). From m landmark rows S of R (the
Gram's own rows, seeded): Y = K[R, S] + nu E (E the columns of the identity at S, nu a stabilising
shift), C C^T = K[S, S] + nu I, B = Y C^{-T} = Q T (thin QR), T = W diag(sigma) V^T; U = Q W, and
K_RR ~ U diag(d) U^T with d = max(sigma^2 - nu, 0). For ridge lam,

    P^{-1} = (d_m + lam) U diag(1 / (d + lam)) U^T + (I - U U^T),

which maps the top m eigenvalues of K_RR + lam I to about d_m + lam, so the preconditioned condition
number is about (d_m + lam) / lam instead of (d_1 + lam) / lam. Memory: one N m float64 buffer (built in
place, `nystrom`, with up to three m x m matrices), plus six (|R|, L C) float64 blocks and one row block of
the Gram (its file dtype and float64 buffers, and the block's product).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .kernels.gram import preflight
from .kernels.linalg import SYMMETRY_TOL

BLOCK_BYTES = 64 * 2**20   # float64 bytes of one row block
LANDMARKS = 1000           # Nyström landmarks m
CHUNK_ROWS = 4096          # rows of the Nyström buffer transformed at a time
TOL = 1e-6                 # relative residual ||r|| / ||y|| at which a column stops
MAX_ITER = 500


class StreamedGram:
    """Row blocks of a Gram held in memory, in an `np.memmap` or in a `.npy` file, as float64 arrays.

    A whole-file C-ordered memmap or a `.npy` path is read with file reads; anything else (tensors,
    arrays, views of memmaps) is sliced. `name` is for error messages; a row block holds about
    `block_bytes` (default: the module's BLOCK_BYTES) of float64.
    """

    def __init__(self, K, name: str = "K", block_bytes: int | None = None):
        self.name, self._path, self._array = name, None, None
        if isinstance(K, (str, os.PathLike)):
            if not os.path.isfile(K):
                raise FileNotFoundError(f"{name}: no Gram file at {K} (expected a .npy file written by np.save or npk_gram(out=...))")
            mm = np.load(K, mmap_mode="r")
            self._path, self._offset, self.dtype, self.shape = os.fspath(K), mm.offset, mm.dtype, mm.shape
            order_ok = mm.flags.c_contiguous
            del mm
        elif isinstance(K, np.memmap) and K.filename and K.flags.c_contiguous \
                and os.path.getsize(K.filename) == K.offset + K.nbytes:
            self._path, self._offset, self.dtype, self.shape, order_ok = K.filename, K.offset, K.dtype, K.shape, True
        else:
            self._array = K.detach().cpu().numpy() if isinstance(K, torch.Tensor) else np.asarray(K)
            self.dtype, self.shape, order_ok = self._array.dtype, self._array.shape, True
        if len(self.shape) != 2 or not order_ok:
            raise ValueError(f"{name} must be a 2-D C-ordered Gram matrix, got shape {tuple(self.shape)}")
        if not (np.issubdtype(self.dtype, np.floating) or np.issubdtype(self.dtype, np.integer)):
            raise ValueError(f"{name} must hold real numbers, got dtype {self.dtype}")
        self.block = max(1, (block_bytes or BLOCK_BYTES) // (8 * max(1, self.shape[1])))
        self.passes = 0
        self._checked = False    # every row read once and found finite: later passes skip the check

    def open(self) -> np.ndarray:
        """The whole Gram as an array: a read-only memmap of a file, else the array itself."""
        return self._array if self._path is None else \
            np.memmap(self._path, self.dtype, "r", self._offset, self.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """K[start:stop] as a float64 array, checked finite (until one whole pass has been)."""
        if self._array is not None:
            out = np.asarray(self._array[start:stop], dtype=np.float64)
        else:
            M, item = self.shape[1], self.dtype.itemsize
            with open(self._path, "rb") as f:
                f.seek(self._offset + start * M * item)
                out = np.fromfile(f, dtype=self.dtype, count=(stop - start) * M).astype(np.float64).reshape(-1, M)
        self._check_finite(out, start)
        return out

    def _check_finite(self, block: np.ndarray, start: int) -> None:
        if not self._checked and not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(f"{self.name} contains NaN or inf (first at row {start + bad[0]}, column {bad[1]}); "
                             f"recompute the Gram")

    def blocks(self):
        """(start, K[start:start + block]) as float64 for every row block in order. A file is read into two
        buffers reused for every block (a fresh 64 MiB array per block costs a page fault per 4 KiB) and
        converted by torch on all its threads; each yielded block is overwritten by the next."""
        n, M = self.shape
        if self._path is None:
            for start in range(0, n, self.block):
                yield start, self.rows(start, min(n, start + self.block))
            return
        raw = np.empty((min(n, self.block), M), self.dtype)
        wide = torch.empty(raw.shape, dtype=torch.float64)
        with open(self._path, "rb") as f:
            f.seek(self._offset)
            for start in range(0, n, self.block):
                k = min(n, start + self.block) - start
                if f.readinto(memoryview(raw[:k]).cast("B")) != raw[:k].nbytes:
                    raise ValueError(f"{self.name}: {self._path} ends before row {start + k} of its {n} rows; "
                                     f"the file is truncated: recompute the Gram")
                block = wide[:k].copy_(torch.from_numpy(raw[:k])).numpy()
                self._check_finite(block, start)
                yield start, block

    def diagonal(self) -> np.ndarray:
        """diag(K) of a square Gram, read entry by entry."""
        n = min(self.shape)
        if self._array is not None:
            return np.diagonal(self._array).astype(np.float64)
        item = self.dtype.itemsize
        fd = os.open(self._path, os.O_RDONLY)
        try:
            raw = b"".join(os.pread(fd, item, self._offset + i * (self.shape[1] + 1) * item) for i in range(n))
        finally:
            os.close(fd)
        return np.frombuffer(raw, dtype=self.dtype).astype(np.float64)

    def matmul(self, P: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """K[rows] @ P (rows None: all, sorted indices otherwise) in float64, one pass over the row blocks."""
        P = torch.as_tensor(P, dtype=torch.float64)
        if P.shape[0] != self.shape[1]:
            raise ValueError(f"{self.name} is {tuple(self.shape)} but the vectors have {P.shape[0]} rows")
        n = self.shape[0]
        wanted = torch.ones(n, dtype=torch.bool) if rows is None else torch.from_numpy(np.isin(np.arange(n), rows))
        PT = P.T.contiguous()
        parts = []
        for start, block in self.blocks():
            keep = wanted[start:start + len(block)]
            if keep.any():
                product = (PT @ torch.from_numpy(block).T).T                    # whole block: cheaper than a copy
                parts.append(product if keep.all() else product[keep])
        self.passes += 1
        self._checked = self._checked or rows is None
        return torch.cat(parts) if parts else P.new_zeros((0, P.shape[1]))


@dataclass
class CGInfo:
    """What `ridge_cg` did: per ridge value, the most iterations and the largest final relative residual
    over the columns (targets); converged when that residual is <= tol; passes over the Gram."""
    tol: float
    max_iter: int
    landmarks: int
    iterations: list = field(default_factory=list)
    residuals: list = field(default_factory=list)
    converged: list = field(default_factory=list)
    passes: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def nystrom(G: StreamedGram, rows: np.ndarray, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U (|R|, m'), d (m',)) with K_RR ~ U diag(d) U^T from m landmark rows of R (module docstring).

    One (|R|, m) float64 buffer holds Y = K[R, S] + nu E, then B = Y C^{-T}, then U, each computed in place
    in row chunks: with B^T B = V diag(sigma^2) V^T (an m x m eigenproblem), U = B V diag(1 / sigma) are
    the left singular vectors of B (those with sigma^2 > nu), the same U and d as the thin QR of B followed
    by the SVD of its factor. Besides the buffer, at most three m x m float64 matrices at a time.
    """
    rng = np.random.default_rng(seed)
    local = np.sort(rng.choice(len(rows), size=min(m, len(rows)), replace=False))
    n, m = len(rows), len(local)
    buf = torch.empty(n, m, dtype=torch.float64)
    for k, i in enumerate(rows[local]):                                   # Y = K[R, S], one Gram row at a time
        buf[:, k] = torch.from_numpy(G.rows(int(i), int(i) + 1)[0, rows])
    K_SS = buf[local].clone()
    asym = (K_SS - K_SS.T).abs().max().item()
    if asym > SYMMETRY_TOL * K_SS.abs().max().item():
        raise ValueError(f"{G.name} is not symmetric (max |K - K^T| = {asym:.3g} on its landmark rows); "
                         f"a kernel Gram K(X, X) is")
    nu = 1e-7 * max(torch.trace(K_SS).item(), 1e-300)
    shift = 0.0
    for _ in range(6):
        K_SS.diagonal().add_(nu - shift)                                  # K[S, S] + nu I, in place
        shift = nu
        C, info = torch.linalg.cholesky_ex(K_SS)
        if info.item() == 0:
            break
        nu *= 10
    else:
        raise ValueError(f"{G.name} is not positive semi-definite on its landmark rows (Cholesky of K[S, S] + "
                         f"{nu:.3g} I failed); a kernel Gram must be PSD")
    del K_SS
    buf[torch.as_tensor(local), torch.arange(m)] += nu
    chunks = [slice(a, min(n, a + CHUNK_ROWS)) for a in range(0, n, CHUNK_ROWS)]
    gram = torch.zeros(m, m, dtype=torch.float64)
    for c in chunks:                                                      # B = Y C^{-T};  B^T B
        buf[c] = torch.linalg.solve_triangular(C, buf[c].T, upper=False).T
        gram += buf[c].T @ buf[c]
    del C
    sigma2, V = torch.linalg.eigh(gram)
    del gram
    sigma2, V = sigma2.flip(0), V.flip(1)                                 # largest first
    keep = int((sigma2 > nu).sum())
    V[:, :keep] /= sigma2[:keep].sqrt()                                   # V diag(1 / sigma) on the kept columns
    V[:, keep:] = 0
    for c in chunks:                                                      # U = B V diag(1 / sigma), in place
        buf[c] = buf[c] @ V
    return buf[:, :keep], sigma2[:keep] - nu


def _precondition(U: torch.Tensor, d: torch.Tensor, lams: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """P^{-1} R, column j with ridge lams[j]: R + U ((d_m + lam) / (d + lam) - 1) U^T R."""
    if len(d) == 0:
        return R.clone()
    f = (d[-1] + lams)[None, :] / (d[:, None] + lams[None, :]) - 1.0
    return R + U @ ((U.T @ R) * f)


def ridge_cg(G: StreamedGram, Y: torch.Tensor, lambdas, rows: np.ndarray | None = None, tol: float = TOL,
             max_iter: int = MAX_ITER, landmarks: int = LANDMARKS, seed: int = 0,
             max_memory: int | None = None) -> tuple[torch.Tensor, CGInfo]:
    """alpha_l = (K_RR + lambdas[l] I)^{-1} Y_R for every ridge value, by preconditioned CG on the streamed Gram.

    Args:
        G: the square Gram (a `StreamedGram`).
        Y: targets (|R|, C), float64, one row per row of R.
        lambdas: the ridge values (absolute).
        rows: sorted row indices R of the system (None: all rows).
        tol, max_iter: stop a column at ||r|| <= tol ||y||, or after max_iter iterations (passes).
        landmarks: Nyström rank m of the preconditioner (0: plain CG).
        max_memory: limit for the memory preflight (default: the memory available).
    Returns:
        (alpha (L, |R|, C), CGInfo).
    """
    rows = np.arange(G.shape[0]) if rows is None else np.asarray(rows)
    lams = torch.as_tensor(np.asarray(lambdas, dtype=np.float64))
    Y = torch.as_tensor(Y, dtype=torch.float64)
    n, C, L = len(rows), Y.shape[1], len(lams)
    m = min(landmarks, n)
    preflight(f"ridge_cg on {G.name}", {"Nyström factor": n * m * 8 + 3 * m * m * 8, "CG vectors": 6 * n * L * C * 8,
                                        "one row block": 3 * G.block * G.shape[1] * 8}, max_memory)
    U, d = nystrom(G, rows, m, seed) if m else (torch.zeros(n, 0, dtype=torch.float64), torch.zeros(0))
    lam = lams.repeat_interleave(C)                                       # column j = (l, c) = (j // C, j % C)
    B = Y.repeat(1, L)
    X = torch.zeros_like(B)
    R = B.clone()
    Z = _precondition(U, d, lam, R)
    P = Z.clone()
    rz = (R * Z).sum(0)
    norm_b = B.norm(dim=0)
    res = torch.ones(L * C, dtype=torch.float64)
    iters = torch.zeros(L * C, dtype=torch.long)
    active = torch.arange(L * C)
    subset = None if n == G.shape[0] else rows
    start = G.passes
    for it in range(1, max_iter + 1):
        KP = G.matmul(padded(P, rows, G.shape[1]) if subset is not None else P, subset)
        Q = KP + lam[active] * P
        pq = (P * Q).sum(0)
        if (pq <= 0).any():
            raise ValueError(f"{G.name} is not positive semi-definite: CG met p^T (K + lam I) p <= 0; "
                             f"a kernel Gram must be PSD")
        a = rz / pq
        X[:, active] += a * P
        R -= a * Q
        res[active] = R.norm(dim=0) / norm_b[active]
        iters[active] = it
        go = res[active] > tol
        if not go.any():
            break
        active, P, R, rz = active[go], P[:, go], R[:, go], rz[go]
        Z = _precondition(U, d, lam[active], R)
        rz_new = (R * Z).sum(0)
        P = Z + (rz_new / rz) * P
        rz = rz_new
    info = CGInfo(tol=tol, max_iter=max_iter, landmarks=len(d), passes=G.passes - start)
    for l in range(L):
        cols = slice(l * C, (l + 1) * C)
        info.iterations.append(int(iters[cols].max()))
        info.residuals.append(float(res[cols].max()))
        info.converged.append(bool(res[cols].max() <= tol))
    return X.reshape(n, L, C).permute(1, 0, 2), info


def padded(V: torch.Tensor, rows: np.ndarray, n: int) -> torch.Tensor:
    """The (n, k) matrix with rows `rows` from V and zeros elsewhere."""
    out = V.new_zeros((n, V.shape[1]))
    out[torch.as_tensor(rows)] = V
    return out


def gram_shape(K) -> tuple:
    """The shape of a Gram given as a tensor, an array or a .npy path, without reading its values."""
    if isinstance(K, (str, os.PathLike)):
        return StreamedGram(K).shape
    return tuple(K.shape) if hasattr(K, "shape") else np.shape(K)


def dense_bytes(shape_train: tuple, shape_test: tuple) -> int:
    """Anonymous memory of the dense ridge path: K in float64, its shifted copy and a sub-Gram, K_test
    (0 for shapes that are not 2-D: the dense path's checks name those)."""
    if len(shape_train) != 2 or len(shape_test) != 2:
        return 0
    return 3 * shape_train[0] * shape_train[1] * 8 + shape_test[0] * shape_test[1] * 8

