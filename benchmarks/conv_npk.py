"""Exact NPK Gram of C4GAP-shaped conv nets: npk.npk_gram against a naive one-pair-at-a-time loop.

Net: four 3x3 convolutions of --width channels (zero padding), global average pooling, a linear
readout (npk.models.conv.C4GAP), hard gates (a ReLU net, He init), float32. Data:
  digits   scikit-learn's 8x8 digits, pixels / 16, shape (N, 1, 8, 8), all 1,797 images by default;
  rgb32    random N(0, 1) images of shape (N, 3, 32, 32), CIFAR-10's shape (the cost of the exact NPK
           does not depend on the pixel values, so no data file is needed).
The naive reference propagates the same pair kernel M(i, i') (a P x P matrix, P positions) for one
pair of samples at a time with plain Python loops, on a random subset of pairs; both must agree there.
Every measurement runs in its own subprocess: wall seconds of the run after a warm-up, and the growth of
the peak memory once model and data are built, warm-up included (peak RSS from resource.getrusage, or
torch.cuda.max_memory_allocated with --device cuda).

Run: python benchmarks/conv_npk.py [--quick] [--width 128] [--n-digits 1797] [--n-rgb 200] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from npk import graph
from npk.kernels.npk import npk_gram
from npk.models.conv import C4GAP

CASES = {"digits": dict(in_channels=1, size=8), "rgb32": dict(in_channels=3, size=32)}


# ------------------------------------------------------------------------------ naive reference
def naive_shift_sum(M: torch.Tensor, spatial: tuple[int, ...], kernel_size, circular: bool) -> torch.Tensor:
    """sum_o M(i + o, i' + o) for one pair, M of shape (P, P); positions outside wrap or contribute 0."""
    r = [k // 2 for k in kernel_size]
    Ms = M.reshape(*spatial, *spatial)
    if circular:
        for axis, (n, ra) in enumerate(zip(spatial, r)):
            idx = torch.arange(-ra, n + ra) % n
            Ms = Ms.index_select(axis, idx).index_select(axis + len(spatial), idx)
    else:
        Ms = F.pad(Ms, [p for ra in reversed(r + r) for p in (ra, ra)])
    out = torch.zeros(*spatial, *spatial, dtype=M.dtype)
    for offset in np.ndindex(*[2 * ra + 1 for ra in r]):
        window = tuple(slice(o, o + n) for o, n in zip(offset, spatial))
        out += Ms[window + window]
    return out.reshape(M.shape)


def naive_npk(model, X: torch.Tensor, pairs) -> list[float]:
    """H(x_a, x_b) for each (a, b) in `pairs`, one pair at a time (conv, Gate, GlobalAvgPool, bias-free Readout)."""
    spatial = tuple(X.shape[2:])
    used = sorted({i for pair in pairs for i in pair})
    row = {i: r for r, i in enumerate(used)}
    with torch.no_grad():
        gates = [g.flatten(2).to(X.dtype) for g in model.gates(X[used])]      # (samples used, C, P)
    values = []
    for a, b in pairs:
        x, y = X[a].flatten(1), X[b].flatten(1)
        M = x.T @ y
        for op in model.ops:
            if isinstance(op, graph.Linear) and op.is_conv and not op.has_bias:
                M = naive_shift_sum(M, spatial, op.module.kernel_size, op.circular)
            elif isinstance(op, graph.Gate):
                M = (gates[op.layer][row[a]].T @ gates[op.layer][row[b]]) * M
            elif isinstance(op, graph.GlobalAvgPool):
                M = M.mean()
            elif not (isinstance(op, graph.Readout) and not op.has_bias):
                raise ValueError(f"the naive reference handles bias-free conv, Gate, GlobalAvgPool, Readout; got {op}")
        values.append(float(M))
    return values


# ---------------------------------------------------------------------------------- one measurement
def build(case: str, n: int, width: int, device: str):
    torch.manual_seed(0)
    spec = CASES[case]
    if case == "digits":
        images = load_digits().images[:n] / 16.0
        X = torch.tensor(images, dtype=torch.float32)[:, None]
    else:
        X = torch.randn(n, spec["in_channels"], spec["size"], spec["size"], generator=torch.Generator().manual_seed(1))
    model = C4GAP("dnn", in_channels=spec["in_channels"], input_size=spec["size"], width=width, d_out=10)
    return model.to(device), X.to(device)


def peak_mib(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(job: dict) -> dict:
    """Time one method on one case in this (fresh) process; report seconds, peak memory growth, values."""
    torch.set_num_threads(job["threads"])
    model, X = build(job["case"], job["n"], job["width"], job["device"])
    pairs = [tuple(p) for p in job["pairs"]]
    if job["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = peak_mib(job["device"])            # growth from here on, warm-up included
    if job["method"] == "npk":
        npk_gram(model, X[:4], progress=False)                                   # warm-up
        run = lambda: npk_gram(model, X, progress=False)                         # noqa: E731
    else:
        naive_npk(model, X, pairs[:1])
        run = lambda: naive_npk(model, X, pairs)                                 # noqa: E731
    start = time.perf_counter()
    out = run()
    if job["device"] == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_mib(job["device"]) - before
    values = [float(out[a, b]) for a, b in pairs] if job["method"] == "npk" else out
    return {"seconds": seconds, "peak_mib": peak, "values": values}


def measure(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {job['case']}/{job['method']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run: 300 digits, 32 rgb images")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--n-digits", type=int, default=None, help="digits images (default 1797; quick 300)")
    parser.add_argument("--n-rgb", type=int, default=None, help="32x32x3 images (default 200; quick 32)")
    parser.add_argument("--naive-pairs", type=int, nargs=2, default=None, metavar=("DIGITS", "RGB"),
                        help="pairs the naive loop computes (default 400 24; quick 200 8)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    n = {"digits": args.n_digits or (300 if args.quick else 1797), "rgb32": args.n_rgb or (32 if args.quick else 200)}
    naive_pairs = dict(zip(CASES, args.naive_pairs or ((200, 8) if args.quick else (400, 24))))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} torch threads, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print(f"C4GAP: 4 x conv3x3({args.width}), zero padding, GAP, readout; hard gates; float32; device {args.device}")
    header = (f"{'case':<16} {'N':>5} {'pairs':>9} {'npk ms/pair':>11} {'naive ms/pair':>13} {'naive/npk':>9} "
              f"{'max rel diff':>12} {'npk peak MiB':>12} {'naive peak MiB':>14}")
    print(header)
    rng = np.random.default_rng(0)
    for case, count in n.items():
        pairs = sorted({tuple(sorted(p)) for p in rng.integers(0, count, size=(naive_pairs[case], 2)).tolist()})
        job = {"case": case, "n": count, "width": args.width, "device": args.device, "threads": args.threads,
               "pairs": pairs}
        fast = measure({**job, "method": "npk"})
        naive = measure({**job, "method": "naive"})
        n_pairs = count * (count + 1) // 2
        fast_ms, naive_ms = 1e3 * fast["seconds"] / n_pairs, 1e3 * naive["seconds"] / len(pairs)
        a, b = np.array(fast["values"]), np.array(naive["values"])
        diff = np.abs(a - b).max() / np.abs(b).max()
        label = f"{case} {CASES[case]['size']}x{CASES[case]['size']}x{CASES[case]['in_channels']}"
        print(f"{label:<16} {count:>5} {n_pairs:>9} {fast_ms:>11.4f} {naive_ms:>13.4f} {naive_ms / fast_ms:>9.1f} "
              f"{diff:>12.1e} {fast['peak_mib']:>12.0f} {naive['peak_mib']:>14.0f}", flush=True)
    print(f"pairs: N(N+1)/2 distinct pairs for npk_gram; the naive loop ran {naive_pairs} random pairs "
          f"(its ms/pair is over those); load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
