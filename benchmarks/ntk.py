"""Empirical NTK Gram (trace over outputs, float32, CPU): npk's implementations against neural-tangents'.

Nets: "mlp" a DNN 784-256-256-256-10 and "conv" a ConvDNN of three 3x3 convolutions with 32 channels
(zero padding), global average pooling and a dense readout to 10 units, on 3x16x16 inputs; both with
biases. For each net and N every implementation runs in its own fresh subprocess: it builds the
model (seed 0) and N Gaussian inputs (seed 1), makes one warm-up call (neural-tangents: the full call,
which jit-compiles it; npk: the first 64 inputs), then times `--repeat` calls (the best is kept,
JAX results `block_until_ready`). "peak MiB" is the rise of the process's resident set size during the
timed calls (Linux VmHWM after resetting it, minus VmRSS before): the memory the computation really
touched, for both frameworks alike, output included. "max rel diff" compares each Gram with npk's
structured one (neural-tangents' trace is the mean over outputs; it is multiplied by 10 here).

Both frameworks get the same number of threads (--threads, default 1: torch.set_num_threads and
XLA's single-threaded Eigen). On a shared 2-core machine whose other core is busy, torch's 2 OpenMP
threads stall at every parallel region (a 128-sample MLP NTK took 1.4 s with 2 threads, 0.04 s with 1).

An implementation that took more than --drop times the fastest at one N is not run at the next,
larger N (its cost grows at least as fast); one whose worker fails or runs past --timeout seconds is
reported as such; neural-tangents' jacobian and ntk-vp cells are skipped when their predicted memory
(Jacobians 2 N K P floats; ntk-vp N K P + N^2 K A floats, A activations per sample) exceeds --max-gib.
The goal: npk's best at least as fast as neural-tangents' best.

Run: python benchmarks/ntk.py [--n 256 1024] [--nets mlp conv] [--threads 1] [--quick]
     (--quick: N = 128 only and the conv net on 3x8x8 inputs, for a smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

IMPLS = [("npk", "structured"), ("npk", "jacobian"), ("npk", "ntk-vp"),
         ("nt", "jacobian"), ("nt", "ntk-vp"), ("nt", "structured")]
MEMORY_BUDGET = 4 * 2**30


# ------------------------------------------------------------------------------------- worker
def build(net: str, n: int, size: int):
    import torch
    from npk.models.conv import ConvDNN
    from npk.models.fc import DNN
    torch.manual_seed(0)
    if net == "mlp":
        model = DNN(784, [256, 256, 256], 10, bias=True)
    else:
        model = ConvDNN(3, [32, 32, 32], padding="zero", pooling="gap", d_out=10, input_size=size, bias=True)
    torch.manual_seed(1)
    return model, torch.randn(n, *model.input_shape)


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def worker(net: str, n: int, size: int, framework: str, impl: str, repeat: int, threads: int, out: str) -> None:
    import torch
    torch.set_num_threads(threads)
    if threads == 1:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    model, X = build(net, n, size)
    if framework == "npk":
        from npk.kernels.ntk import ntk_gram

        def call():
            return ntk_gram(model, X, implementation=impl, memory_budget=MEMORY_BUDGET, progress=False)
        ntk_gram(model, X[:64], implementation=impl, progress=False)
    else:
        from npk.kernels._ntref import neural_tangents, nt_ntk_fn, to_jax
        neural_tangents()
        import jax
        jax.config.update("jax_enable_x64", False)      # float32, like npk's run
        fn, x = nt_ntk_fn(model, impl), to_jax(X)

        def call():
            return fn(x).block_until_ready() * 10        # neural-tangents' trace is the mean over 10 outputs
        call()
    best = float("inf")
    rss = memory_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                     # reset the peak (VmHWM) to the current RSS
    for _ in range(repeat):
        start = time.perf_counter()
        K = call()
        best = min(best, time.perf_counter() - start)
    peak = (memory_kib("VmHWM") - rss) / 1024
    np.save(out, np.asarray(K))
    print(json.dumps({"seconds": best, "peak_mib": peak}))


# ------------------------------------------------------------------------------------- driver
def predicted_gib(net: str, n: int, size: int, framework: str, impl: str) -> float:
    """Memory neural-tangents' jacobian / ntk-vp need for an N x N Gram (float32); 0 for the others."""
    if framework != "nt" or impl == "structured":
        return 0.0
    import torch
    model, X = build(net, 1, size)
    P = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        A = sum(q.numel() for q in model.gating_preactivations(X)) + 10
    floats = 2 * n * 10 * P if impl == "jacobian" else n * 10 * P + n * n * 10 * A
    return 4 * floats / 2**30


