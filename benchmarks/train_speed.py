"""CPU training and evaluation speed of the CIFAR-10 evidence nets: which settings buy epochs.

For C4GAP-16 DNN / DGN / DLGN (biases, soft gates sigmoid(4q), value network reading all ones) on random
3x32x32 inputs, one torch thread, it times in one process:

    train     ms per image of Adam steps at batch 32, contiguous (NCHW) against channels_last tensors
    evaluate  ms per image of a forward pass under no_grad at eval batch 1024 (npk's old default) against
              64 (the default now): a large batch spills the conv activations out of cache

and prints each ratio (> 1: the second setting is faster) and the peak resident memory. A training epoch of
the evidence runs evaluates 11,111 images (validation + test) beside 10,001 training images, so the
evaluation batch matters as much as the training step. npk took the evaluation batch (`train`'s
eval_batch_size default is 64). It did not take channels_last yet: it changes the layout of every weight
that later code reads (checkpoints, gate copies, Grams), and its gain was measured only on a loaded machine.

Run: python benchmarks/train_speed.py [--images 640] [--repeat 3]
"""
from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from npk.models import C4GAP


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_time(model, X, y, channels_last: bool, repeat: int) -> float:
    if channels_last:
        model, X = model.to(memory_format=torch.channels_last), X.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 3e-4)

    def epoch():
        for i in range(0, len(X), 32):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[i:i + 32]), y[i:i + 32]).backward()
            opt.step()
    return best_time(epoch, repeat) / len(X)


@torch.no_grad()
def eval_time(model, X, batch: int, repeat: int) -> float:
    model.eval()
    return best_time(lambda: [model(X[i:i + batch]) for i in range(0, len(X), batch)], repeat) / len(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--eval-images", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(args.images, 3, 32, 32, generator=g), torch.randint(0, 10, (args.images,), generator=g)
    X_eval = torch.randn(args.eval_images, 3, 32, 32, generator=g)
    print(f"{'net':5s} {'train NCHW':>11s} {'train CL':>9s} {'ratio':>6s} {'eval 1024':>10s} {'eval 64':>8s} {'ratio':>6s}"
          "   (ms per image, 1 thread)")
    for kind in ("dnn", "dgn", "dlgn"):
        opts = {} if kind == "dnn" else dict(gate="soft", beta=4.0, value_input="ones")
        torch.manual_seed(0)
        model = C4GAP(kind, width=16, bias=True, **opts)
        plain = train_time(model, X, y, False, args.repeat)
        torch.manual_seed(0)
        cl = train_time(C4GAP(kind, width=16, bias=True, **opts), X, y, True, args.repeat)
        big, small = (eval_time(model, X_eval, b, args.repeat) for b in (1024, 64))
        print(f"{kind:5s} {1e3 * plain:11.2f} {1e3 * cl:9.2f} {plain / cl:6.2f} {1e3 * big:10.2f} {1e3 * small:8.2f} "
              f"{big / small:6.2f}")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
