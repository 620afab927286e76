"""The fused rules for runs of gated convs (npk.kernels.conv_fast), each backend exact to 1e-10 in float64.

"extension" is the C++ kernel (marked `extension`: skipped when it is not built, failed under
NPK_REQUIRE_EXT=1), "torch" the any-device path run on the CPU. The generic rules are tested in
test_npk_exact.py, which runs the default ("auto") backend. The binding itself: test_native.py.
"""
import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from npk import graph
from npk.kernels import _native, compact, conv_fast
from npk.kernels.npk import kernel_gates, npk_gram, pair_kernel
from npk.models.conv import C4GAP, ConvDLGN, ConvDNN
from npk.models.trace import from_module
from npk.theory.duality import relative_error
from helpers import TOL, assert_exact, conv, conv_net, dense, inputs, randomize, tiny

@pytest.fixture(params=[pytest.param("extension", marks=pytest.mark.extension), "torch"])
def backend(request):
    with conv_fast.backend(request.param):
        yield request.param


HEADS = list(itertools.product([1, 2], ["zeros", "circular"], ["gap", "flatten", "pool_flatten"]))


@pytest.mark.parametrize("d,padding,head", HEADS, ids=["-".join(map(str, c)) for c in HEADS])
def test_conv_runs_with_every_head_and_padding_are_exact(backend, d, padding, head):
    shape = (2, 5) if d == 1 else (2, 4, 4)
    for k, bias in ((3, True), (1, False)):
        assert_exact(randomize(tiny("linear")(conv_net(d, padding, bias, head, k), shape), seed=20 + k))


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_pool_between_runs_residual_blocks_and_all_ones_input_are_exact(backend, padding):
    ops = [conv(2, 2, 2, 3, padding, True), graph.Gate(0), graph.AvgPool(2),
           graph.Residual([conv(2, 2, 2, 3, padding, True), graph.Gate(1), conv(2, 2, 2, 1, padding, False),
                           graph.Gate(2)]),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 2))]
    for value_input in ("x", "ones"):
        assert_exact(randomize(tiny("linear")(ops, (2, 5, 4), value_input=value_input), seed=21))
    ops = [graph.Residual([conv(1, 2, 2, 3, padding, True), graph.Gate(0), conv(1, 2, 2, 3, padding, True),
                           graph.Gate(1)]),
           graph.Flatten(), graph.Residual([dense(10, 10, True), graph.Gate(2)]), graph.Readout(nn.Linear(10, 2))]
    assert_exact(randomize(tiny("shallow")(ops, (2, 5)), seed=22))


def test_soft_gates_take_the_torch_rules_and_are_exact():
    """Soft gates under "auto" (the default) and "torch"; the extension refuses them with a clear error."""
    model = randomize(ConvDNN(2, [2, 2], padding="circular", pooling="flatten", d_out=2, input_size=4, gate="soft"),
                      seed=23)
    for name in ("auto", "torch"):
        with conv_fast.backend(name):
            assert_exact(model)
    with conv_fast.backend("extension"), pytest.raises(RuntimeError, match="hard 0/1 gates"):
        npk_gram(model, inputs(model.input_shape, 2, 0))


@pytest.mark.parametrize("width", [64, 70, 130])
def test_wide_layers_match_the_generic_rules(backend, width):
    """1, 2 and 3 words of packed gates (and their padding bits) against the generic rules."""
    model = randomize(ConvDLGN(2, [width, 3], kernel_size=5, padding="zero", pooling="gap", d_out=2,
                               input_size=(5, 3), bias=True), seed=24)
    X = inputs(model.input_shape, 5, 0)
    fast = npk_gram(model, X)
    with conv_fast.backend("off"):
        assert relative_error(fast, npk_gram(model, X)) < 1e-12


def test_float32_is_within_1e_6_of_float64(backend):
    """Same gates (from the float64 model), pair kernel in float32 vs float64, C4GAP-shaped, 8 x 8 inputs."""
    model = randomize(C4GAP("dnn", in_channels=1, input_size=8, width=16), seed=25)
    X = inputs(model.input_shape, 6, 0)
    g = kernel_gates(model, X, None)
    H64 = pair_kernel(model, X, X, g, g)
    g32 = [t.float() for t in g]
    H32 = pair_kernel(model, X.float(), X.float(), g32, g32)
    assert H32.dtype == torch.float32
    assert relative_error(H32.double(), H64) < 1e-6


