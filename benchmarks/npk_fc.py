"""Exact NPK Gram of a fully connected DLGN: npk.npk_gram against the plain numpy formula.

    H = (X X^T) * prod_l (G_l G_l^T)        (elementwise products, G_l the 0/1 gates of layer l)

Prints seconds, peak extra memory and the ratio numpy / npk for each N, after checking that both agree.
Run: python benchmarks/npk_fc.py [--n 2048 8192] [--width 256] [--layers 3] [--d-in 784]
"""
from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

import npk


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def numpy_npk(X: np.ndarray, gates: list[np.ndarray]) -> np.ndarray:
    H = X @ X.T
    for G in gates:
        H *= G @ G.T
    return H


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--d-in", type=int, default=784)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = npk.models.DLGN(args.d_in, [args.width] * args.layers, 10)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"DLGN {args.d_in}-{'-'.join([str(args.width)] * args.layers)}-10, float32, hard gates")
    print(f"{'N':>6} {'npk s':>8} {'numpy s':>8} {'numpy/npk':>9} {'max rel diff':>12} {'peak RSS MiB':>12}")
    for n in args.n:
        X = torch.randn(n, args.d_in)
        npk.npk_gram(model, X[:64])  # warm-up
        H, t_npk = timed(lambda: npk.npk_gram(model, X))
        rss_after_npk = peak_rss_mib()
        with torch.no_grad():
            gates = [g.numpy() for g in model.gates(X)]
        H_np, t_np = timed(lambda: numpy_npk(X.numpy(), gates))
        diff = float(np.abs(H.numpy() - H_np).max() / np.abs(H_np).max())
        print(f"{n:>6} {t_npk:>8.3f} {t_np:>8.3f} {t_np / t_npk:>9.2f} {diff:>12.2e} {rss_after_npk:>12.0f}")
        del H, H_np


if __name__ == "__main__":
    main()
