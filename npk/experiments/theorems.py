"""theorems: every theorem check of `npk.theory` in one report, in float64.

    duality                 f(x) = <phi_x, v> and npk_gram = Phi Phi^T, by path enumeration on tiny nets
    ntk_vs_npk              with fixed gates E[K^v] = d sigma^(2(d-1)) H (FC, conv-GAP, residual): the mean
                            projection ratio over value-weight draws and its confidence interval, and the
                            w^(-1/2) fall of one draw's deviation (log-log slope against width)
    rotation_invariance     circular conv + GAP: H(x, rot x') = H(x, x') = H(rot x, rot x'), on random
                            1-D / 2-D inputs and on real images (digits 8x8 by default)
    ensemble_decomposition  identity skips: H = sum over the 2^b block subsets J of H^J
    layer_permutation       FC nets of equal widths: permuting the layers' gates leaves H unchanged

Cases where a theorem's hypotheses do not hold are run too and must fail: zero padding and a flatten
head (rotation), a constant without the factor d (NTK vs NPK), and a conv net (layer permutation). Each check is cached, so a rerun
redoes only the checks it had not finished.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .. import models
from ..theory.duality import duality
from ..theory.layer_permutation import layer_permutation
from ..theory.ntk_vs_npk import ntk_vs_npk
from ..theory.result import CheckResult
from ..theory.structure import ensemble_decomposition, rotation_invariance
from .base import experiment
from .common import load_data

SHORT_CLAIMS = {
    "duality": "f(x) = <phi_x, v>; H = Phi Phi^T",
    "ntk_vs_npk": "E[K^v] = d sigma^(2(d-1)) H; one draw off by ~ w^(-1/2)",
    "rotation_invariance": "H(x, rot x') = H(x, x') = H(rot x, rot x')",
    "ensemble_decomposition": "H = sum over block subsets J of H^J",
    "layer_permutation": "H unchanged when the layers' gates are permuted",
}


@dataclass(frozen=True)
class Case:
    """One theorem check on one model: `expected` is True where the theorem applies (the check must
    pass) and False where a hypothesis is broken on purpose (the check must fail)."""

    check: str
    slug: str
    label: str
    expected: bool
    run: Callable[[], CheckResult]


def _model(seed: int, make) -> models.GatedNet:
    torch.manual_seed(seed)
    return make().double()


def _inputs(model: models.GatedNet, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *model.input_shape), generator=generator, dtype=torch.float64)


def _image_shifts(spatial: tuple[int, ...], count: int | None, seed: int) -> list[tuple[int, ...]] | None:
    """None (every circular shift) or `count` distinct shifts drawn with `seed`, shift 0 included."""
    shifts = list(itertools.product(*map(range, spatial)))
    if count is None or count >= len(shifts):
        return None
    picked = np.random.default_rng(seed).choice(np.arange(1, len(shifts)), count - 1, replace=False)
    return [shifts[0]] + [shifts[i] for i in sorted(picked)]


def cases(cfg: dict, images: torch.Tensor, image_label: str) -> list[Case]:
    """The checks of the report, in order (models built lazily, inside each Case's run)."""
    seed, n = cfg["seed"], cfg["n_samples"]
    w, sweep = cfg["ntk_widths"][0], dict(widths=tuple(cfg["ntk_widths"]), draws=cfg["ntk_draws"],
                                         sweep_draws=cfg["ntk_sweep_draws"], seed=seed, progress=False)

    def on_random(check, make, **opts):
        def run():
            model = _model(seed, make)
            return check(model, _inputs(model, n, seed + 1), **opts)
        return run

    def conv(cls, spatial_dims, padding="circular", pooling="gap", width=3, **opts):
        return lambda: cls(2 if spatial_dims == 1 else 1, [width, width], padding=padding, pooling=pooling,
                           d_out=1, spatial_dims=spatial_dims, input_size=8 if spatial_dims == 1 else 5, **opts)

    def on_images():
        model = _model(seed, lambda: models.ConvDLGN(images.shape[1], cfg["image_channels"], padding="circular",
                                                     d_out=1, spatial_dims=2, input_size=tuple(images.shape[2:]),
                                                     gate="soft"))
        shifts = _image_shifts(tuple(images.shape[2:]), cfg["image_shifts"], seed)
        return rotation_invariance(model, images, shifts=shifts, progress=False)

    out = [
        Case("duality", "duality-fc", "FC DLGN 4-4-3-2 with biases", True,
             on_random(duality, lambda: models.DLGN(4, [4, 3], 2, bias=True))),
        Case("duality", "duality-conv", "conv DNN 1-D, zero padding, GAP", True,
             on_random(duality, lambda: models.ConvDNN(2, [2, 2], padding="zero", d_out=2, spatial_dims=1,
                                                       input_size=5))),
        Case("duality", "duality-res", "residual DGN, stem + 2 blocks", True,
             on_random(duality, lambda: models.ResDGN(3, 3, 2, d_out=2))),
        Case("ntk_vs_npk", "ntk-fc", f"FC DNN, 3 hidden layers of {w}", True,
             on_random(ntk_vs_npk, lambda: models.DNN(4, [w] * 3, 1), **sweep)),
        Case("ntk_vs_npk", "ntk-conv", f"conv DNN 1-D (n = 8), {w} channels, zero padding, GAP", True,
             on_random(ntk_vs_npk, conv(models.ConvDNN, 1, padding="zero", width=w), **sweep)),
        Case("ntk_vs_npk", "ntk-res", f"residual DNN, stem + 2 blocks of {w}", True,
             on_random(ntk_vs_npk, lambda: models.ResDNN(4, w, 2, d_out=1), **sweep)),
        Case("ntk_vs_npk", "ntk-wrong", "FC DNN, claim without the factor d: E[K^v] = sigma^(2(d-1)) H", False,
             on_random(ntk_vs_npk, lambda: models.DNN(4, [w] * 3, 1), **{**sweep, "widths": ()},
                       path_weight=lambda length, s: s ** (length - 1))),
        Case("rotation_invariance", "rotation-1d", "circular conv DLGN 1-D (n = 8)", True,
             on_random(rotation_invariance, conv(models.ConvDLGN, 1), progress=False)),
        Case("rotation_invariance", "rotation-2d", "circular conv DLGN 2-D (5 x 5)", True,
             on_random(rotation_invariance, conv(models.ConvDLGN, 2), progress=False)),
        Case("rotation_invariance", "rotation-images", image_label, True, on_images),
        Case("rotation_invariance", "rotation-zero-padding", "zero-padding conv DLGN 1-D (n = 8)", False,
             on_random(rotation_invariance, conv(models.ConvDLGN, 1, padding="zero"), progress=False)),
        Case("rotation_invariance", "rotation-flatten", "circular conv DLGN 1-D, flatten head", False,
             on_random(rotation_invariance, conv(models.ConvDLGN, 1, pooling="flatten"), progress=False)),
    ]
    out += [Case("layer_permutation", "layer-permutation-fc", "FC DLGN 4 x 8, soft gates", True,
                 on_random(layer_permutation, lambda: models.DLGN(4, [8] * 4, 1, gate="soft"))),
            Case("layer_permutation", "layer-permutation-conv", "circular conv DGN 2-D (5 x 5), 3 x 3 channels", False,
                 on_random(layer_permutation, lambda: models.ConvDGN(1, [3] * 3, padding="circular", d_out=1,
                                                                     spatial_dims=2, input_size=5)))]
    out += [Case("ensemble_decomposition", f"ensemble-{b}", f"residual DLGN, stem + {b} one-layer block(s)", True,
                 on_random(ensemble_decomposition, lambda b=b: models.ResDLGN(4, 6, b, d_out=1)))
            for b in cfg["ensemble_blocks"]]
    return out


def run_case(run, case: Case) -> dict:
    """Run one check (cached under theorems-<slug>), save its figure, return its JSON-able record."""
    path = run.figure_path(f"theorems-{case.slug}.png")

    def compute():
        import matplotlib.pyplot as plt
        result = case.run()
        plt.close(result.plot(path=path))
        return {"check": case.check, "slug": case.slug, "case": case.label, "expected_pass": case.expected,
                "as_expected": bool(result.passed) == case.expected, "figure": path.name, **result.to_dict()}
    return run.cached(f"theorems-{case.slug}", compute)


@experiment(
    "theorems",
    "The dual view's identities hold exactly where their hypotheses hold (duality, E[K^v] = d sigma^(2(d-1)) H "
    "with fixed gates, rotational invariance of circular conv + GAP NPKs, the residual ensemble) and fail "
    "where a hypothesis is broken (zero padding, flatten head, a wrong constant).",
    defaults=dict(dataset="digits", data_root=None, n_train=None, n_test=None, seed=0, n_samples=6,
                  ntk_widths=[64, 256, 1024], ntk_draws=200, ntk_sweep_draws=8,
                  n_images=4, image_channels=[8, 8], image_shifts=None, ensemble_blocks=[1, 2, 3]),
    quick=dict(n_images=2, ntk_widths=[64, 256], ntk_sweep_draws=16,
               image_channels=[2, 2], image_shifts=12, ensemble_blocks=[1, 2]),
)
def theorems(cfg: dict, run) -> dict:
    if not cfg["ntk_widths"] or not cfg["ensemble_blocks"]:
        raise ValueError("ntk_widths and ensemble_blocks must be non-empty lists, e.g. [64, 256, 1024] and [1, 2, 3]")
    if cfg["image_shifts"] is not None and not (isinstance(cfg["image_shifts"], int) and cfg["image_shifts"] >= 2):
        raise ValueError(f"image_shifts must be None (every circular shift) or an int >= 2, got {cfg['image_shifts']!r}")
    data = load_data(cfg, flatten=False, run=run)
    if len(data.shape) != 3:
        raise ValueError(f"the image rotation check needs 2-D images (C, H, W); {cfg['dataset']} has shape {data.shape}")
    images = data.X_train[:cfg["n_images"]].double()
    image_label = (f"{len(images)} {cfg['dataset']} images {'x'.join(map(str, data.shape[1:]))}, "
                   f"circular conv DLGN {cfg['image_channels']}, soft gates")
    todo = cases(cfg, images, image_label)
    records = [run_case(run, case) for case in tqdm(todo, desc="theorem checks", unit="check", disable=not run.progress)]
    _report(run, records)
    n_ok = sum(r["as_expected"] for r in records)
    return {"theorems": {"checks": records, "n_checks": len(records), "n_as_expected": n_ok,
                         "all_as_expected": n_ok == len(records)}}


def _report(run, records: list[dict]) -> None:
    report = run.report
    report.heading("Theorem checks")
    report.paragraph("Each row is one check of `npk.theory` in float64: its statistic is compared with the stated "
                     "tolerance (PASS iff statistic <= tolerance; for ntk_vs_npk the width slope must also be "
                     "within its tolerance of -1/2). Rows marked *expected to fail* break a hypothesis of the "
                     "theorem on purpose: there a FAIL is the correct outcome.")
    rows = [[r["check"], r["case"], SHORT_CLAIMS[r["check"]], r["statistic"], r["tolerance"],
             "PASS" if r["passed"] else "FAIL", "pass" if r["expected_pass"] else "expected to fail",
             "yes" if r["as_expected"] else "NO"] for r in records]
    report.table(rows, ["check", "case", "claim", "statistic", "tolerance", "result", "expected", "as expected"],
                 floatfmt=".3g")
    ntk = [r for r in records if r["check"] == "ntk_vs_npk"]
    report.paragraph("NTK vs NPK: mean over draws of the projection ratio <K^v, E>/<E, E> (E the claimed E[K^v]) "
                     "with its z-standard-error interval, and the log-log slope of one draw's relative deviation "
                     "||K^v - E||_F / ||E||_F against the width (claim: -1/2).")
    report.table([[r["case"], r["details"]["ratio_mean"], *r["details"]["ratio_ci"], r["details"].get("slope"),
                   ", ".join(f"{w}: {d:.3f}" for w, d in zip(r["details"]["widths"], r["details"].get("deviation", [])))]
                  for r in ntk], ["case", "mean ratio", "CI low", "CI high", "slope", "deviation by width"],
                 floatfmt=".4f")
    ensemble = [r for r in records if r["check"] == "ensemble_decomposition"]
    report.paragraph("Residual ensemble: the share of H carried by the sub-networks through k blocks, "
                     "sum_{|J| = k} H^J / H averaged over pairs (the shares sum to 1).")
    report.table([[r["details"]["n_blocks"], r["details"]["decomposition_error"], r["details"]["reference_error"],
                   r["details"]["closed_form_error"],
                   ", ".join(f"k={k}: {s:.3f}" for k, s in enumerate(r["details"]["depth_share"]))]
                  for r in ensemble], ["blocks", "sum_J H^J error", "H^J vs path enumeration", "closed-form error",
                                       "depth shares"],
                 floatfmt=".3g")
    for r in records:
        report.figure(run.figure_path(r["figure"]), f"{r['check']} on {r['case']}: "
                      f"{'PASS' if r['passed'] else 'FAIL'} ({'expected' if r['as_expected'] else 'NOT expected'})")
    n_ok = sum(r["as_expected"] for r in records)
    failed = [f"{r['check']} ({r['case']})" for r in records if not r["as_expected"]]
    holds = [r["statistic"] / r["tolerance"] for r in records if r["expected_pass"]]
    broken = [r["statistic"] / r["tolerance"] for r in records if not r["expected_pass"]]
    text = (f"{n_ok} of {len(records)} checks came out as the theory says"
            + (f"; not as expected: {'; '.join(failed)}." if failed else "."))
    text += (f" Where the hypotheses hold, the largest statistic is {max(holds):.3g} times its tolerance; where one "
             f"is broken, the smallest is {min(broken):.3g} times its tolerance." if holds and broken else "")
    report.paragraph(text)
