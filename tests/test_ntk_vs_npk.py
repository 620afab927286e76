"""NTK vs NPK with fixed gates: E[K^v] = d sigma^{2(d-1)} H (npk.theory.ntk_vs_npk)."""
import importlib
import itertools
import math

import pytest
import torch

from npk.kernels.npk import kernel_gates, npk_gram
from npk.models import DGN, DLGN, DNN
from npk.models.conv import ConvDGN
from npk.models.resnet import ResDGN
from npk.theory.ntk_vs_npk import (_FixedGateValueNet, _value_ntk, at_width, expected_value_ntk, ntk_vs_npk,
                                   path_length_npks, theorem_weight)
from npk.theory.structure import subnetwork_npk

ntk_module = importlib.import_module("npk.theory.ntk_vs_npk")


def conv_gap(channels, **opts):
    return ConvDGN(1, channels, padding="circular", pooling="gap", d_out=1, spatial_dims=1, input_size=5, **opts)


def full_depth_weight(depth):
    """The wrong claim for skips: every path weighs like a full-depth one."""
    return lambda n, s: depth * s ** (depth - 1)


def wrong_weights():
    return {"(d-1) sigma^(2(d-1))": lambda n, s: (n - 1) * s ** (n - 1), "d sigma^(2d)": lambda n, s: n * s**n}


# ------------------------------------------------------------------------------ exact side
def test_path_length_npks_split_the_npk():
    torch.manual_seed(0)
    X = torch.randn(5, 3, dtype=torch.float64)
    fc = DGN(3, [4, 4, 4])
    Hn = path_length_npks(fc, X)
    assert sorted(Hn) == [4] and torch.allclose(Hn[4], npk_gram(fc, X), rtol=1e-12, atol=0)
    res = ResDGN(3, 4, n_blocks=2)                       # stem, two one-layer blocks, readout: 2, 3 or 4 weights
    Hn = path_length_npks(res, X)
    assert sorted(Hn) == [2, 3, 4]
    assert torch.allclose(Hn[3], subnetwork_npk(res, X, keep=[0]) + subnetwork_npk(res, X, keep=[1]), rtol=1e-12)
    assert torch.allclose(Hn[4], subnetwork_npk(res, X, keep=[0, 1]), rtol=1e-12)
    assert torch.allclose(sum(Hn.values()), npk_gram(res, X), rtol=1e-12, atol=0)


@pytest.mark.parametrize("make, d_in", [
    (lambda: DGN(2, [2, 1]), (2,)),                      # 7 weights, d = 3
    (lambda: conv_gap([1, 1], kernel_size=3), (1, 5)),   # 7 weights with sharing, d = 3
    (lambda: ConvDGN(1, [1, 1], padding="zero", pooling="flatten", pool_every=[0], d_out=1, spatial_dims=1,
                     input_size=4), (1, 4)),             # zero padding, AvgPool(2), flatten: 8 weights
    (lambda: ResDGN(1, 2, n_blocks=1), (1,)),            # 8 weights, paths of 2 and 3 weights
], ids=["fc", "conv-gap", "conv-zero-avgpool-flatten", "residual"])
def test_expectation_is_exact_over_every_sign_pattern(make, d_in):
    """Bernoulli +-sigma weights: the mean of K^v over all 2^P sign patterns is E[K^v] to rounding."""
    torch.manual_seed(1)
    model = make().double()
    X = torch.randn(4, *d_in, dtype=torch.float64)
    gates = kernel_gates(model, X, None)
    net = _FixedGateValueNet(model)
    shapes = {name: p.shape for name, p in net.named_parameters()}
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=sum(s.numel() for s in shapes.values()))),
                         dtype=torch.float64)
    sigma, params, start = 0.7, {}, 0
    for name, shape in shapes.items():
        params[name] = sigma * signs[:, start:start + shape.numel()].reshape(-1, *shape)
        start += shape.numel()
    mean = torch.func.vmap(lambda p: _value_ntk(net, X, gates, p))(params).mean(0)
    E = expected_value_ntk(model, X, sigma, gates)
    scale = E.abs().max()
    assert float((mean - E).abs().max() / scale) < 1e-12
    for weight in wrong_weights().values():
        assert float((mean - expected_value_ntk(model, X, sigma, gates, weight)).abs().max() / scale) > 0.1


# ------------------------------------------------------------------------------ the check
def test_fc_expectation_within_ci_and_wrong_constants_outside():
    torch.manual_seed(2)
    X = torch.randn(8, 5, dtype=torch.float64)
    model = DGN(5, [16] * 3)
    result = ntk_vs_npk(model, X, widths=(), draws=200, resolution=None)
    d = result.details
    assert result.passed and abs(d["ratio_mean"] - 1) <= 3 * d["ratio_stderr"] and d["path_lengths"] == [4]
    assert d["ratio_stderr"] < 0.05 and d["sigma"] == pytest.approx(math.sqrt(2 / 16))
    for name, weight in wrong_weights().items():
        wrong = ntk_vs_npk(model, X, widths=(), draws=100, resolution=None, path_weight=weight)
        assert not wrong.passed and wrong.statistic > 2 * wrong.tolerance, name


