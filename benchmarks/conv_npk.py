"""Exact NPK Gram of C4GAP conv nets: npk's default path against today's pair propagation, and the floor.

Nets: four 3x3 convolutions of `width` channels (zero padding), global average pooling, a linear
readout (npk.models.conv.C4GAP), hard gates (a ReLU net, He init), float32. Cases:
  digits   scikit-learn's 8x8 digits, pixels / 16, C4GAP-128;
  rgb32    random N(0, 1) images of CIFAR-10's shape 3x32x32, C4GAP-128 (the cost of the exact NPK
           does not depend on the pixel values);
  cifar64  a Gram of 1,000 CIFAR-10 training images (from --cifar-root when its batches are there,
           else random images of that shape) through C4GAP-64: the first --cifar-rows rows of it are
           computed against all 1,000 images (so gates and memory are those of the whole Gram) and
           the time is extrapolated to its 500,500 distinct pairs.
Methods, each in its own subprocess (wall seconds after a warm-up; peak memory = peak RSS (VmHWM,
reset once model and data are built) minus the RSS then, or torch.cuda's): "npk" (the default path,
npk.kernels.conv_fast) on all images, and "today" (the generic pair-propagation rules, backend "off")
on the first few; both must agree on those.

The floor. In the same run the script measures the device's GEMM rates (fp32, and the format that is
exact for 0/1 gates: bf16 on a CPU, fp16 on CUDA), the rate of 64-bit AND + popcount (the compiled probe of the
conv NPK extension, CPU only) and the memory bandwidth (a large copy). A pair costs L P^2 C
multiply-adds of gate overlaps (L gated layers, P positions, C channels), or L P^2 ceil(C / 64) word
ANDs and popcounts, and at least one read and one write of its P x P pair kernel per layer. The floor of
a way of computing overlaps is max(overlap time at its measured rate, that traffic at the measured
bandwidth); the script prints it for each way and the fraction of it that npk reaches.

Run: python benchmarks/conv_npk.py [--quick] [--threads 2] [--device cpu|cuda] [--cifar-root /work/data]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from npk.kernels import conv_fast
from npk.kernels.npk import npk_gram
from npk.models.conv import C4GAP

CASES = {"digits": dict(in_channels=1, size=8, width=128),
         "rgb32": dict(in_channels=3, size=32, width=128),
         "cifar64": dict(in_channels=3, size=32, width=64)}
LAYERS = 4                       # gated layers of C4GAP
CIFAR_GRAM = 1000


# ------------------------------------------------------------------------------------ machine rates
def best_seconds(fn, reps: int = 5, sync=lambda: None) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def machine_rates(device: str) -> dict:
    """GEMM op rates (ops/s) of an overlap-shaped product (1024 x 128 times 128 x 1024), AND + popcount
    words/s, copy bandwidth bytes/s."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rates = {}
    formats = {"fp32 GEMM": torch.float32, "fp16 GEMM": torch.float16} if device == "cuda" else \
        {"fp32 GEMM": torch.float32, "bf16 GEMM": torch.bfloat16}
    for name, dtype in formats.items():
        a = (torch.rand(1024, 128, device=device) > 0.5).to(dtype)
        b = (torch.rand(128, 1024, device=device) > 0.5).to(dtype)
        rates[name] = 2 * 1024 * 1024 * 128 / best_seconds(lambda: a @ b, sync=sync)
    lib = conv_fast.extension()
    if device == "cpu" and lib is not None:
        import ctypes
        n, reps = 4096, 20000
        x, y = torch.randint(-2**62, 2**62, (2, n)).unbind()
        probe = lambda: lib.npk_and_popcount(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()),  # noqa: E731
                                             ctypes.c_int64(n), ctypes.c_int64(reps), torch.get_num_threads())
        rates["AND+popcount"] = n * reps / best_seconds(probe, reps=3)
    src = torch.ones(2**25, device=device)                    # 128 MiB, far beyond the caches
    dst = torch.empty_like(src)
    rates["bandwidth"] = 2 * src.nbytes / best_seconds(lambda: dst.copy_(src), sync=sync)
    return rates


def floors(rates: dict, case: str, itemsize: int = 4) -> dict:
    """Per-pair floor (seconds) of each way of computing the overlaps, and its two parts."""
    spec = CASES[case]
    P2, C = (spec["size"] ** 2) ** 2, spec["width"]
    traffic = LAYERS * 2 * P2 * itemsize / rates["bandwidth"]
    out = {}
    for name, rate in rates.items():
        if name == "bandwidth":
            continue
        ops = LAYERS * P2 * (math.ceil(C / 64) if name == "AND+popcount" else 2 * C)
        out[name] = {"overlaps": ops / rate, "traffic": traffic, "floor": max(ops / rate, traffic)}
    return out


# ---------------------------------------------------------------------------------- one measurement
def images(case: str, n: int, cifar_root: str | None) -> tuple[torch.Tensor, str]:
    spec = CASES[case]
    if case == "digits":
        return torch.tensor(load_digits().images[:n] / 16.0, dtype=torch.float32)[:, None], "sklearn digits"
    if case == "cifar64" and cifar_root and os.path.isdir(os.path.join(cifar_root, "cifar-10-batches-py")):
        from npk.data import load            # the same 1,000-image subset for every n
        return load("cifar10", root=cifar_root, n_train=CIFAR_GRAM, n_test=10).X_train[:n].float(), "CIFAR-10 train"
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, spec["in_channels"], spec["size"], spec["size"], generator=gen), "random N(0, 1)"


