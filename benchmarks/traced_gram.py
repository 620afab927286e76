"""Exact NPK Gram of traced classic architectures: VGG-11-BN and the CIFAR ResNet-18 (npk.models.zoo).

Each network (standard widths, He-style torch default init, batch-norm statistics drawn at random as
after training, eval mode) is traced with npk.models.from_module (gating="self": the ReLU network
itself) and the NPK Gram of N random N(0, 1) images of CIFAR-10's shape (3, 32, 32) is computed in
float64 (the cost of the exact NPK does not depend on the pixel values). Not float32: the NPK sums
every path, so it grows like prod over layers of (taps x channels / 2), about 1e57 for ResNet-18,
beyond float32's 3e38. Prints the wall and CPU seconds of the Gram (the CPU
time is the figure to compare on a shared machine), the trace's seconds, and the peak RSS.

Run: python benchmarks/traced_gram.py [--n 16] [--arch vgg11_bn resnet18] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from npk.kernels.npk import npk_gram
from npk.models import zoo
from npk.models.trace import from_module

ARCHS = {"vgg11_bn": zoo.vgg11_bn, "resnet18": zoo.resnet18}


def measure(arch: str, n: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    net = zoo.randomize_batch_norms(ARCHS[arch]().double().eval())
    X = torch.randn(n, 3, 32, 32, dtype=torch.float64)
    start = time.perf_counter()
    model = from_module(net, X[:2])
    traced = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    H = npk_gram(model, X, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"arch": arch, "n": n, "trace_s": round(traced, 2), "gram_s": round(seconds, 2), "gram_cpu_s": round(cpu, 1),
            "gram_finite": bool(torch.isfinite(H).all()), "largest_entry": f"{H.abs().max().item():.3g}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "threads": args.threads}))
    for arch in args.arch:
        result = measure(arch, args.n)
        result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