def run_cell(args, net: str, n: int, framework: str, impl: str, tmp: str) -> dict:
    need = predicted_gib(net, n, args.size, framework, impl)
    if need > args.max_gib:
        return {"status": f"skipped: needs ~{need:.0f} GiB"}
    out = os.path.join(tmp, f"{net}-{n}-{framework}-{impl}.npy")
    cmd = [sys.executable, __file__, "--worker", net, str(n), str(args.size), framework, impl, str(args.repeat),
           str(args.threads), out]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {args.timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": "failed: " + ("out of memory" if "memory" in tail.lower() else tail[:60])}
    return {**json.loads(lines[-1]), "gram": out, "status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--nets", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    parser.add_argument("--size", type=int, default=16, help="conv input size (3 x size x size)")
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per cell (the best is kept)")
    parser.add_argument("--drop", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gib", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        net, n, size, framework, impl, repeat, threads, out = args.worker
        return worker(net, int(n), int(size), framework, impl, int(repeat), int(threads), out)
    if args.quick:
        args.n, args.size = [128], 8
    import torch
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"torch {torch.__version__}; {args.threads} thread(s) per framework; float32")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            active = list(IMPLS)
            for n in sorted(args.n):
                print(f"\n{net}, N = {n}" + (f" (conv input 3x{args.size}x{args.size})" if net == "conv" else ""))
                print(f"{'implementation':<28} {'seconds':>9} {'peak MiB':>9} {'max rel diff':>13}")
                cells = {key: run_cell(args, net, n, *key, tmp) for key in active}
                report(cells)
                fastest = min([c["seconds"] for c in cells.values() if c["status"] == "ok"], default=None)
                active = [key for key in active if cells[key]["status"] == "ok"
                          and cells[key]["seconds"] <= args.drop * fastest]
                dropped = [f"{fw} {impl}" for fw, impl in IMPLS if (fw, impl) in cells and (fw, impl) not in active]
                if dropped and n != max(args.n):
                    print(f"  not run at larger N (failed or > {args.drop:g}x the fastest): {', '.join(dropped)}")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")


def report(cells: dict) -> None:
    ok = {key: c for key, c in cells.items() if c["status"] == "ok"}
    ref = np.load(ok[("npk", "structured")]["gram"]) if ("npk", "structured") in ok else None
    for (fw, impl), c in cells.items():
        name = f"{'npk' if fw == 'npk' else 'neural-tangents'} {impl}"
        if c["status"] != "ok":
            print(f"{name:<28} {c['status']}")
            continue
        diff = float(np.abs(np.load(c["gram"]) - ref).max() / np.abs(ref).max()) if ref is not None else float("nan")
        print(f"{name:<28} {c['seconds']:>9.3f} {c['peak_mib']:>9.0f} {diff:>13.1e}")
    best = {fw: min([c["seconds"] for (f, _), c in ok.items() if f == fw], default=None) for fw in ("npk", "nt")}
    if best["npk"] and best["nt"]:
        print(f"{'npk best / nt best':<28} {best['npk'] / best['nt']:>9.2f}")


if __name__ == "__main__":
    main()