def test_gaussian_weights_on_a_dnn_s_own_gates():
    """A DNN's gates come from its own weights; kept fixed, fresh Gaussian value weights obey the identity."""
    torch.manual_seed(3)
    X = torch.randn(8, 5, dtype=torch.float64)
    result = ntk_vs_npk(DNN(5, [16] * 3), X, widths=(), draws=150, resolution=None, init="gaussian", seed=1)
    assert result.passed, result


def test_fc_deviation_falls_like_inverse_square_root_width():
    torch.manual_seed(4)
    X = torch.randn(8, 5, dtype=torch.float64)
    result = ntk_vs_npk(DLGN(5, [16] * 3), X, widths=(16, 64, 256), draws=20, resolution=None, sweep_draws=4)
    d = result.details
    assert -0.65 <= d["slope"] <= -0.35 and d["slope_passed"] and result.passed
    assert d["deviation"][0] > d["deviation"][1] > d["deviation"][2]


def test_conv_gap_expectation_and_wrong_constant():
    torch.manual_seed(5)
    X = torch.randn(6, 1, 5, dtype=torch.float64)
    model = conv_gap([6, 6])
    assert ntk_vs_npk(model, X, widths=(), draws=150, resolution=None).passed
    wrong = ntk_vs_npk(model, X, widths=(), draws=150, resolution=None, path_weight=wrong_weights()["(d-1) sigma^(2(d-1))"])
    assert not wrong.passed


def test_residual_expectation_and_full_depth_claim_fails():
    """E[K^v] = sum_J d_J sigma^{2(d_J - 1)} H^J; weighing every path like a full-depth one fails."""
    torch.manual_seed(6)
    X = torch.randn(6, 4, dtype=torch.float64)
    model = ResDGN(4, 8, n_blocks=2)
    result = ntk_vs_npk(model, X, widths=(), draws=150, resolution=None)
    assert result.passed and result.details["path_lengths"] == [2, 3, 4]
    assert not ntk_vs_npk(model, X, widths=(), draws=150, resolution=None, path_weight=full_depth_weight(4)).passed


def test_at_width_rebuilds_every_hidden_layer():
    model = conv_gap([3, 5], dense_widths=(7,))
    net = at_width(model, 9, seed=0)
    assert [m.weight.shape[0] for m in net.value_layers] == [9, 9, 9, 1]
    assert net.gating == "relu" and [m.weight.shape[0] for m in net.gating_layers] == [9, 9, 9]
    same = at_width(model, 9, seed=0)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(net.gating_layers, same.gating_layers))
    res = at_width(ResDGN(3, 4, n_blocks=2), 6, seed=0)
    assert res.gates(torch.randn(2, 3))[2].shape == (2, 6)


def test_plot_shows_sweep_fit_and_reference(tmp_path):
    torch.manual_seed(7)
    X = torch.randn(5, 3, dtype=torch.float64)
    result = ntk_vs_npk(DGN(3, [8, 8]), X, widths=(8, 32), draws=10, sweep_draws=2)
    fig = result.plot(path=tmp_path / "ntk_vs_npk.png")
    assert (tmp_path / "ntk_vs_npk.png").stat().st_size > 0
    assert len(fig.axes[0].lines) >= 3          # fit, -1/2 reference (and the error bars' lines)
    assert result.to_dict()["details"]["widths"] == [8, 32]


def test_bad_input_is_named():
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match="without biases"):
        ntk_vs_npk(DGN(3, [4], bias=True), X, widths=())
    with pytest.raises(ValueError, match="init must be one of"):
        ntk_vs_npk(DGN(3, [4]), X, widths=(), init="uniform")
    with pytest.raises(ValueError, match="at least two distinct"):
        ntk_vs_npk(DGN(3, [4]), X, widths=(16,))
    with pytest.raises(ValueError, match="draws >= 2"):
        ntk_vs_npk(DGN(3, [4]), X, widths=(), draws=1, resolution=None)
    with pytest.raises(TypeError, match="gated model"):
        ntk_vs_npk(torch.nn.Linear(3, 1), X)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        ntk_vs_npk(DGN(3, [4]), torch.randn(4, 2), widths=())
    with pytest.raises(ValueError, match="stem"):
        at_width(ResDGN(3, 3, n_blocks=1, stem=False), 5, seed=0)


