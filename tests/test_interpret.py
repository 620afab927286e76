"""The primal map: q_l(x) = A_l x + b_l for linear gating networks (exact, float64), local maps of a DNN / DGN,
conv nets' effective filters against the rows of A, selections and refusals; the primal-dual experiment."""
import json

import pytest
import torch
from torch import nn

import npk
from npk.experiments import run_experiment
from npk.experiments.common import kernel_subset, load_data
from npk.files import load_pt
from npk.fit import kernel_ridge
from npk.interpret import effective_filters, gating_map


def trained(model, steps: int = 5, seed: int = 0):
    """`model` in float64 after a few Adam steps on random data (soft gates: the gating network learns too)."""
    torch.manual_seed(seed)
    model = model.double()
    X = torch.randn(16, *model.input_shape, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    before = [p.clone() for p in model.gating_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    assert all((p - q).abs().max() > 1e-3 for p, q in zip(model.gating_parameters(), before))   # it moved
    return model


def affine(A: torch.Tensor, b: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """A x + b for every row of X, with A of shape (*q shape, *input shape)."""
    n_x = X[0].numel()
    return (X.reshape(len(X), n_x) @ A.reshape(-1, n_x).T).reshape(len(X), *b.shape) + b


LINEAR = {
    "DLGN": lambda: npk.models.DLGN(6, [5, 4, 3], 2, bias=True, gate="soft"),
    "DLGN-SF": lambda: npk.models.DLGNSF(6, [5, 4], 2, bias=True, gate="soft"),
    "ConvDLGN zero pad, pool, flatten": lambda: npk.models.ConvDLGN(
        2, [3, 4], input_size=6, bias=True, gate="soft", pool_every=[0], pooling="flatten", dense_widths=[5], d_out=2),
    "ConvDLGN circular 1-D": lambda: npk.models.ConvDLGN(2, [3, 3], padding="circular", spatial_dims=1,
                                                         input_size=7, bias=True, gate="soft", d_out=2),
    "ConvDLGNSF strided": lambda: npk.models.GatedNet(
        [npk.graph.Linear(nn.Conv2d(2, 3, 3, stride=2, padding=1)), npk.graph.Gate(0),
         npk.graph.Linear(nn.Conv2d(3, 4, 3, padding=1)), npk.graph.Gate(1), npk.graph.GlobalAvgPool(),
         npk.graph.Readout(nn.Linear(4, 2))], (2, 6, 6), gating="shallow", gate="soft"),
}


@pytest.mark.parametrize("name", LINEAR)
def test_the_map_reproduces_every_layers_preactivations_after_training(name):
    model = trained(LINEAR[name]())
    X = 3 * torch.randn(9, *model.input_shape, dtype=torch.float64)
    qs = model.gating_preactivations(X)
    for layer, q in enumerate(qs):
        A, b = gating_map(model, layer)
        assert A.shape == (*q.shape[1:], *model.input_shape) and b.shape == q.shape[1:]
        assert (affine(A, b, X) - q).abs().max() < 1e-10 * max(1.0, q.abs().max().item())
        assert b.abs().max() > 1e-3                        # the biases are there and in b


def test_a_traced_networks_linear_twin_has_an_exact_map():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).double().eval()
    torch.manual_seed(1)
    twin = trained(npk.models.from_module(net, torch.randn(2, 1, 6, 6, dtype=torch.float64), gating="linear",
                                          gate="soft"))
    X = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    for layer, q in enumerate(twin.gating_preactivations(X)):
        A, b = gating_map(twin, layer)
        assert (affine(A, b, X) - q).abs().max() < 1e-10 and b.abs().max() > 1e-3   # biases learnt from zero


@pytest.mark.parametrize("kind, gate", [("DNN", "hard"), ("DGN", "soft")])   # a DGN's ReLU gating net: any gate
def test_a_relu_nets_local_map_holds_on_the_region_of_x_and_not_beyond(kind, gate):
    model = trained(getattr(npk.models, kind)(6, [8, 8, 8], 2, bias=True, gate=gate), steps=3)
    torch.manual_seed(2)
    x = torch.randn(6, dtype=torch.float64)
    A, b = gating_map(model, 2, x)
    q = model.gating_preactivations(x[None])[2][0]
    assert (A @ x + b - q).abs().max() < 1e-12
    near = x + 1e-7 * torch.randn(6, dtype=torch.float64)          # the same gates: the same region
    assert all(torch.equal(g, h) for g, h in zip(model.gates(x[None], "hard"), model.gates(near[None], "hard")))
    assert (A @ near + b - model.gating_preactivations(near[None])[2][0]).abs().max() < 1e-12
    far = 5 * torch.randn(64, 6, dtype=torch.float64)               # other regions: the map no longer holds
    assert (affine(A, b, far) - model.gating_preactivations(far)[2]).abs().max() > 1e-2


def placed(f, position, shape, pad: int) -> torch.Tensor:
    """The filter f.weights at the window of `position` on the input grid, taps outside it dropped."""
    canvas = torch.zeros(*f.weights.shape[:2], *(n + 2 * pad for n in shape), dtype=torch.float64)
    canvas[(slice(None), slice(None), *(slice(w.start + pad, w.stop + pad) for w in f.window(position)))] = f.weights
    return canvas[(slice(None), slice(None), *(slice(pad, pad + n) for n in shape))]


def test_effective_filters_are_the_rows_of_A_inside_and_differ_only_at_zero_padded_borders():
    model = trained(npk.models.ConvDLGN(2, [3, 2, 2], input_size=9, bias=True, gate="soft", pool_every=[0], d_out=2))
    first, deep = effective_filters(model, 0), effective_filters(model, 1)
    assert first.weights.shape == (3, 2, 3, 3) and first.start == (-1, -1) and first.jump == (1, 1)
    assert deep.weights.shape == (2, 2, 8, 8) and deep.start == (-3, -3) and deep.jump == (2, 2)
    A0, A1 = gating_map(model, 0)[0], gating_map(model, 1)[0]       # (3, 9, 9, 2, 9, 9), (2, 4, 4, 2, 9, 9)
    for o in [(i, j) for i in range(9) for j in range(9)]:          # one conv: the filter, outside taps dropped
        assert (A0[:, o[0], o[1]] - placed(first, o, (9, 9), 8)).abs().max() < 1e-12
    for o in [(i, j) for i in range(4) for j in range(4)]:
        error = (A1[:, o[0], o[1]] - placed(deep, o, (9, 9), 8)).abs().max().item()
        reach = max(max(-w.start, w.stop - 9) for w in deep.window(o))   # how far the window leaves the input
        if reach <= 1:      # inside, or out by the first conv's pad only: the outside taps are dropped, no more
            assert error < 1e-12, o
        else:               # the layers in between meet their zero pads too: those paths are lost as well
            assert error > 1e-3, o
    assert deep.weights[:, :, 0].abs().max() > 1e-3                  # the filter's edge taps are real


def test_a_shallow_feature_nets_filters_read_the_pooled_input():
    model = trained(npk.models.ConvDLGNSF(2, [3, 2], input_size=10, pool_every=[0], bias=True, gate="soft", d_out=2))
    f = effective_filters(model, 1)                                   # a 3x3 conv of the 2x2-pooled input
    assert f.weights.shape == (2, 2, 6, 6) and f.start == (-2, -2) and f.jump == (2, 2)
    A, _ = gating_map(model, 1)
    inside = [(i, j) for i in range(5) for j in range(5) if all(0 <= w.start and w.stop <= 10 for w in f.window((i, j)))]
    assert len(inside) == 9
    for o in inside:
        assert (A[:, o[0], o[1]] - placed(f, o, (10, 10), 6)).abs().max() < 1e-12


def test_circular_filters_wrap_around():
    model = trained(npk.models.ConvDLGN(1, [2, 2], padding="circular", spatial_dims=1, input_size=4, d_out=2,
                                        gate="soft"))
    A, _ = gating_map(model, 1)                                      # (2, 4, 1, 4): window 5 > input 4
    f = effective_filters(model, 1)
    for o in range(4):
        wrapped = torch.zeros(2, 1, 4, dtype=torch.float64)
        for k, p in enumerate(f.window((o,))[0]):
            wrapped[:, :, p % 4] += f.weights[:, :, k]
        assert (A[:, o] - wrapped).abs().max() < 1e-12


def test_chosen_channels_and_positions_are_slices_of_the_full_map():
    model = trained(npk.models.ConvDLGN(2, [4, 3], input_size=5, bias=True, gate="soft", d_out=2))
    A, b = gating_map(model, 1)
    As, bs = gating_map(model, 1, channels=[2, 0], positions=[(0, 4), (2, 2)])
    assert As.shape == (2, 2, 2, 5, 5)
    assert torch.allclose(As, A[[2, 0]][:, [0, 2], [4, 2]], atol=1e-13, rtol=0)
    assert torch.allclose(bs, b[[2, 0]][:, [0, 2], [4, 2]], atol=1e-13, rtol=0)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, d: gating_map(m, 0, max_bytes=1000), MemoryError, "needs A of shape \\(4, 5, 5, 2, 5, 5\\): .* channels="),
    (lambda m, d: gating_map(m, 2), ValueError, "layer must be an int in 0..1"),
    (lambda m, d: gating_map(d, 0), ValueError, "pass x, one input of shape \\(3,\\)"),
    (lambda m, d: gating_map(d, 0, torch.zeros(2, 3)), ValueError, "x must be one input of shape \\(3,\\)"),
    (lambda m, d: gating_map(d, 0, torch.zeros(3), positions=[(0,)]), ValueError, "positions= is for conv layers"),
    (lambda m, d: gating_map(m, 0, channels=[4]), ValueError, "channels must be a non-empty list of ints in 0..3"),
    (lambda m, d: gating_map(m, 0, positions=[(1,)]), ValueError, "each position must hold 2 indices"),
    (lambda m, d: effective_filters(d, 0), ValueError, "linear gating network"),
    (lambda m, d: gating_map(nn.Linear(2, 2), 0), TypeError, "gated model"),
])
def test_bad_requests_fail_with_one_clear_line(call, error, message):
    conv = npk.models.ConvDLGN(2, [4, 3], input_size=5).double()
    dnn = npk.models.DNN(3, [4], 2).double()
    with pytest.raises(error, match=message):
        call(conv, dnn)


