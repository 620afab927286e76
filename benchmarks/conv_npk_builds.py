"""ms/pair of the conv NPK kernel's builds, back to back: what a portable build costs against -march=native.

Each build (a path to a compiled csrc/conv_npk.cpp) computes the same exact C4GAP-128 Gram in its own
subprocess (`benchmarks/conv_npk.py`'s worker, with $NPK_CONV_LIB naming the build); the builds take turns
for --rounds rounds, so a change of the machine's load hits them all. Prints each build's median, min and
max ms/pair and its median against the first build's.

Run: python benchmarks/conv_npk_builds.py NATIVE.so npk/kernels/_conv_npk_x86_64_v2.so ... [--case rgb32]
(build a native one with: c++ -O3 -fno-tree-loop-distribute-patterns -pthread -shared -fPIC -march=native
 -o /tmp/native.so csrc/conv_npk.cpp)
"""
import argparse
import os
import statistics

from conv_npk import CASES, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="compiled kernels, the first one the baseline")
    parser.add_argument("--case", choices=list(CASES), default="rgb32")
    parser.add_argument("--n", type=int, default=12, help="images (a Gram of n (n + 1) / 2 pairs)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    job = {"case": args.case, "device": "cpu", "threads": args.threads, "n": args.n, "rows": 0, "backend": "extension",
           "corner": 2}
    times = {b: [] for b in args.builds}
    for _ in range(args.rounds):
        for build in args.builds:
            os.environ["NPK_CONV_LIB"] = build
            r = measure(job)
            times[build].append(1e3 * r["seconds"] / r["pairs"])
    base = statistics.median(times[args.builds[0]])
    print(f"{args.case}, {args.n} images, {args.threads} thread(s), {args.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'build':<60} {'median':>8} {'min':>8} {'max':>8} {'/first':>7}  (ms/pair)")
    for build, t in times.items():
        print(f"{build:<60} {statistics.median(t):>8.3f} {min(t):>8.3f} {max(t):>8.3f} {statistics.median(t) / base:>7.2f}")


if __name__ == "__main__":
    main()
