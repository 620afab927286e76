"""The conv NPK Gram on a Dask LocalCluster of W single-thread worker processes against one serial thread.

C4GAP (width 32 by default) on N digits (8x8x1), float32, hard gates. Prints both times (the cluster's
start-up excluded, printed apart), their ratio, and whether the two Grams are equal bit for bit.
Run: python benchmarks/gram_dask.py [--n 600] [--width 32] [--workers 2]   (needs the dist extra)
"""
from __future__ import annotations

import argparse
import time

import torch
from distributed import Client, LocalCluster

import npk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = npk.models.C4GAP("dnn", in_channels=1, input_size=8, width=args.width)
    X = npk.data.load("digits", n_train=args.n).X_train
    start = time.perf_counter()
    serial = npk.npk_gram(model, X, progress=False)
    t_serial = time.perf_counter() - start
    start = time.perf_counter()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        t_start = time.perf_counter() - start
        start = time.perf_counter()
        dist = npk.npk_gram(model, X, progress=False, scheduler=client)
        t_dist = time.perf_counter() - start
    print(f"C4GAP-{args.width} NPK on {args.n} digits (8x8x1), float32, {args.n * (args.n + 1) // 2:,} pairs: "
          f"serial 1 thread {t_serial:.1f} s; Dask {args.workers} workers x 1 thread {t_dist:.1f} s "
          f"(cluster start-up {t_start:.1f} s apart); serial / Dask = {t_serial / t_dist:.2f}; "
          f"equal bit for bit: {torch.equal(serial, dist)}")


if __name__ == "__main__":
    main()