def test_fixed_gate_value_ntk_matches_ntk_gram():
    """On a DGN's own value weights (its gates do not depend on them) K^v is ntk_gram's value NTK of output 0."""
    from npk.kernels.ntk import ntk_gram
    torch.manual_seed(8)
    for model in (DGN(3, [5, 4], d_out=2).double(), ResDGN(3, 4, n_blocks=2).double(), conv_gap([3, 2]).double()):
        X = torch.randn(5, *model.input_shape, dtype=torch.float64)
        net = _FixedGateValueNet(model)
        ours = _value_ntk(net, X, kernel_gates(model, X, None), {k: v.detach() for k, v in net.named_parameters()})
        reference = ntk_gram(model, X, params="value", outputs="full")[:, :, 0, 0]
        assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12 * reference.abs().max())


def plant(monkeypatch, error):
    """Claim E' = error(E) in place of E: every H_n of `path_length_npks` passed through `error` (entrywise
    scalings, so error(sum_n w_n H_n) = sum_n w_n error(H_n)); the sampled K^v is untouched."""
    exact = ntk_module.path_length_npks
    monkeypatch.setattr(ntk_module, "path_length_npks",
                        lambda *args, **kwargs: {n: error(H) for n, H in exact(*args, **kwargs).items()})


def scaled(diagonal=1.0, off_diagonal=1.0, pair=None, factor=1.0):
    def error(H):
        eye = torch.eye(len(H), dtype=H.dtype)
        H = H * (diagonal * eye + off_diagonal * (1 - eye))
        if pair is not None:
            H = H.clone()
            H[pair], H[pair[::-1]] = factor * H[pair], factor * H[pair[::-1]]
        return H
    return error


def median_pair(H):
    """The off-diagonal pair (i, j) whose normalised |H(i, j)| / sqrt(H(i, i) H(j, j)) is the median one."""
    i, j = torch.triu_indices(len(H), len(H), 1)
    size = H[i, j].abs() / (H[i, i] * H[j, j]).sqrt()
    k = int(size.argsort()[len(size) // 2])
    return int(i[k]), int(j[k])


def test_at_its_defaults_the_check_passes_the_truth_and_fails_every_planted_shape_error_for_seeds_0_to_9(monkeypatch):
    """16 x 16 Gram, positive inputs (like pixels): the true kernel passes; a constant 5% error fails on the
    scale, the diagonal or the off-diagonal x 1.05 on the shape, and one entry pair x 1.2 (the median-sized
    pair) on its entry, for every seed. Measured z (tolerance 4.27): truth <= 3.4; planted errors >= 8.5."""
    torch.manual_seed(0)
    X = torch.rand(16, 5, dtype=torch.float64)
    model = DGN(5, [64]).double()
    pair = median_pair(npk_gram(model, X))
    for seed in range(10):
        truth = ntk_vs_npk(model, X, widths=(), seed=seed)
        d = truth.details
        assert truth.passed and d["resolved"] and truth.statistic <= truth.tolerance, (seed, truth)
        assert truth.tolerance == pytest.approx(4.2698, abs=1e-3) and d["n_statistics"] == 2 + 16 * 17 // 2
        low, high = d["ratio_ci"]
        assert 1 / 1.05 < low <= 1 <= high < 1.05, (seed, d["ratio_ci"])
    cases = {"constant x 1.05": (scaled(1.05, 1.05), "scale_z"), "diagonal x 1.05": (scaled(diagonal=1.05), "shape_z"),
             "off-diagonal x 1.05": (scaled(off_diagonal=1.05), "shape_z"),
             "one entry pair x 1.2": (scaled(pair=pair, factor=1.2), "entry_z_max")}
    for name, (error, caught_by) in cases.items():
        with monkeypatch.context() as m:
            plant(m, error)
            for seed in range(10):
                wrong = ntk_vs_npk(model, X, widths=(), seed=seed)
                d = wrong.details
                assert not wrong.passed and d[caught_by] > wrong.tolerance, (name, seed, d[caught_by])
                assert name != "one entry pair x 1.2" or d["entry_worst"] == list(pair), (seed, d["entry_worst"])


def test_the_audit_s_off_diagonal_error_now_fails(monkeypatch):
    """The audit's case, off-diagonal x 1.05 on 6 Gaussian inputs, passed the old projection ratio (z = 2.05);
    the shape statistic sees it (measured: z = 8.6)."""
    torch.manual_seed(0)
    X = torch.randn(6, 5, dtype=torch.float64)
    plant(monkeypatch, scaled(off_diagonal=1.05))
    wrong = ntk_vs_npk(DGN(5, [64] * 3).double(), X, widths=(), seed=0)
    assert not wrong.passed and wrong.details["shape_z"] > wrong.tolerance
