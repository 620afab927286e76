"""Structure theorems: rotational invariance of circular conv + GAP NPKs, the rotation formula, and the
residual ensemble decomposition (npk.theory.structure)."""
import itertools

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from npk import graph
from npk.kernels.npk import npk_gram
from npk.models.conv import ConvDGN, ConvDLGN, ConvDNN
from npk.models.fc import DNN
from npk.models.resnet import ResDLGN, ResDNN
from npk.theory.structure import (active_path_counts, ensemble_closed_form, ensemble_decomposition, rotate,
                                  rotation_formula_npk, rotation_invariance, subnetwork_npk, subnetwork_ops)

SIZES = {1: 7, 2: 4}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def conv(cls=ConvDNN, spatial_dims=1, padding="circular", pooling="gap", **opts):
    """A tiny float64 conv net: 2 gated conv layers of 2 channels (kernel 3)."""
    return cls(2, [2, 2], padding=padding, pooling=pooling, d_out=1, spatial_dims=spatial_dims,
               input_size=SIZES[spatial_dims], **opts).double()


def inputs(model, n=4):
    return torch.randn(n, *model.input_shape, dtype=torch.float64)


def labelled(fig):
    ax = fig.axes[0]
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


# -------------------------------------------------------------------------------- rotation
def test_rotate_is_the_papers_rot():
    x = torch.arange(5.0).reshape(1, 1, 5)
    assert rotate(x, 2).flatten().tolist() == [2.0, 3.0, 4.0, 0.0, 1.0]        # rot(x, r)(i) = x(i + r)
    img = torch.arange(12.0).reshape(1, 1, 3, 4)
    assert rotate(img, (1, 3))[0, 0, 0, 0] == img[0, 0, 1, 3]