@pytest.mark.parametrize("name", ["auto", pytest.param("extension", marks=pytest.mark.extension), "torch", "off"])
def test_bool_and_uint8_gates_give_the_float_gates_kernel(name):
    model = randomize(ConvDNN(2, [3, 2], padding="zero", pooling="gap", d_out=2, input_size=4, bias=True), seed=26)
    X, Y = inputs(model.input_shape, 4, 0), inputs(model.input_shape, 3, 1)
    gx, gy = kernel_gates(model, X, None), kernel_gates(model, Y, None)
    with conv_fast.backend("off"):
        want = pair_kernel(model, X, Y, gx, gy)
    with conv_fast.backend(name):
        for dtype in (torch.bool, torch.uint8):
            got = pair_kernel(model, X, Y, [g.to(dtype) for g in gx], [g.to(dtype) for g in gy])
            assert relative_error(got, want) < 1e-14


def test_without_the_extension_auto_falls_back_saying_so_once_and_extension_says_how_to_build(monkeypatch):
    monkeypatch.delenv("NPK_REQUIRE_EXT", raising=False)
    monkeypatch.setattr(_native, "_state", {"lib": None, "why": "no build of it (planted)"})
    model = randomize(ConvDNN(2, [2, 2], padding="zero", pooling="gap", d_out=2, input_size=4), seed=27)
    with pytest.warns(RuntimeWarning, match=r"no build of it \(planted\); conv NPK Grams use the slower torch rules"):
        assert_exact(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # said once: no second warning
        assert_exact(model)
        with conv_fast.backend("extension"), pytest.raises(RuntimeError, match=r"pip install \."):
            npk_gram(model, inputs(model.input_shape, 2, 0))


@pytest.mark.extension
def test_zero_padding_after_circular_on_the_same_shape_reuses_no_stale_halo():
    X = inputs((2, 4, 4), 3, 0)
    models = [randomize(ConvDNN(2, [3, 2], padding=p, pooling="flatten", d_out=2, input_size=4), seed=29)
              for p in ("zero", "circular", "zero")]
    with conv_fast.backend("extension"):
        fast = [npk_gram(m, X) for m in models]
    with conv_fast.backend("off"):
        for m, H in zip(models, fast):
            assert relative_error(H, npk_gram(m, X)) < 1e-14


@pytest.mark.extension
def test_single_pair_blocks_on_two_threads_share_the_diagonals():
    """Two threads share the diagonals of one pair (1-sample blocks)."""
    model = randomize(ConvDNN(2, [3, 2], padding="circular", pooling="gap", d_out=2, input_size=(4, 5), bias=True),
                      seed=28)
    X = inputs(model.input_shape, 3, 0)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with conv_fast.backend("extension"):
            split = npk_gram(model, X, memory_budget=1, progress=False)
    finally:
        torch.set_num_threads(n)
    with conv_fast.backend("off"):
        assert relative_error(split, npk_gram(model, X)) < 1e-14


def test_convs_the_kernel_does_not_handle_go_to_the_generic_rules():
    """Strided or dilated convs (rules another module may add) and a change of padding end a run; "off"
    disables runs."""
    ops = [conv(2, 2, 2, 3, "zeros", False), graph.Gate(0), conv(2, 2, 2, 3, "zeros", False), graph.Gate(1),
           graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 1))]
    assert conv_fast.conv_run(ops, 0) == [ops[0], ops[2]]
    mixed = ops[:2] + [conv(2, 2, 2, 3, "circular", False)] + ops[3:]
    assert conv_fast.conv_run(mixed, 0) == [mixed[0]] and conv_fast.conv_run(mixed, 2) == [mixed[2]]
    ops[2].module.stride = (2, 2)
    assert conv_fast.conv_run(ops, 0) == [ops[0]]
    ops[0].module.dilation = (2, 1)
    assert conv_fast.conv_run(ops, 0) == [] and conv_fast.conv_run(ops, 4) == []
    with conv_fast.backend("off"):
        assert conv_fast.fused_run(ops[2:], 0, torch.ones(1, 1, 4, 4, 4, 4), None) is None
    with pytest.raises(ValueError, match="backend must be one of"):
        with conv_fast.backend("fast"):
            pass


