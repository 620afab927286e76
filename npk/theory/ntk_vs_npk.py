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

The check. (a) Expectation, on the given model's gates, as a family of z statistics, each a mean over
value-weight draws k of a quantity linear in K^v_k with mean 0 under the claim, divided by its standard
error estimated from the same draws:
    scale    r_k = <K^v_k, E>_F / <E, E>_F - 1                   (a constant factor c off: mean 1/c - 1)
    shape    s_k = <diag K^v_k, diag E> / |diag E|^2 - <off K^v_k, off E> / |off E|^2
                                                  (off: the off-diagonal part; the diagonal and the off-
                                                   diagonal scaled differently: mean 1/c_diag - 1/c_off)
    entries  e_k(i, j) = K^v_k(i, j) - E(i, j), i <= j            (any error, one entry at a time)
The statistic is the largest |z| of the m = 2 + N(N+1)/2 of them; the tolerance is z_family =
Phi^{-1}(1 - alpha / (2 m)) with alpha = 2 Phi(-z) (Bonferroni: the true kernel fails with probability at
most alpha, 0.27% at z = 3). Power: the scale statistic sees a constant error, the shape statistic a
diagonal / off-diagonal imbalance (r_diag and r_off share much of their noise, so their difference is
resolved more finely than either), the entries a localised error: a relative error eps in entry (i, j)
lies eps |E(i, j)| / se(i, j) standard errors out, so its power falls with the entry's size next to its
noise (details['entry_detectable_median']: the median over entries of z_family se(i, j) / |E(i, j)|, the
relative error at the threshold); smaller errors pass. The check draws at least `draws` times and then
on, 100 draws at a time, until z_family se <= `resolution` for both the scale and the shape statistic
(then a constant, diagonal-only or off-diagonal-only error of 2 x resolution lies 2 z_family standard
errors out), or the statistic exceeds 2 z_family (a clear failure), or `max_draws` (then it fails,
unresolved). The shape resolution costs draws where the off-diagonal of E is small next to its noise
(nearly orthogonal inputs). Draws are batched with torch.func.vmap. (b) Concentration:
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
from scipy.special import ndtr, ndtri
from torch import nn
from tqdm import tqdm

from .. import graph
from ..kernels.npk import GatePair, kernel_gates, overlap, pair_rule
from ..models.base import GATINGS, GatedNet, check_input
from ..models.init import he_init
from .result import CheckResult

INITS = ("bernoulli", "gaussian")
_BATCH_BYTES = 2**26       # the Jacobians of one vmap batch of draws
CHUNK = 100               # draws between two looks at the standard errors


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