# ------------------------------------------------------------------------------------------ the experiment
@pytest.fixture(scope="module")
def primal_dual_run(tmp_path_factory):
    folder = run_experiment("primal-dual", tmp_path_factory.mktemp("pd") / "run", quick=True, progress=False)
    return folder, json.loads((folder / "results.json").read_text())["primal_dual"]


def test_primal_dual_numbers_are_exact_where_they_can_be(primal_dual_run):
    folder, r = primal_dual_run
    assert r["primal"]["map_check_rel_error"] < 1e-10                       # q = A x + b on the test set
    assert max(r["npk_gram_rel_error"].values()) < 1e-12                    # (X X^T) ⊙ prod_l O_l = npk_gram
    assert r["ks"] == [1, 5, 10, 50, 100] and r["n_kernel"] == 100
    grams = load_pt(folder / "cache" / "layered-grams.pt")["value"]
    y = load_data({"dataset": "digits", "n_train": 200, "n_test": 100, "seed": 0}, flatten=True)
    index = kernel_subset(y, 100, 0)
    for name in grams:
        k = r["kernels"][name]
        full = kernel_ridge(grams[name]["train"], y.y_train[index], grams[name]["test"], y.y_test, seed=0).accuracy
        assert k["top_k_ridge"]["100"] == full                              # k = N: the whole kernel
        assert k["top_k_ridge"]["1"] <= 0.3                                  # one eigenvector cannot tell 10 classes
        assert r["per_layer_alignment"][name]["partial"][-1] == pytest.approx(k["centered_alignment"], abs=1e-12)
        assert k["spectrum"][0] == 1 and k["decay_slope"] < 0
    assert set(r["kernels"]) == {"DLGN NPK", "DLGN NPK (hard gates)", "DNN NPK", "DLGN NPK (init)", "DNN NPK (init)",
                                 "inputs X X^T"} and len(r["pairs"]) == 7
    assert all(0 <= v <= 1 + 1e-12 for pair in r["pairs"].values() for v in pair.values())
    report = (folder / "report.md").read_text()
    for name in ("primal-fc-maps", "primal-conv-filters", "primal-moons", "spectral-decay", "spectral-angles",
                 "spectral-topk", "dual-layers", "dual-alignment"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 5000 and f"figures/{name}.png" in report
    assert "What they cannot settle" in report


def test_primal_dual_refuses_an_empty_k_list(tmp_path):
    with pytest.raises(ValueError, match="ks must be a non-empty list of positive ints"):
        run_experiment("primal-dual", tmp_path / "run", overrides={"ks": []}, quick=True, progress=False)
