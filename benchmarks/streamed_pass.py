"""One CG pass over a Gram on disk: `StreamedGram.matmul` against the plain row-block product.

The reference reads the same float32 file in 16 MiB row blocks (float64) and forms K[I, :] @ P, the product
before the change; npk reads 64 MiB blocks into reused buffers and forms (P^T K[I, :]^T)^T
(`npk.solvers` docstring). Both on all rows
and on a 90% row subset (the fit part of a validation split), k vectors (40 = 4 ridges x 10 classes), in the
same process, best of `--repeat`; the file is read once first, so both read from the page cache. The
file is n x cols (a row band of a cols x cols Gram): the gain grows with cols, once P (cols x k float64) no
longer fits the cache.
Run: python benchmarks/streamed_pass.py [--n 6000] [--cols 54000] [--k 40] [--threads 1] [--repeat 3] [--folder /tmp]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from npk.kernels.gram import format_bytes
from npk.memory import PeakMemory
from npk.solvers import StreamedGram

REFERENCE_BLOCK_BYTES = 16 * 2**20


def reference_pass(G: StreamedGram, P: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """K[rows] @ P as before: 16 MiB row blocks, the kept rows copied out, then block @ P."""
    n = G.shape[0]
    wanted = np.isin(np.arange(n), rows)
    step = max(1, REFERENCE_BLOCK_BYTES // (8 * G.shape[1]))
    parts = []
    for start in range(0, n, step):
        block = G.rows(start, min(n, start + step))[wanted[start:start + step]]
        parts.append(torch.from_numpy(block) @ P)
    return torch.cat(parts)


def best_of(repeat: int, work) -> tuple[float, int, torch.Tensor]:
    """(least seconds over `repeat` runs, peak anonymous memory above the start, the result)."""
    times = []
    with PeakMemory() as peak:
        for _ in range(repeat):
            start = time.perf_counter()
            result = work()
            times.append(time.perf_counter() - start)
    return min(times), peak.anon - peak.base_anon, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6_000)
    parser.add_argument("--cols", type=int, default=54_000)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "K.npy"
        K = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, args.cols))
        rng = np.random.default_rng(0)
        for i in range(0, args.n, 1000):
            K[i:i + 1000] = rng.random((min(1000, args.n - i), args.cols), dtype=np.float32)
        K.flush()
        del K
        G = StreamedGram(path)
        P = torch.randn(args.cols, args.k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        G.matmul(P)                                        # page cache warm; the finite check done once
        print(f"{args.n:,} x {args.cols:,} float32 file ({format_bytes(path.stat().st_size)}), k = {args.k}, "
              f"{args.threads} thread(s), torch {torch.__version__}, {platform.machine()}")
        for label, rows in (("all rows", np.arange(args.n)),
                            ("90% of rows", np.sort(rng.choice(args.n, int(0.9 * args.n), replace=False)))):
            ref_s, ref_mem, ref = best_of(args.repeat, lambda: reference_pass(G, P, rows))
            npk_s, npk_mem, out = best_of(args.repeat, lambda: G.matmul(P, None if len(rows) == args.n else rows))
            diff = float((out - ref).abs().max() / ref.abs().max())
            print(f"{label:12s} reference {ref_s:6.2f} s ({format_bytes(ref_mem)})  npk {npk_s:6.2f} s "
                  f"({format_bytes(npk_mem)})  ratio {ref_s / npk_s:.2f}x  max rel diff {diff:.1e}")


if __name__ == "__main__":
    main()