def _value_ntks(net: _FixedGateValueNet, X: torch.Tensor, gates, sigma: float, init: str,
                generator: torch.Generator, count: int) -> torch.Tensor:
    """`count` draws of K^v, (count, N, N): i.i.d. value weights +-sigma (bernoulli) or N(0, sigma^2)
    (gaussian), the Jacobians of a batch of draws formed at once (torch.func.vmap) under _BATCH_BYTES."""
    n_params = sum(p.numel() for p in net.parameters())
    batch = max(1, min(count, _BATCH_BYTES // (len(X) * n_params * X.element_size())))
    out = []
    for start in range(0, count, batch):
        b = min(batch, count - start)
        params = {}
        for name, p in net.named_parameters():
            z = torch.randn((b, *p.shape), generator=generator, dtype=X.dtype)
            params[name] = (sigma * (torch.sign(z) if init == "bernoulli" else z)).to(X.device)
        out.append(torch.func.vmap(lambda q: _value_ntk(net, X, gates, q))(params))
    return torch.cat(out)


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
class _Family:
    """The expectation statistics of the module docstring, (a): per draw the scale r_k, the shape s_k (when
    E has a nonzero diagonal and off-diagonal) and the entries e_k(i, j), i <= j; running sums over draws."""

    def __init__(self, E: torch.Tensor):
        self.E = E
        self.rows, self.cols = torch.triu_indices(len(E), len(E))
        diag = torch.diag_embed(E.diagonal())
        parts = [E / (E * E).sum()]
        if diag.abs().max() > 0 and (E - diag).abs().max() > 0:
            parts.append(diag / (diag * diag).sum() - (E - diag) / ((E - diag) ** 2).sum())
        self.directions = torch.stack(parts)
        self.n, self.sums, self.squares, self.scale = 0, 0.0, 0.0, []

    @property
    def has_shape(self) -> bool:
        return len(self.directions) == 2

    @property
    def size(self) -> int:
        return len(self.directions) + len(self.rows)

    def add(self, K: torch.Tensor) -> None:
        """Tally a batch of draws K (B, N, N)."""
        projections = torch.einsum("bij,sij->bs", K, self.directions)
        projections[:, 0] -= 1
        values = torch.cat([projections, K[:, self.rows, self.cols] - self.E[self.rows, self.cols]], 1).double()
        self.n += len(K)
        self.sums = self.sums + values.sum(0)
        self.squares = self.squares + (values * values).sum(0)
        self.scale.extend((projections[:, 0] + 1).tolist())

    def mean_stderr(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sums / self.n
        variance = ((self.squares - self.n * mean**2) / (self.n - 1)).clamp(min=0)
        return mean, (variance / self.n).sqrt()

    def resolved(self, z_family: float, resolution: float) -> bool:
        """z_family stderr <= resolution for the scale and the shape statistics."""
        return bool((z_family * self.mean_stderr()[1][:len(self.directions)] <= resolution).all())

    def z(self) -> torch.Tensor:
        """|mean| / stderr per statistic (inf where a mean is nonzero with no spread, 0 where both are 0)."""
        mean, stderr = self.mean_stderr()
        return torch.where(stderr > 0, mean.abs() / stderr.clamp(min=1e-300),
                           torch.where(mean == 0, 0.0, math.inf))


def family_threshold(z: float, m: int) -> float:
    """Phi^{-1}(1 - alpha / (2 m)), alpha = 2 Phi(-z): m two-sided tests at family-wise level alpha."""
    return float(-ndtri(ndtr(-z) / m))


def ntk_vs_npk(model: GatedNet, X: torch.Tensor, widths: Sequence[int] = (16, 64, 256, 1024), draws: int = 200,
               init: str = "bernoulli", c: float = math.sqrt(2), seed: int = 0, z: float = 3.0,
               resolution: float | None = 0.025, max_draws: int = 20_000,
               sweep_draws: int = 4, slope_tolerance: float = 0.15,
               path_weight: Callable[[int, float], float] = theorem_weight,
               progress: bool | None = None) -> CheckResult:
    """Check E[K^v] = sum_n n sigma^{2(n-1)} H_n (= d sigma^{2(d-1)} H without skips) with fixed gates, on
    the whole Gram matrix, and the w^(-1/2) concentration of a single draw (module docstring: (a), (b)).

    model: a bias-free gated model; its gates on X are computed once. sigma = c / sqrt(w0), w0 the units
    (channels) of the model's first weight layer. widths: the sweep, () to skip it (else >= 2 widths).
    z: the family-wise level as a z value (false-fail rate 2 Phi(-z)); the tolerance is its Bonferroni
    threshold z_family over the 2 + N(N+1)/2 statistics. draws: the least number of draws; then on until
    z_family * stderr <= resolution for the scale and the shape statistics, at most max_draws (resolution
    None: exactly `draws`). path_weight(n, sigma^2): the claimed weight of a path with n weights, to test
    other claims. Cost: one Jacobian of N x (value parameters) per draw, batched.
    details: ratio_passed ((a) passed), ratio_mean (mean of <K^v, E>/<E, E>), ratio_stderr, ratio_ci
    (+- z_family stderr), ratios, scale_z, shape_mean, shape_stderr, shape_z, entry_z_max, entry_worst (i, j),
    entry_detectable_median, z_family, n_statistics, draws, resolved, path_lengths, sigma, and for the
    sweep widths, deviation (mean over sweep_draws), deviation_stderr, slope, intercept, slope_passed.

    Example:
        >>> ntk_vs_npk(DGN(5, [64] * 3).double(), torch.randn(6, 5, dtype=torch.float64), widths=()).passed
        True
    """
    _check_arguments(model, widths, draws, init, c, z, sweep_draws)
    if resolution is not None and not (resolution > 0 and isinstance(max_draws, int) and max_draws >= draws):
        raise ValueError(f"resolution must be None or > 0 and max_draws an int >= draws ({draws}), got "
                         f"resolution={resolution!r}, max_draws={max_draws!r}")
    X = check_input(X, model.input_shape, "X")
    bar = tqdm(total=draws + len(widths) * sweep_draws, desc="ntk_vs_npk draws", unit="draw",
               disable=None if progress is None else not progress)

    def claim_and_sampler(net: GatedNet, sigma: float, stream: int):
        """E and a sampler of K^v draws whose weights come from stream `stream` of `seed` (the sweep's
        draws do not depend on how many the expectation part took)."""
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
        gates = kernel_gates(net, X, None)
        E = expected_value_ntk(net, X, sigma, gates, path_weight)
        if not E.abs().max() > 0:
            raise ValueError("the claimed E[K^v] is zero for every pair of X (no active path); use other inputs")
        value_net = _FixedGateValueNet(net)

        def sample(count: int) -> torch.Tensor:
            bar.update(count)
            return _value_ntks(value_net, X, gates, sigma, init, generator, count)
        return E, sample

    w0 = graph.modules(model.ops)[0].weight.shape[0]
    sigma = c / math.sqrt(w0)
    E, sample = claim_and_sampler(model, sigma, 0)
    family = _Family(E)
    z_family = family_threshold(z, family.size)
    limit = draws if resolution is None else max_draws
    family.add(sample(draws))
    while family.n < limit and not _settled(family, z_family, resolution):
        family.add(sample(min(CHUNK, limit - family.n)))
    mean, stderr = family.mean_stderr()
    zs = family.z()
    statistic = float(zs.max())
    k = len(family.directions)
    resolved = resolution is None or family.resolved(z_family, resolution)
    entries = E[family.rows, family.cols].abs()
    detectable = torch.where(entries > 0, z_family * stderr[k:] / entries.clamp(min=1e-300), math.inf)
    worst = int(zs[k:].argmax())
    ratio_mean, ratio_stderr = 1 + float(mean[0]), float(stderr[0])
    details = {"ratio_passed": bool(statistic <= z_family and resolved), "ratio_mean": ratio_mean,
               "ratio_stderr": ratio_stderr, "ratio_ci": [ratio_mean - z_family * ratio_stderr,
                                                          ratio_mean + z_family * ratio_stderr],
               "scale_z": float(zs[0]),
               "shape_mean": float(mean[1]) if family.has_shape else None,
               "shape_stderr": float(stderr[1]) if family.has_shape else None,
               "shape_z": float(zs[1]) if family.has_shape else None,
               "entry_z_max": float(zs[k:].max()),
               "entry_worst": [int(family.rows[worst]), int(family.cols[worst])],
               "entry_detectable_median": float(detectable.median()),
               "resolution": resolution, "resolved": resolved, "z": z, "z_family": z_family,
               "n_statistics": family.size, "draws": family.n, "ratios": np.array(family.scale), "init": init,
               "c": c, "sigma": sigma, "width": w0, "path_lengths": sorted(path_length_npks(model, X)),
               "n_samples": len(X), "widths": [int(w) for w in widths], "sweep_draws": sweep_draws,
               "slope_tolerance": slope_tolerance}
    slope_ok = True
    if widths:
        deviations = []
        for i, w in enumerate(widths):
            E_w, sample_w = claim_and_sampler(at_width(model, w, seed + 1 + i), c / math.sqrt(w), 1 + i)
            deviations.append([float((K - E_w).norm() / E_w.norm()) for K in sample_w(sweep_draws)])
        deviations = np.array(deviations)
        slope, intercept = np.polyfit(np.log(widths), np.log(deviations.mean(1)), 1)
        slope_ok = bool(abs(slope + 0.5) <= slope_tolerance)
        details.update(deviation=deviations.mean(1), deviation_stderr=deviations.std(1) / math.sqrt(sweep_draws),
                       slope=float(slope), intercept=float(intercept), slope_passed=slope_ok)
    bar.close()
    return CheckResult(
        name="ntk_vs_npk",
        claim="with fixed gates E[K^v] = sum_n " + ("n sigma^(2(n-1)) H_n (= d sigma^(2(d-1)) H without skips)"
                                                   if path_weight is theorem_weight else "path_weight(n, sigma^2) H_n")
              + f": over {family.n} {init} draws, the scale <K^v, E>/<E, E>, the diagonal-vs-off-diagonal shape "
              f"and every entry of K^v - E within {z_family:.3g} standard errors of the claim (Bonferroni over "
              f"{family.size} statistics at level z = {z})"
              + (f", drawn until z_family stderr <= {resolution}" if resolution is not None else "")
              + (f"; single-draw deviation ~ w^(-1/2): log-log slope within {slope_tolerance} of -1/2"
                 if widths else ""),
        statistic=statistic, tolerance=z_family, passed=details["ratio_passed"] and slope_ok, details=details,
        plotter=_plot)


def _settled(family: _Family, z_family: float, resolution: float) -> bool:
    """Enough draws: z_family stderr <= resolution for the scale and shape statistics, or some statistic
    beyond 2 z_family (a clear failure: more draws would only push it further out)."""
    return family.resolved(z_family, resolution) or float(family.z().max()) > 2 * z_family


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
    label = (f"mean <K,E>/<E,E> = {d['ratio_mean']:.4f} +- {d['z_family']:.3g} x {d['ratio_stderr']:.2g}; "
             f"max entry |z| {d['entry_z_max']:.2f}")
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