@pytest.mark.extension
def test_the_kernel_reads_npk_grams_packed_gates_without_unpacking_them(monkeypatch):
    """npk_gram keeps hard gates packed; the fused kernel reads their words, never the float gates."""
    model, X = C4GAP("dnn", in_channels=1, input_size=6, width=8).double(), torch.randn(5, 1, 6, 6, dtype=torch.float64)
    want = npk_gram(model, X)
    monkeypatch.setattr(compact, "unpack_bits", lambda *a: pytest.fail("packed gates were unpacked"))
    with conv_fast.backend("extension"):
        assert torch.equal(npk_gram(model, X), want)


def test_plain_gates_are_checked_for_zero_one_values():
    g = (torch.randn(6, 70, 3, 2) > 0).double()
    assert conv_fast._is_hard(compact.LayerGates([g]), 0)
    g[3, 5, 0, 0] = 0.5
    assert not conv_fast._is_hard(compact.LayerGates([g]), 0)
    assert conv_fast._is_hard(compact.LayerGates(compact.pack_gates([g.round()])), 0)
    assert not conv_fast._is_hard(compact.LayerGates(compact.DenseGates([g.round()])), 0)   # soft by kind


def test_packed_words_put_channel_64w_plus_b_in_bit_b_of_word_w():
    g = torch.zeros(1, 130, 1)
    g[0, [0, 3, 64, 129], 0] = 1
    words = compact.LayerGates([g]).packed(0)[0, :, 0].tolist()
    assert words == [1 + 8, 1, 2]


def test_low_precision_overlaps_are_exact_across_channel_chunks():
    """3,000 channels: bfloat16 in chunks of 256 and float16 in chunks of 2,048, both exact integers."""
    A = (torch.rand(2, 3000, 3) > 0.1).double()
    B = (torch.rand(3, 3000, 3) > 0.1).double()
    want = conv_fast.exact_overlap(A, B, torch.float64, hard=False)
    assert want.min() > 2048
    for low in (torch.bfloat16, torch.float16):
        assert torch.equal(conv_fast.exact_overlap(A, B, torch.float64, hard=True, low=low), want)


POOLS = [(2, None, 0, 1, False), (3, 2, 1, 1, False), (2, 1, 0, 2, False), (2, 3, 0, 1, True), (3, 1, 1, 1, False),
         ((2, 3), (1, 2), (1, 1), 1, False)]   # (kernel, stride, padding, dilation, ceil_mode) of MaxPool2d


@pytest.mark.parametrize("pool", POOLS, ids=[str(p) for p in POOLS])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_max_pools_of_every_window_geometry_collapse_their_channels_exactly(backend, pool, padding, monkeypatch):
    """conv-ReLU-maxpool twice into a dense readout: the gate, the selection and the next layer's channel
    sum at once at the pooled resolution (the extension's select-sum), exact against path enumeration."""
    calls = []
    select_sum = conv_fast.select_sum
    monkeypatch.setattr(conv_fast, "select_sum", lambda *a: calls.append(select_sum(*a)) or calls[-1])
    first, second = graph.MaxPool(*pool[:4], ceil_mode=pool[4]), graph.MaxPool(2, ceil_mode=True)
    out = graph.shape_after(second, graph.shape_after(first, (2, 6, 5)))
    ops = [conv(2, 2, 3, 3, padding, True), graph.Gate(0), first, conv(2, 3, 2, 3, padding, False), graph.Gate(1),
           second, graph.Flatten(), graph.Readout(nn.Linear(math.prod(out), 2))]
    assert_exact(randomize(tiny("relu")(graph.number(ops), (2, 6, 5)), seed=30))
    assert calls and all((c is not None) == (backend == "extension") for c in calls)


def test_a_traced_plain_pytorch_cnn_with_batch_norm_and_max_pooling_is_exact():
    """conv-BN-ReLU-maxpool twice, then a dense readout, as a user writes it (reduced copy of the benchmark's CNN)."""
    torch.manual_seed(31)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double().eval()
    for bn in (net[1], net[5]):
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    assert_exact(from_module(net, inputs((2, 8, 8), 2, 0)))


def test_the_max_pool_cnn_in_float32_is_within_1e_6_of_float64():
    torch.manual_seed(32)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)).double()
    X = inputs((3, 16, 16), 4, 0)
    model = from_module(net, X[:2])
    H64 = npk_gram(model, X)
    assert relative_error(npk_gram(model.float(), X.float()).double(), H64) < 1e-6
