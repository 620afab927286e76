"""Tiles of a conv net fused from its inputs to the pool: sized by time against sized by P^2 pair kernels.

C4GAP-16 (four 3x3 convs of 16 channels, zero padding, global average pooling, hard gates) on N random
32x32 RGB images, float32, one thread. `npk_gram` sizes the tiles of such a net by estimated time (about
TILE_SECONDS of work, at most 1/8 of the samples): its pairs keep no P^2 kernel. The reference run, in the
same process, sizes them as if they did (one pair a tile at the default budget), as npk did before. Both
compute the Gram in memory and into a .npy file with a tile store (checkpoint_dir); the benchmark prints
wall time, ms per pair, the number of tile records in the store, and reference / fused ratios.
Run: python benchmarks/fused_tiles.py [--n 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from npk import npk_gram
from npk.kernels import conv_fast
from npk.models import ConvDNN


def timed(model, X, folder: Path | None) -> tuple[float, int]:
    """(seconds, tile records) of one Gram, in memory (folder None) or into folder/H.npy with a store."""
    start = time.perf_counter()
    if folder is None:
        npk_gram(model, X, progress=False)
        return time.perf_counter() - start, 0
    npk_gram(model, X, progress=False, out=folder / "H.npy", checkpoint_dir=folder / "store")
    return time.perf_counter() - start, len(list((folder / "store").glob("tile_*")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ConvDNN(3, [16] * 4, d_out=10, input_size=32)
    X = torch.randn(args.n, 3, 32, 32)
    pairs = args.n * (args.n + 1) // 2
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"C4GAP-16, {args.n} images, {pairs:,} pairs")
    for where in ("in memory", "out= + store"):
        row = {}
        for sizing, patch in (("fused", contextlib.nullcontext()),
                              ("P^2", mock.patch.object(conv_fast, "takes_inputs_to_pool", lambda *a: False))):
            with patch, tempfile.TemporaryDirectory() as tmp:
                row[sizing] = timed(model, X, None if where == "in memory" else Path(tmp))
        (fused, fused_tiles), (ref, ref_tiles) = row["fused"], row["P^2"]
        records = f", tile records {fused_tiles} vs {ref_tiles}" if ref_tiles else ""
        print(f"{where}: time-sized tiles {fused:.2f} s ({1e3 * fused / pairs:.2f} ms/pair), P^2-sized "
              f"{ref:.2f} s ({1e3 * ref / pairs:.2f} ms/pair), ratio {ref / fused:.2f}{records}")


if __name__ == "__main__":
    main()
