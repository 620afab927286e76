"""What an NPK Gram will cost, from the op list, before it runs.

One pair's work, op by op, in the entries each rule touches (P positions of the stream, C channels,
Q = P after a max pool, K the kernel taps):

    conv in a fused run (`conv_fast`)         P^2 K       offset sums in L2, overlaps as popcounts
    any other conv (strided, unpadded, ...)    P^2 K       shifted copies of the whole pair kernel
    gate + max pool + channel sum (collapsed)  C Q^2       gathers (`conv_fast.select_sum`)
    identity shortcuts into ReLUs              K C P^2     K mask overlaps where the channels are summed
                                                           (K: the residual branches, `Pair`'s "terms")
    per-channel kernels (a max pool whose      C P^2       per op they pass through
      channels are not summed next)
    pooling, flatten                           P^2         (C P^2 on per-channel kernels)

times a rate per entry measured on this project's CPU (one thread, `benchmarks/traced_gram.py`). The
estimate is a guide (within a factor of about 2), not a measurement: it says where the time goes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from .. import graph
from .rules import collapsed_gates, sums_channels

# nanoseconds per entry in float32 (float64: x 2, memory bound), one thread, on a machine shared with other jobs
NS = {"fused": 0.15, "generic": 0.5, "select": 0.5, "channels": 3.0, "overlap": 0.02, "shape": 0.3}
WARN_SECONDS = 3600.0


@dataclass
class Estimate:
    """ms_per_pair: one thread; parts: {where the time goes: ms per pair}."""

    ms_per_pair: float
    parts: dict[str, float] = field(default_factory=dict)

    def seconds(self, pairs: int, threads: int = 1) -> float:
        return self.ms_per_pair * pairs / 1e3 / max(1, threads)

    def main_part(self) -> tuple[str, float]:
        """(the op group that costs most, its share of the total)."""
        where = max(self.parts, key=self.parts.get)
        return where, self.parts[where] / max(self.ms_per_pair, 1e-12)


def estimate(model, itemsize: int = 4) -> Estimate:
    """Milliseconds per pair of `model`'s NPK on one thread, and where they come from.

    Args:
        model: an npk gated model (its op list and input shape).
        itemsize: bytes per entry of the pair kernel (4: float32, 8: float64).

    Example:
        >>> estimate(from_module(cnn, X[:1])).parts       # doctest: +SKIP
        {'convs at 32x32': 0.66, 'max pools at 32x32 (16 channels)': 0.52, ...}
    """
    from . import conv_fast

    keep, collapsed = graph.kept_gates(model.ops), collapsed_gates(model.ops)
    memory = itemsize / 4
    parts: dict[str, float] = defaultdict(float)

    def add(what: str, entries: float, rate: str) -> None:
        parts[what] += entries * NS[rate] * memory / 1e6

    def walk(ops: Sequence[graph.Op], shape: tuple, kind: str, k: int) -> tuple[tuple, str, int]:
        """shape: (C, *S) of the stream; kind: of `npk.kernels.npk.Pair`; k: its number of terms."""
        i = 0
        while i < len(ops):
            op, area = ops[i], math.prod(shape[1:]) ** 2
            if isinstance(op, (graph.Linear, graph.Flatten, graph.Readout)) and kind == "terms":
                add(f"identity shortcuts at {_res(shape)} ({shape[0]} channels)", k * shape[0] * area, "overlap")
            if isinstance(op, graph.Linear) and op.is_conv:
                shape = (op.module.out_channels, *(a.out_size(n) for a, n in zip(op.axes, shape[1:])))
                fused = conv_fast._handled(op)
                add(f"convs at {_res(shape)}" if fused else f"strided / unpadded convs at {_res(shape)}",
                    math.prod(shape[1:]) ** 2 * math.prod(op.module.kernel_size), "fused" if fused else "generic")
                kind = "each"
            elif isinstance(op, graph.Linear):
                shape, kind = (op.module.out_features,), "each"
            elif isinstance(op, graph.Gate):
                pool = ops[i + 1] if i + 1 < len(ops) and isinstance(ops[i + 1], graph.MaxPool) else None
                if pool is not None:
                    i += 1
                    out = graph.shape_after(pool, shape)
                    if op.layer in collapsed and sums_channels(ops, i + 1):
                        add(f"max pools at {_res(shape)} ({shape[0]} channels)", shape[0] * math.prod(out[1:]) ** 2,
                            "select")
                        kind = "sum"
                    else:
                        add(f"per-channel kernels at {_res(shape)} ({shape[0]} channels)",
                            shape[0] * math.prod(out[1:]) * math.prod(shape[1:]), "channels")
                        kind = "chan"
                    shape = out
                elif kind == "chan":
                    add(f"per-channel kernels at {_res(shape)} ({shape[0]} channels)", shape[0] * area, "channels")
                elif id(op) in keep:
                    kind, k = "terms", (k if kind == "terms" else 1)
                else:
                    if kind == "terms":
                        add(f"identity shortcuts at {_res(shape)} ({shape[0]} channels)", k * shape[0] * area,
                            "overlap")
                    kind = "sum"
            elif isinstance(op, graph.Residual):
                ends = [walk(branch, shape, kind, k) for branch in (op.block, op.skip)]
                shape = ends[0][0]
                kinds = {end[1] for end in ends}
                if kinds <= {"terms", "each"} and "terms" in kinds:
                    kind, k = "terms", sum(end[2] if end[1] == "terms" else 1 for end in ends)
                else:
                    kind = "sum" if "sum" in kinds else "chan" if "chan" in kinds else "each"
                if kind == "chan":
                    add(f"per-channel kernels at {_res(shape)} ({shape[0]} channels)", shape[0] * area, "channels")
            elif not isinstance(op, graph.Readout):
                add(f"pooling at {_res(shape)}", (shape[0] if kind == "chan" else 1) * area, "shape")
                shape = graph.shape_after(op, shape)
                kind = "sum" if isinstance(op, graph.Flatten) else kind
            i += 1
        return shape, kind, k

    walk(model.ops, tuple(model.input_shape), "sum", 0)
    return Estimate(sum(parts.values()), dict(parts))


def _res(shape: tuple) -> str:
    return "x".join(map(str, shape[1:])) or "1"


def summary(est: Estimate, pairs: int, threads: int) -> str:
    """One line: the estimated time of `pairs` pairs and where it comes from."""
    where, share = est.main_part()
    return (f"npk_gram: about {_duration(est.seconds(pairs, threads))} for {pairs:,} pairs "
            f"(~{est.ms_per_pair:.3g} ms a pair on one thread, {threads} thread(s)); "
            f"{share:.0%} of it in {where}")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
