"""Passes of the streamed kernel ridge solver against the rank m of its Nyström preconditioner.

The Gram: the NPK of a fully connected DNN (784-256-256-256, at initialisation, seeded) of N Fashion-MNIST
training images, written as a float32 .npy file with npk_gram(out=...). For each m, `solvers.ridge_cg`
solves (K + lam I) alpha = y for the ridges (1e-3, 1e-2, 0.1, 1) x tr(K)/N and the 10 one-vs-rest targets
at once, to a relative residual of 1e-6, and the benchmark prints the passes over the file (the cost that
grows with N), the iterations per ridge, the wall time, the peak anonymous memory above the start and the
ratio of passes and time to the reference rank (m = 1000, the solver's default) run in the same process.
Run: python benchmarks/landmarks.py [--n 10000] [--ranks 500,1000,2000,4000] [--data-root DIR] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from npk import data, npk_gram, solvers
from npk.kernels.gram import format_bytes
from npk.memory import PeakMemory
from npk.models.fc import DNN

RIDGES = (1e-3, 1e-2, 0.1, 1.0)
REFERENCE = solvers.LANDMARKS


def npk_file(folder: Path, n: int, root) -> tuple[Path, torch.Tensor]:
    """(path of the float32 NPK Gram of n Fashion-MNIST images, their labels)."""
    images = data.load("fashion-mnist", root=root, n_train=n, n_test=10, flatten=True)
    torch.manual_seed(0)
    net = DNN(images.X_train.shape[1], [256, 256, 256], 10)
    path = folder / "K.npy"
    K = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    npk_gram(net, images.X_train, out=K, progress=False)
    K.flush()
    del K
    return path, images.y_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--ranks", default="500,1000,2000,4000", help="Nyström ranks m, comma-separated")
    parser.add_argument("--data-root", default=None, help="the Fashion-MNIST idx files (default: npk.data's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ranks = sorted({int(m) for m in args.ranks.split(",")} | {REFERENCE})
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"NPK of {args.n:,} Fashion-MNIST images, ridges {RIDGES} x tr(K)/N, tol {solvers.TOL:g}")
    with tempfile.TemporaryDirectory() as tmp:
        path, y = npk_file(Path(tmp), args.n, args.data_root)
        G = solvers.StreamedGram(path)
        scale = G.diagonal().mean()
        Y = torch.nn.functional.one_hot(y.long(), 10).double() - 0.1
        rows = {}
        for m in ranks:
            with PeakMemory() as peak:
                start = time.perf_counter()
                _, info = solvers.ridge_cg(G, Y, np.array(RIDGES) * scale, landmarks=m)
                seconds = time.perf_counter() - start
            rows[m] = (info, seconds, peak.anon - peak.base_anon)
    ref_info, ref_seconds, _ = rows[REFERENCE]
    print(f"{'m':>6} {'passes':>7} {'iterations per ridge':>22} {'time (s)':>9} {'peak anon':>10} "
          f"{'passes / m=' + str(REFERENCE):>15} {'time / m=' + str(REFERENCE):>13}")
    for m, (info, seconds, peak_bytes) in rows.items():
        print(f"{m:>6} {info.passes:>7} {str(info.iterations):>22} {seconds:>9.1f} {format_bytes(peak_bytes):>10} "
              f"{info.passes / ref_info.passes:>15.2f} {seconds / ref_seconds:>13.2f}")


if __name__ == "__main__":
    main()