@pytest.mark.parametrize("spatial_dims", [1, 2])
@pytest.mark.parametrize("cls, gate", [(ConvDNN, "hard"), (ConvDLGN, "soft"), (ConvDGN, "hard")])
def test_circular_gap_is_rotation_invariant(spatial_dims, cls, gate, tmp_path):
    model = conv(cls, spatial_dims, gate=gate, bias=True)           # biases keep the invariance
    result = rotation_invariance(model, inputs(model))
    assert result.passed and result.statistic <= 1e-12 and result.tolerance == 1e-12
    assert result.details["reference_error"] <= 1e-12                # every Gram = its path enumeration
    assert len(result.details["shifts"]) == SIZES[spatial_dims] ** spatial_dims
    fig = result.plot(path=tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000 and labelled(fig)


@pytest.mark.parametrize("spatial_dims", [1, 2])
def test_zero_padding_breaks_invariance(spatial_dims, tmp_path):
    model = conv(spatial_dims=spatial_dims, padding="zero")
    result = rotation_invariance(model, inputs(model))
    assert not result.passed and result.statistic > 1e-3 and result.details["padding"] == "zero"
    assert result.details["reference_error"] <= 1e-12                # the kernel is right; it is not invariant
    shifts, dev = result.details["shifts"], result.details["deviation"]
    assert dev[shifts.index([0] * spatial_dims)] == 0.0
    assert min(d for s, d in zip(shifts, dev) if any(s)) > 1e-3
    fig = result.plot(path=tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000 and labelled(fig)


def test_flatten_head_fails_one_sided_invariance():
    model = conv(pooling="flatten")
    result = rotation_invariance(model, inputs(model))
    assert not result.passed and result.details["head"] == "flatten"
    assert max(result.details["deviation_one_side"]) > 1e-2
    assert max(result.details["deviation_both_sides"]) <= 1e-12      # joint rotation still holds


def test_a_wrong_but_shift_invariant_conv_rule_fails_on_the_path_enumeration(monkeypatch):
    """The conv offset sum replaced by the identity, M(i, i') <- M(i, i'): still shift-invariant (gates are
    equivariant, GAP sums over all pairs), so the invariance deviation stays at rounding; the comparison with
    the path features of the explicitly shifted inputs fails it."""
    from npk.kernels import conv_fast, rules
    model = conv(bias=True)
    X = inputs(model)
    monkeypatch.setitem(conv_fast._state, "backend", "off")      # the generic rules, where the bug is planted
    monkeypatch.setattr(rules, "conv_sum", lambda M, axes: M)
    result = rotation_invariance(model, X)
    assert max(result.details["deviation"]) <= 1e-12                 # invariance alone: blind to the bug
    assert not result.passed and result.details["reference_error"] > 0.1
    assert rotation_invariance(model, X, independent=False).passed    # the invariance-only check passes it
    big = conv(spatial_dims=2)
    with pytest.raises(ValueError, match="max_classes"):
        rotation_invariance(big, inputs(big, 2), shifts=[(0, 1)], independent=True, max_classes=10)


def test_given_shifts_and_float32_tolerance(tmp_path):
    model = conv(spatial_dims=2).float()
    X = inputs(model).float()
    result = rotation_invariance(model, X, shifts=[(1, 2), (-1, 0)])
    assert result.details["shifts"] == [[1, 2], [3, 0]] and result.tolerance == 1e-5 and result.passed
    assert (result.plot(path=tmp_path / "x.png") is not None) and (tmp_path / "x.png").stat().st_size > 1000


def test_rotation_bad_input():
    with pytest.raises(ValueError, match="1-D or 2-D inputs"):
        rotation_invariance(DNN(3, [4]), torch.randn(2, 3))
    with pytest.raises(ValueError, match="pair of ints"):
        rotation_invariance(conv(spatial_dims=2), torch.randn(2, 2, 4, 4), shifts=[1])
    with pytest.raises(ValueError, match="shape"):
        rotation_invariance(conv(), torch.randn(2, 2, 5))


@pytest.mark.parametrize("spatial_dims", [1, 2])
@pytest.mark.parametrize("gate", ["hard", "soft"])
@pytest.mark.parametrize("cls, value_input", [(ConvDNN, "x"), (ConvDLGN, "x"), (ConvDLGN, "ones")])
def test_rotation_formula_equals_npk(spatial_dims, gate, cls, value_input):
    model = conv(cls, spatial_dims, gate=gate, value_input=value_input)
    X, Y = inputs(model), inputs(model, 3)
    H = npk_gram(model, X, Y)
    torch.testing.assert_close(rotation_formula_npk(model, X, Y), H, rtol=0, atol=1e-10 * H.abs().max())


def test_active_path_counts_count_paths():
    """Lambda for hard gates is the number of (offset, channel) paths from i active for both inputs."""
    model = conv()
    X = inputs(model, 2)
    lam = active_path_counts(model, X)
    g1, g2 = model.gates(X)
    n = SIZES[1]
    for a, b, i in [(0, 1, 0), (1, 0, 3), (1, 1, 6)]:
        count = sum(g1[a, c1, (i - o1) % n] * g1[b, c1, (i - o1) % n]
                    * g2[a, c2, (i - o1 - o2) % n] * g2[b, c2, (i - o1 - o2) % n]
                    for o1, o2, c1, c2 in itertools.product([-1, 0, 1], [-1, 0, 1], [0, 1], [0, 1]))
        assert lam[a, b, i] == count
    assert lam.max() <= 36 and torch.equal(lam, lam.round())


def test_rotation_formula_bad_models():
    X = torch.randn(2, 2, 7)
    for model, match in [(conv(padding="zero"), "circular conv"), (conv(pooling="flatten"), "GlobalAvgPool"),
                         (conv(bias=True), "bias=False")]:
        with pytest.raises(ValueError, match=match):
            rotation_formula_npk(model, X)


# -------------------------------------------------------------------------------- ensemble
def resnet(cls=ResDNN, n_blocks=2, layers=1, conv=False, d_in=3, **opts):
    """A tiny float64 residual net of width 4 (dense, or 2-D conv on 4x4 inputs)."""
    extra = dict(conv=True, input_size=4, spatial_dims=2) if conv else {}
    return cls(d_in, 4, n_blocks, layers_per_block=layers, d_out=1, **extra, **opts).double()


@pytest.mark.parametrize("n_blocks", [1, 2, 3])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("conv", [False, True])
def test_ensemble_decomposition(n_blocks, layers, conv, tmp_path):
    model = resnet(ResDLGN if layers == 2 else ResDNN, n_blocks, layers, conv, gate="soft" if conv else "hard")
    result = ensemble_decomposition(model, inputs(model, 5))
    assert result.passed and result.statistic <= 1e-10 and result.tolerance == 1e-10
    share = result.details["depth_share"]
    assert len(share) == n_blocks + 1 and abs(sum(share) - 1) < 1e-10
    assert (result.details["closed_form_error"] is not None) == (layers == 1 and not conv)
    if n_blocks == 2 and layers == 1:
        fig = result.plot(path=tmp_path / "x.png")
        assert (tmp_path / "x.png").stat().st_size > 1000 and labelled(fig)


@pytest.mark.parametrize("stem", [True, False])
def test_closed_form(stem):
    model = resnet(n_blocks=3, d_in=4, stem=stem)
    X = inputs(model, 6)
    H = npk_gram(model, X)
    torch.testing.assert_close(ensemble_closed_form(model, X), H, rtol=1e-12, atol=0)
    if not stem:       # <x, x'> prod_k (1 + ov_k)
        G = model.gates(X)
        expected = X @ X.T * torch.stack([1 + g @ g.T for g in G]).prod(0)
        torch.testing.assert_close(H, expected, rtol=1e-12, atol=0)


def own_gates(model, keep, X):
    """The gates a DNN sub-network would compute itself (wrong for the ensemble)."""
    gates = [None] * model.n_gated

    def on_gate(layer, q):
        gates[layer] = model.gate_fn(q)
        return gates[layer] * q

    graph.run(subnetwork_ops(model.ops, keep), X, on_gate)
    return gates


@pytest.mark.parametrize("conv", [False, True])
def test_wrong_ensemble_sums_fail(conv):
    model = resnet(ResDNN, 2, 1, conv)
    X = inputs(model, 5)
    H = npk_gram(model, X)
    subsets = [J for k in range(3) for J in itertools.combinations(range(2), k)]
    right = sum(subnetwork_npk(model, X, X, J) for J in subsets)
    own = sum(subnetwork_npk(model, X, X, J, (own_gates(model, J, X),) * 2) for J in subsets)
    no_empty = sum(subnetwork_npk(model, X, X, J) for J in subsets[1:])
    scale = H.abs().max()
    assert (right - H).abs().max() / scale <= 1e-12
    assert (own - H).abs().max() / scale > 1e-4          # far above the check's tolerance 1e-10
    assert (no_empty - H).abs().max() / scale > 1e-4


def test_subnetwork_ops_keep_and_drop_blocks():
    model = resnet(n_blocks=3)
    ops = subnetwork_ops(model.ops, [1])
    assert not any(isinstance(op, graph.Residual) for op in ops)
    assert [op.layer for op in ops if isinstance(op, graph.Gate)] == [0, 2]        # stem, block 1
    assert len(subnetwork_ops(model.ops, [])) == 3                                # stem Linear, Gate, Readout
    with pytest.raises(ValueError, match="block numbers"):
        subnetwork_ops(model.ops, [3])


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="identity skips"):
        ensemble_decomposition(DNN(3, [4]), torch.randn(3, 3))
    with pytest.raises(ValueError, match="bias=False"):
        ensemble_decomposition(resnet(bias=True), torch.randn(3, 3))
    with pytest.raises(ValueError, match="closed form"):
        ensemble_closed_form(resnet(layers=2), torch.randn(3, 3))
    with pytest.raises(ValueError, match="shape"):
        ensemble_decomposition(resnet(), torch.randn(3, 4))


def test_every_sub_network_kernel_matches_its_path_enumeration_on_small_nets():
    for model in (resnet(ResDNN, 2, 1), resnet(ResDLGN, 2, 2, gate="soft"), tiny_conv_resnet()):
        result = ensemble_decomposition(model, inputs(model, 4))
        assert result.passed and result.details["reference_error"] < 1e-12, result
    # a net too large to enumerate: the reference is skipped by default and refused when required
    big = resnet(ResDLGN, 3, 2, conv=True, gate="soft")
    assert ensemble_decomposition(big, inputs(big, 2)).details["reference_error"] is None
    with pytest.raises(ValueError, match="max_classes"):
        ensemble_decomposition(big, inputs(big, 2), independent=True)


def tiny_conv_resnet():
    """A 1-D conv residual net small enough to enumerate its paths (stem + 2 blocks of 2 channels, n = 5)."""
    torch.manual_seed(0)
    return ResDNN(1, 2, 2, d_out=1, conv=True, input_size=5, spatial_dims=1).double()


def test_the_ensemble_check_fails_when_the_conv_rule_is_broken(monkeypatch):
    """The conv offset sum replaced by the identity: npk_gram is wrong, but H and every H^J are wrong alike, so
    the sum still matches; only the comparison with the path enumeration catches it."""
    from npk.kernels import rules
    from npk.kernels import conv_fast
    model = tiny_conv_resnet()
    X = inputs(model, 4)
    H_right = npk_gram(model, X)
    monkeypatch.setitem(conv_fast._state, "backend", "off")      # the generic rules, where the bug is planted
    monkeypatch.setattr(rules, "conv_sum", lambda M, axes: M)
    H_broken = npk_gram(model, X)
    assert (H_broken - H_right).abs().max() / H_right.abs().max() > 0.1
    result = ensemble_decomposition(model, X)
    assert result.details["decomposition_error"] < 1e-12       # the old statistic: blind to the broken rule
    assert not result.passed and result.details["reference_error"] > 0.1
