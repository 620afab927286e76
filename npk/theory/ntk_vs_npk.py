"""NTK versus NPK (PAPER.md section 2): with the gates fixed, E[K^v] = d sigma^{2(d-1)} H.

Setting. The gates G_l(x) are computed once from a model's gating network and kept as constants. The
value network's weights are drawn i.i.d. with mean 0 and variance sigma^2 (+-sigma "bernoulli" or
N(0, sigma^2) "gaussian"), sigma = c / sqrt(w) in every layer, the first and the readout included, and
K^v(x, x') = sum over the value weights theta of dy/dtheta(x) dy/dtheta(x') (output 0, no biases).

Derivation. y(x) = sum_p phi_x(p) v(p), v(p) the product of the n(p) weights on path (class) p. For a
weight theta of p, dy/dtheta collects phi_x(p) times the other n(p) - 1 weights of p. Independent
zero-mean weights have E[product] = 0 unless every weight appears an even number of times, and
dy/dtheta(x) dy/dtheta(x') is a sum of products v(p)/theta * v(p')/theta with each weight at most once
per path, so only p = p' survives (two path classes with the same weights are the same class; conv
weight sharing merges translated paths into one class). Each weight on p contributes
sigma^{2(n(p)-1)} phi_x(p) phi_x'(p):

    E[K^v] = sum_p n(p) sigma^{2(n(p)-1)} phi_x(p) phi_x'(p) = sum_n n sigma^{2(n-1)} H_n,

H_n the NPK of the paths with n weights (`path_length_npks`). Without skips every path has d weights and
E[K^v] = d sigma^{2(d-1)} H; with skips H_n gathers the sub-network NPKs H^J with d_J = n.

The check. (a) Expectation, on the given model's gates: over value-weight draws, the projection ratio
r = <K^v, E>_F / <E, E>_F (E the claimed E[K^v]) has mean exactly 1, r being linear in K^v. Pass iff
|mean(r) - 1| <= z * stderr; statistic |mean(r) - 1| / stderr, tolerance z. Power: a claim off by a
constant factor c gives r / c, so it fails when c lies outside mean(r) +- z stderr. The check therefore
draws at least `draws` times and then on, 100 draws at a time, until z * stderr <= `resolution` or the
mean lies beyond 2 z standard errors of 1 (or `max_draws`: then it fails, unresolved): at the default resolution 0.025 a constant 5% off lies about
6 standard errors out, whatever the width (a narrow net's draws scatter more, so it needs more of them). (b) Concentration:
for each w in `widths` a fresh model of the same gating kind with every hidden layer rebuilt at w units
(or channels), a seeded He-initialised gating network (biases dropped, no block-output scaling), gates
computed once; the single-draw relative deviation ||K^v - E||_F / ||E||_F, averaged over `sweep_draws`
draws, should fall like w^(-1/2): pass iff the log-log slope is within `slope_tolerance` of -1/2.
The result passes iff (a) and (b) pass.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import graph
from ..kernels.npk import GatePair, kernel_gates, overlap, pair_rule
from ..models.base import GATINGS, GatedNet, check_input
from ..models.init import he_init
from .result import CheckResult

INITS = ("bernoulli", "gaussian")


def theorem_weight(n: int, s: float) -> float:
    """The weight of a path with n weights in E[K^v], s = sigma^2: n s^(n-1)."""
    return n * s ** (n - 1)


# ------------------------------------------------------------------------------ exact side
def path_length_npks(model: GatedNet, X: torch.Tensor,
                     gates: Sequence[torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """{n: H_n}, H_n(x, x') = sum over the paths with n weights of phi_x(p) phi_x'(p); sum_n H_n = H.

    The NPK pair propagation of `npk.kernels.npk`, with every kernel indexed by path length: a weight
    op (Linear, Readout) raises the index by one, a Residual adds the skip's kernels and the block's.
    gates: one tensor per gated layer for X (default: `model.gates(X)`).
    """
    unread = [op for op in graph.walk(model.ops)
              if isinstance(op, graph.MaxPool) or isinstance(op, graph.Residual) and op.skip]
    if unread or graph.kept_gates(model.ops):
        raise ValueError("path_length_npks reads identity skips and gates right after weight layers only, not "
                         "max pools, skip branches with ops or a ReLU after a shortcut (use npk_gram for H)")
    X = check_input(X, model.input_shape, "X")
    gates = kernel_gates(model, X, None) if gates is None else gates
    V = model.value_stream_input(X)
    return _propagate_by_length(model.ops, {0: overlap(V, V)}, GatePair(gates, gates))


def _propagate_by_length(ops, kernels: dict[int, torch.Tensor], ctx) -> dict[int, torch.Tensor]:
    for op in ops:
        if isinstance(op, graph.Residual):
            through = _propagate_by_length(op.block, kernels, ctx)
            kernels = {n: kernels.get(n, 0) + through.get(n, 0) for n in kernels.keys() | through.keys()}
        else:
            step = isinstance(op, (graph.Linear, graph.Readout))
            kernels = {n + step: pair_rule(op, M, ctx) for n, M in kernels.items()}
    return kernels


def expected_value_ntk(model: GatedNet, X: torch.Tensor, sigma: float,
                       gates: Sequence[torch.Tensor] | None = None,
                       path_weight: Callable[[int, float], float] = theorem_weight) -> torch.Tensor:
    """E[K^v] = sum_n path_weight(n, sigma^2) H_n with the gates fixed (default weight: n sigma^{2(n-1)})."""
    return sum(path_weight(n, sigma**2) * H for n, H in path_length_npks(model, X, gates).items())


# ------------------------------------------------------------------------------ sampled side
class _FixedGateValueNet(nn.Module):
    """The value network of `model` reading gates given as constants: y = run(ops, v(x), q -> G_l * q)."""

    def __init__(self, model: GatedNet):
        super().__init__()
        self.layers = model.value_layers       # the modules the op list calls: their parameters
        self.ops, self.value_input = model.ops, model.value_input

    def forward(self, X: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
        V = X if self.value_input == "x" else torch.ones_like(X)
        return graph.run(self.ops, V, lambda layer, q: gates[layer] * q)


def _value_ntk(net: _FixedGateValueNet, X: torch.Tensor, gates, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """K^v = J J^T, J the Jacobian of output 0 with respect to the value weights `params`."""
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(net, p, (X, gates))[:, 0])(params)
    return sum(j.reshape(len(X), -1) @ j.reshape(len(X), -1).T for j in jac.values())


def _draw(net: nn.Module, sigma: float, init: str, generator: torch.Generator, like: torch.Tensor):
    """i.i.d. value weights: +-sigma (bernoulli) or N(0, sigma^2) (gaussian)."""
    params = {}
    for name, p in net.named_parameters():
        z = torch.randn(p.shape, generator=generator, dtype=like.dtype)
        params[name] = (sigma * (torch.sign(z) if init == "bernoulli" else z)).to(like.device)
    return params


# ------------------------------------------------------------------------------ width sweep
_REBUILT = {g: type(f"Rebuilt_{g}", (GatedNet,), {"gating": g, "__doc__": f"A rebuilt gated net, gating {g!r}."})
            for g in GATINGS}


def at_width(model: GatedNet, width: int, seed: int) -> GatedNet:
    """A fresh, bias-free model of `model`'s gating kind, gate kind and value input with every hidden
    weight layer at `width` units (dense) or channels (conv); He-initialised under torch seed `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.zeros(1, *model.input_shape)
        ops, _ = _rebuild(model.ops, width, probe)
        net = _REBUILT[model.gating](ops, model.input_shape, gate=model.gate_kind, beta=model.beta,
                                     eps=model.eps, value_input=model.value_input)
        he_init(net)
    return net


def _rebuild(ops, width: int, h: torch.Tensor):
    """The op list with fresh weight modules at `width`; h is a probe that tracks the stream's shape."""
    out = []
    for op in ops:
        if isinstance(op, graph.Linear):
            m = op.module
            module = (nn.Linear(h.shape[1], width, bias=False) if not op.is_conv else
                      type(m)(h.shape[1], width, m.kernel_size, padding=m.padding, padding_mode=m.padding_mode,
                              bias=False))
            out.append(graph.Linear(module))
            h = module(h)
        elif isinstance(op, graph.Readout):
            out.append(graph.Readout(nn.Linear(h.shape[1], op.module.out_features, bias=False)))
        elif isinstance(op, graph.Residual):
            if h.shape[1] != width:
                raise ValueError(f"a residual block reads {h.shape[1]} channels, so its skip cannot be rebuilt "
                                 f"at width {width}; put a weight layer (a stem) before the first block")
            out.append(graph.Residual(_rebuild(op.block, width, h)[0]))
        elif isinstance(op, graph.Gate):
            out.append(graph.Gate(op.layer))
        else:
            out.append(copy.copy(op))
            h = op.forward(h)
    return out, h


# ------------------------------------------------------------------------------ the check
def ntk_vs_npk(model: GatedNet, X: torch.Tensor, widths: Sequence[int] = (16, 64, 256, 1024), draws: int = 200,
               init: str = "bernoulli", c: float = math.sqrt(2), seed: int = 0, z: float = 3.0,
               resolution: float | None = 0.025, max_draws: int = 20_000,
               sweep_draws: int = 4, slope_tolerance: float = 0.15,
               path_weight: Callable[[int, float], float] = theorem_weight,
               progress: bool | None = None) -> CheckResult:
    """Check E[K^v] = sum_n n sigma^{2(n-1)} H_n (= d sigma^{2(d-1)} H without skips) with fixed gates,
    and the w^(-1/2) concentration of a single draw (module docstring: (a) and (b)).

    model: a bias-free gated model; its gates on X are computed once. sigma = c / sqrt(w0), w0 the units
    (channels) of the model's first weight layer. widths: the sweep, () to skip it (else >= 2 widths).
    draws: the least number of draws; then on until z * stderr <= resolution, at most max_draws
    (resolution None: exactly `draws`). path_weight(n, sigma^2): the claimed weight of a path with n
    weights, to test other claims.
    details: ratio_passed, ratio_mean, ratio_stderr, ratio_ci, ratios, draws, resolved, path_lengths, sigma,
    and for the sweep widths, deviation (mean over sweep_draws), deviation_stderr, slope, intercept,
    slope_passed.

    Example:
        >>> ntk_vs_npk(DGN(5, [64] * 3).double(), torch.randn(6, 5, dtype=torch.float64), widths=()).passed
        True
    """
    _check_arguments(model, widths, draws, init, c, z, sweep_draws)
    if resolution is not None and not (resolution > 0 and isinstance(max_draws, int) and max_draws >= draws):
        raise ValueError(f"resolution must be None or > 0 and max_draws an int >= draws ({draws}), got "
                         f"resolution={resolution!r}, max_draws={max_draws!r}")
    X = check_input(X, model.input_shape, "X")
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=draws + len(widths) * sweep_draws, desc="ntk_vs_npk draws", unit="draw",
               disable=None if progress is None else not progress)

    def sample(net: GatedNet, sigma: float, n: int):
        gates = kernel_gates(net, X, None)
        E = expected_value_ntk(net, X, sigma, gates, path_weight)
        if not E.abs().max() > 0:
            raise ValueError("the claimed E[K^v] is zero for every pair of X (no active path); use other inputs")
        value_net = _FixedGateValueNet(net)
        for _ in range(n):
            bar.update()
            yield _value_ntk(value_net, X, gates, _draw(value_net, sigma, init, generator, X)), E

    w0 = graph.modules(model.ops)[0].weight.shape[0]
    sigma = c / math.sqrt(w0)
    limit = draws if resolution is None else max_draws
    ratios = []
    for K, E in sample(model, sigma, limit):
        ratios.append(float((K * E).sum() / (E * E).sum()))
        n = len(ratios)
        if n >= draws and (n == limit or (n - draws) % 100 == 0 and _settled(ratios, z, resolution)):
            break
    ratios = np.array(ratios)
    mean, stderr = float(ratios.mean()), float(ratios.std(ddof=1) / math.sqrt(len(ratios)))
    statistic = abs(mean - 1) / max(stderr, 1e-12)
    resolved = resolution is None or z * stderr <= resolution
    details = {"ratio_passed": bool(statistic <= z and resolved), "ratio_mean": mean, "ratio_stderr": stderr,
               "ratio_ci": [mean - z * stderr, mean + z * stderr], "resolution": resolution, "resolved": resolved,
               "z": z, "draws": len(ratios), "ratios": ratios, "init": init, "c": c, "sigma": sigma, "width": w0,
               "path_lengths": sorted(path_length_npks(model, X)), "n_samples": len(X),
               "widths": [int(w) for w in widths], "sweep_draws": sweep_draws, "slope_tolerance": slope_tolerance}
    slope_ok = True
    if widths:
        deviations = np.array([[float((K - E).norm() / E.norm()) for K, E in
                                sample(at_width(model, w, seed + 1 + i), c / math.sqrt(w), sweep_draws)]
                               for i, w in enumerate(widths)])
        slope, intercept = np.polyfit(np.log(widths), np.log(deviations.mean(1)), 1)
        slope_ok = bool(abs(slope + 0.5) <= slope_tolerance)
        details.update(deviation=deviations.mean(1), deviation_stderr=deviations.std(1) / math.sqrt(sweep_draws),
                       slope=float(slope), intercept=float(intercept), slope_passed=slope_ok)
    bar.close()
    return CheckResult(
        name="ntk_vs_npk",
        claim="with fixed gates E[K^v] = sum_n " + ("n sigma^(2(n-1)) H_n (= d sigma^(2(d-1)) H without skips)"
                                                   if path_weight is theorem_weight else "path_weight(n, sigma^2) H_n")
              + f": mean of <K^v, E>/<E, E> over {len(ratios)} {init} draws within {z} standard errors of 1"
              + (f" (draws until z stderr <= {resolution})" if resolution is not None else "")
              + (f"; single-draw deviation ~ w^(-1/2): log-log slope within {slope_tolerance} of -1/2"
                 if widths else ""),
        statistic=statistic, tolerance=z, passed=details["ratio_passed"] and slope_ok, details=details,
        plotter=_plot)


def _settled(ratios: list[float], z: float, resolution: float) -> bool:
    """Enough draws: the interval mean +- z stderr is narrower than +- resolution, or lies beyond 2 z
    standard errors of 1 (a clear failure: more draws would only narrow it further)."""
    stderr = np.std(ratios, ddof=1) / math.sqrt(len(ratios))
    return z * stderr <= resolution or abs(np.mean(ratios) - 1) > 2 * z * stderr


def _check_arguments(model, widths, draws, init, c, z, sweep_draws) -> None:
    if not isinstance(model, GatedNet):
        raise TypeError(f"ntk_vs_npk needs an npk gated model (npk.models.*), got {type(model).__name__}")
    if any(getattr(op, "has_bias", False) for op in graph.walk(model.ops)):
        raise ValueError("ntk_vs_npk needs a value network without biases (a bias starts a shorter path "
                         "with its own parameter, outside the identity); build the model with bias=False")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(draws, int) or draws < 2 or not isinstance(sweep_draws, int) or sweep_draws < 1:
        raise ValueError(f"need draws >= 2 (for a standard error) and sweep_draws >= 1, got {draws!r}, {sweep_draws!r}")
    if not (c > 0 and z > 0):
        raise ValueError(f"c and z must be positive, got c={c!r}, z={z!r}")
    widths = list(widths)
    if (len(widths) == 1 or any(not isinstance(w, int) or w < 1 for w in widths)
            or len(set(widths)) != len(widths)):
        raise ValueError(f"widths must be () (no sweep) or at least two distinct positive ints for a slope, "
                         f"got {widths}")


def _plot(result: CheckResult, ax) -> None:
    d = result.details
    label = f"mean <K,E>/<E,E> = {d['ratio_mean']:.4f} +- {d['z']:g} x {d['ratio_stderr']:.2g}"
    if not d["widths"]:
        ax.hist(d["ratios"], bins=30, color="tab:blue", alpha=0.7)
        ax.axvline(1.0, color="k", lw=1, label="claim: 1")
        ax.axvspan(*d["ratio_ci"], color="tab:orange", alpha=0.3, label=label)
        ax.set_xlabel("per-draw ratio <K^v, E[K^v]> / <E[K^v], E[K^v]>")
        ax.set_ylabel("draws")
        ax.legend(fontsize=8)
        return
    w, dev = np.array(d["widths"], dtype=float), np.array(d["deviation"])
    ax.errorbar(w, dev, yerr=d["deviation_stderr"], fmt="o", label="single draw, mean over draws")
    ax.plot(w, np.exp(d["intercept"]) * w ** d["slope"], "-", label=f"fit: slope {d['slope']:.3f}")
    ax.plot(w, dev[0] * (w / w[0]) ** -0.5, "--", color="grey", label="slope -1/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width w (sigma = c / sqrt(w))")
    ax.set_ylabel("||K^v - E K^v||_F / ||E K^v||_F")
    ax.legend(fontsize=8, title=label, title_fontsize=8)
