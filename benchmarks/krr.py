"""Kernel ridge on a Gram on disk: the streamed CG solver against the dense Cholesky solve and scikit-learn.

A synthetic PSD Gram: an RBF kernel exp(-|x - x'|^2 / (2 d)) of N + M points x = mu_class + noise in d
dimensions (10 classes), written in row blocks as float32 .npy files (K_train N x N, K_test M x N). Then
  1. one ridge value (lambdas=[r]): kernel_ridge(solver="cg") on the files, kernel_ridge(solver="cholesky")
     on the Grams loaded into memory, and sklearn KernelRidge(kernel="precomputed") (alpha = r tr(K)/N);
  2. the default grid chosen on a validation split: solver="cg" against solver="cholesky";
each with wall time, peak anonymous memory above the start (RssAnon sampled every 20 ms; loading the
float32 files is part of the dense and sklearn runs) and the largest score difference to the dense solve,
relative to the largest dense score. Ratios are dense / streamed.
Run: python benchmarks/krr.py [--n 16000] [--n-test 2000] [--threads 1] [--folder /tmp/krr] [--stages one,grid]
     [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from npk.fit import kernel_ridge
from npk.kernels.gram import format_bytes
from npk.memory import PeakMemory


def write_grams(folder: Path, n: int, m: int, d: int = 32, seed: int = 0, block: int = 2000):
    """(K_train path, K_test path, y_train, y_test): the RBF Gram of the module docstring, as float32 files."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n + m,), generator=g)
    X = 0.5 * torch.randn(10, d, generator=g, dtype=torch.float64)[y] + torch.randn(n + m, d, generator=g,
                                                                                    dtype=torch.float64) / 2
    paths = folder / "K_train.npy", folder / "K_test.npy"
    for path, rows in zip(paths, (X[:n], X[n:])):
        K = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(rows), n))
        for i in range(0, len(rows), block):
            K[i:i + block] = torch.exp(-torch.cdist(rows[i:i + block], X[:n]) ** 2 / (2 * d)).numpy()
        K.flush()
        del K
    return (*paths, y[:n].numpy(), y[n:].numpy())


def measured(name: str, work) -> dict:
    """Run work() -> scores (M, C); time and peak anonymous memory above the start."""
    with PeakMemory() as peak:
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
    return {"name": name, "seconds": seconds, "peak_anon": peak.anon - peak.base_anon, "result": result}


def sklearn_scores(train: Path, test: Path, y: np.ndarray, r: float) -> np.ndarray:
    from sklearn.kernel_ridge import KernelRidge
    K = np.load(train)
    Y = np.eye(10)[y] - 0.1
    alpha = r * float(np.trace(K, dtype=np.float64)) / len(K)
    return KernelRidge(alpha=alpha, kernel="precomputed").fit(K, Y).predict(np.load(test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--ridge", type=float, default=1e-3, help="the single ridge value, relative to tr(K)/N")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--folder", type=Path, default=None, help="where the Gram files go (default: a temp dir)")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--stages", default="one,grid", help="which stages: one (one ridge), grid, or both")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        start = time.perf_counter()
        train, test, y, yt = write_grams(Path(folder), args.n, args.n_test)
        print(f"Grams written: {args.n} x {args.n} + {args.n_test} x {args.n} float32 "
              f"({format_bytes(train.stat().st_size)} + {format_bytes(test.stat().st_size)}) in "
              f"{time.perf_counter() - start:.0f} s")

        def fit(solver, lambdas, loaded):
            K, Kt = (np.load(train), np.load(test)) if loaded else (train, test)
            return kernel_ridge(K, y, Kt, yt, lambdas=lambdas, solver=solver)
        rows = []
        stages = {"one": ("one ridge", [args.ridge]), "grid": ("grid + validation", None)}
        for stage, lambdas in (stages[s] for s in args.stages.split(",")):
            runs = [measured("streamed CG (files)", lambda: fit("cg", lambdas, False)),
                    measured("dense Cholesky (in memory)", lambda: fit("cholesky", lambdas, True))]
            if lambdas is not None and not args.skip_sklearn:
                runs.append(measured("sklearn KernelRidge precomputed", lambda: sklearn_scores(train, test, y, args.ridge)))
            cg, dense = runs[0]["result"], runs[1]["result"]
            for run in runs:
                scores = run["result"] if isinstance(run["result"], np.ndarray) else run["result"].scores
                rows.append({"stage": stage, "solver": run["name"], "seconds": run["seconds"],
                             "peak_anon": run["peak_anon"],
                             "accuracy": None if isinstance(run["result"], np.ndarray) else run["result"].accuracy,
                             "rel_diff_to_dense": float(np.abs(scores - dense.scores).max() / np.abs(dense.scores).max())})
                print(f"{stage:18s} {run['name']:32s} {run['seconds']:8.1f} s  peak anon {format_bytes(run['peak_anon']):>10s}"
                      f"  rel. score diff to dense {rows[-1]['rel_diff_to_dense']:.2e}")
            print(f"{stage}: dense / streamed: time {runs[1]['seconds'] / runs[0]['seconds']:.2f}x, peak anonymous "
                  f"memory {runs[1]['peak_anon'] / max(runs[0]['peak_anon'], 1):.1f}x; chosen ridge "
                  f"{cg.param_relative:g} (cg) vs {dense.param_relative:g} (dense); CG passes {cg.solver['passes']}, "
                  f"final iterations {cg.solver['final']['iterations']}")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "n_test": args.n_test, "threads": args.threads,
                                         "machine": platform.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