def reset_peak(device: str) -> float:
    """Restart the peak-memory count (Linux: clear_refs resets VmHWM); returns the memory in use, MiB."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mib(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        return _status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def worker(job: dict) -> dict:
    """Time one method on one case in this (fresh) process: rows X[:rows] against X (all rows when 0)."""
    torch.set_num_threads(job["threads"])
    spec, device = CASES[job["case"]], job["device"]
    torch.manual_seed(0)
    model = C4GAP("dnn", in_channels=spec["in_channels"], input_size=spec["size"], width=spec["width"]).to(device)
    X, source = images(job["case"], job["n"], job.get("cifar_root"))
    X = X.to(device)
    rows = job["rows"] or len(X)
    before = reset_peak(device)                 # growth from here on, warm-up included
    with conv_fast.backend(job["backend"]):
        npk_gram(model, X[:2], progress=False)                                   # warm-up
        start = time.perf_counter()
        H = npk_gram(model, X[:rows], None if rows == len(X) else X, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    pairs = rows * (rows + 1) // 2 if rows == len(X) else rows * len(X)
    corner = H[:job["corner"], :job["corner"]].double().cpu().numpy().tolist()
    return {"seconds": seconds, "pairs": pairs, "peak_mib": peak_mib(device) - before, "corner": corner,
            "source": source}


def measure(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {job['case']}/{job['backend']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images in every case")
    parser.add_argument("--n", type=int, nargs=3, default=None, metavar=("DIGITS", "RGB32", "CIFAR_ROWS"),
                        help="npk's images for digits and rgb32, and rows of the 1,000-image CIFAR Gram "
                             "(default 600 100 4; quick 200 12 2)")
    parser.add_argument("--n-today", type=int, nargs=3, default=None, metavar=("DIGITS", "RGB32", "CIFAR64"),
                        help="images for today's rules (default 100 6 4; quick 40 3 3)")
    parser.add_argument("--cifar-root", default="/work/data", help="folder holding cifar-10-batches-py")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and the kernel's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    n_fast = args.n or ((200, 12, 2) if args.quick else (600, 100, 4))
    n_today = args.n_today or ((40, 3, 3) if args.quick else (100, 6, 4))
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {name}, {os.cpu_count()} cores, {args.threads} threads, load average {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}, conv NPK extension {'built' if conv_fast.extension() else 'NOT built'}")
    rates = machine_rates(args.device)
    print("measured: " + ", ".join(f"{k} {v / 1e9:.1f} {'GB/s' if k == 'bandwidth' else 'G/s'}"
                                   for k, v in rates.items()) + " (GEMM in op/s, 2 per multiply-add; popcount in words/s)")
    used = "AND+popcount" if "AND+popcount" in rates else next(k for k in rates if k.endswith("GEMM") and k != "fp32 GEMM")
    methods = [k for k in rates if k != "bandwidth"]
    print("\nper-pair floor (ms) = max(overlaps at the measured rate, one read + write of the pair kernel per layer):")
    print(f"{'case':<8} {'traffic':>8} " + " ".join(f"{m:>13}" for m in methods))
    for case in CASES:
        f = floors(rates, case)
        print(f"{case:<8} {1e3 * f[methods[0]]['traffic']:>8.4f} "
              + " ".join(f"{1e3 * f[m]['overlaps']:>6.4f}|{1e3 * f[m]['floor']:<6.4f}" for m in methods))
    print("(each cell: overlaps | floor)\n")
    print(f"{'case':<8} {'data':<15} {'N':>5} {'pairs':>9} {'npk ms/pair':>11} {'today ms/pair':>13} {'today/npk':>9} "
          f"{'max rel diff':>12} {'npk peak MiB':>12} {'floor ms':>9} {'floor/npk':>9} {'overlaps/npk':>12}")
    for case, n, n_ref in zip(CASES, n_fast, n_today):
        job = {"case": case, "device": args.device, "threads": args.threads, "cifar_root": args.cifar_root,
               "corner": min(n_ref, n)}
        if case == "cifar64":
            fast = measure({**job, "n": CIFAR_GRAM, "rows": n, "backend": "auto"})
        else:
            fast = measure({**job, "n": n, "rows": 0, "backend": "auto"})
        today = measure({**job, "n": n_ref, "rows": 0, "backend": "off"})
        fast_ms, today_ms = 1e3 * fast["seconds"] / fast["pairs"], 1e3 * today["seconds"] / today["pairs"]
        a, b = np.array(fast["corner"]), np.array(today["corner"])
        diff = np.abs(a - b).max() / np.abs(b).max()
        floor_ms, overlap_ms = (1e3 * floors(rates, case)[used][k] for k in ("floor", "overlaps"))
        print(f"{case:<8} {fast['source']:<15} {CIFAR_GRAM if case == 'cifar64' else n:>5} {fast['pairs']:>9} "
              f"{fast_ms:>11.4f} {today_ms:>13.4f} {today_ms / fast_ms:>9.1f} {diff:>12.1e} "
              f"{fast['peak_mib']:>12.0f} {floor_ms:>9.4f} {floor_ms / fast_ms:>9.2f} {overlap_ms / fast_ms:>12.2f}",
              flush=True)
        if case == "cifar64":
            full = CIFAR_GRAM * (CIFAR_GRAM + 1) // 2
            print(f"  -> a Gram of {CIFAR_GRAM:,} images ({full:,} pairs) at this rate: "
                  f"{fast_ms * full / 6e4:.1f} min, peak memory growth {fast['peak_mib']:.0f} MiB "
                  f"(measured: {n} rows x {CIFAR_GRAM} images with the gates of all {CIFAR_GRAM})")
    print(f"\nnpk: the default path (floor: overlaps by {used}, or the pass over the pair kernel per layer that "
          f"the generic rules make; overlaps/npk: against the overlaps alone); today: the generic rules, on the "
          f"first {list(n_today)} images; max rel diff over those; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
