"""Memory of the blocked Gram driver: gate bytes, the preflight, and an out-of-core (memmap) Gram.

1. The bytes of the gates of 50,000 CIFAR-10 images through C4GAP-128, computed from the gate shapes
   (nothing allocated): float32 (one float per gate) against bit-packed hard gates.
2. The preflight message for a Gram that cannot fit (C4GAP 32x32, N = 100,000, float32, in memory).
3. The NPK Gram of N digits-sized (64-d) inputs through a DLGN 64-256-256-256-10 written into a .npy
   memmap, with the process's peak anonymous memory (sampled from /proc/self/status every 20 ms) and
   peak RSS (which also counts the memmap's file pages that are resident) against the Gram's size.
Run: python benchmarks/gram_memory.py [--n 20000] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import npk
from npk.kernels import compact
from npk.kernels.gram import format_bytes
from npk.memory import PeakMemory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    shapes = compact.gate_shapes(npk.models.C4GAP("dnn", width=128, input_size=32))
    f32, packed = (compact.gate_bytes(shapes, 50_000, kind, 4) for kind in ("soft", "hard"))
    print(f"1. gates of 50,000 CIFAR-10 images, C4GAP-128 ({compact.gates_per_sample(shapes):,} per image): "
          f"float32 {f32:,} B ({format_bytes(f32)}), bit-packed {packed:,} B ({format_bytes(packed)}), "
          f"ratio 1/{f32 // packed}")

    model = npk.models.C4GAP("dnn", width=128, input_size=32)
    try:
        npk.npk_gram(model, torch.zeros(100_000, 3, 32, 32), progress=False)
    except MemoryError as err:
        print(f"2. preflight, C4GAP-128 on 100,000 32x32 images: MemoryError: {err}")

    torch.manual_seed(0)
    model = npk.models.DLGN(64, [256, 256, 256], 10)
    X = torch.randn(args.n, 64)
    gram_bytes = args.n * args.n * 4
    with tempfile.TemporaryDirectory() as folder, PeakMemory() as peak:
        start = time.perf_counter()
        H = npk.npk_gram(model, X, out=Path(folder) / "H.npy", progress=False)
        seconds = time.perf_counter() - start
        check = npk.npk_gram(model, X[:500], progress=False)
        diff = float((H[:500, :500] - check).abs().max() / check.abs().max())
        del H
    print(f"3. memmap NPK Gram, DLGN 64-256-256-256-10, N = {args.n:,} float32: Gram {format_bytes(gram_bytes)}, "
          f"{seconds:.1f} s; peak anonymous memory +{format_bytes(peak.anon - peak.base_anon)} "
          f"({(peak.anon - peak.base_anon) / gram_bytes:.1%} of the Gram), peak RSS incl. resident file pages "
          f"+{format_bytes(peak.rss - peak.base_rss)}; first 500 x 500 against an in-memory Gram: max rel. diff {diff:.1e}")


if __name__ == "__main__":
    main()
