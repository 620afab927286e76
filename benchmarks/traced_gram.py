"""Exact NPK Gram of traced CNNs: a plain conv-BN-ReLU-pool CNN (max and average pooling), VGG-11-BN and the
CIFAR ResNet-18 (npk.models.zoo).

The CNN (conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, dense readout, as a user writes it in plain PyTorch),
traced by from_module, on N(0, 1) images of shape 3 x 32 x 32 in float32: ms per pair (CPU time, and
wall) of npk_gram with max pooling and with average pooling in its place, their ratio, and the same with
the generic rules (`conv_fast.backend("off")`) in the same run, on the first few images, with the
largest relative difference between the two.

Each network (standard widths, He-style torch default init, batch-norm statistics drawn at random as
after training, eval mode) is traced with npk.models.from_module (gating="self": the ReLU network
itself) and the NPK Gram of N random N(0, 1) images of CIFAR-10's shape (3, 32, 32) is computed in
float64 (the cost of the exact NPK does not depend on the pixel values). Not float32: the NPK sums
every path, so it grows like prod over layers of (taps x channels / 2), about 1e57 for ResNet-18,
beyond float32's 3e38. Prints the wall and CPU seconds of the Gram (the CPU
time is the figure to compare on a shared machine), the trace's seconds, and the peak RSS.

Run: python benchmarks/traced_gram.py [--n 16] [--arch cnn vgg11_bn resnet18] [--threads 2] [--cnn-n 24]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
from torch import nn

from npk.kernels import conv_fast
from npk.kernels.npk import npk_gram
from npk.models import zoo
from npk.models.trace import from_module

ARCHS = {"vgg11_bn": zoo.vgg11_bn, "resnet18": zoo.resnet18}


def cnn(pool: type) -> nn.Module:
    """conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, dense readout (pool: nn.MaxPool2d or nn.AvgPool2d)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), pool(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), pool(2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


def ms_per_pair(model, X: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(Gram, CPU ms a pair, wall ms a pair) of a symmetric Gram, after a warm-up on two images."""
    npk_gram(model, X[:2], progress=False)
    pairs = len(X) * (len(X) + 1) / 2
    start, cpu = time.perf_counter(), time.process_time()
    H = npk_gram(model, X, progress=False)
    return H, (time.process_time() - cpu) * 1e3 / pairs, (time.perf_counter() - start) * 1e3 / pairs


def measure_cnn(n: int, n_reference: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    X = torch.randn(n, 3, 32, 32)
    result = {"arch": "cnn", "n": n, "dtype": "float32"}
    for name, pool in (("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)):
        model = from_module(zoo.randomize_batch_norms(cnn(pool).eval()), X[:2])
        _, cpu, wall = ms_per_pair(model, X)
        H, fast_cpu, _ = ms_per_pair(model, X[:n_reference])
        with conv_fast.backend("off"):
            H_generic, generic_cpu, _ = ms_per_pair(model, X[:n_reference])
        result[name] = {"ms_per_pair_cpu": round(cpu, 3), "ms_per_pair_wall": round(wall, 3),
                        f"generic_rules_ms_per_pair_cpu_n{n_reference}": round(generic_cpu, 3),
                        f"npk_ms_per_pair_cpu_n{n_reference}": round(fast_cpu, 3),
                        "max_rel_diff": f"{((H - H_generic).abs().max() / H_generic.abs().max()).item():.1e}"}
    result["max_over_avg_cpu"] = round(result["max"]["ms_per_pair_cpu"] / result["avg"]["ms_per_pair_cpu"], 2)
    return result


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
    parser.add_argument("--arch", nargs="+", default=["cnn", *ARCHS], choices=["cnn", *ARCHS])
    parser.add_argument("--cnn-n", type=int, default=24, help="images of the CNN's Gram")
    parser.add_argument("--cnn-reference-n", type=int, default=6, help="images for the generic-rules comparison")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "threads": args.threads}))
    for arch in args.arch:
        result = measure_cnn(args.cnn_n, args.cnn_reference_n) if arch == "cnn" else measure(arch, args.n)
        result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
