"""npk.theory.layer_permutation: exact for fully connected nets of equal widths, a measured failure for conv nets."""
import pytest
import torch

from npk.models import DGN, DLGN, DNN
from npk.models.conv import ConvDGN, ConvDLGN
from npk.theory import layer_permutation


def double_inputs(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("cls, gate", [(DGN, "hard"), (DLGN, "soft"), (DNN, "hard")])
def test_a_layer_permutation_leaves_the_fully_connected_npk_unchanged_though_the_outputs_change(cls, gate):
    torch.manual_seed(0)
    model = cls(7, [12, 12, 12, 12], 3, gate=gate).double()
    X = double_inputs(25, 7)
    for seed in range(3):
        result = layer_permutation(model, X, seed=seed)
        assert result.passed and result.statistic < 1e-13, result
        assert result.details["fully_connected"] and result.details["order"] != [0, 1, 2, 3]
        assert result.details["output_change"] > 0.05      # the permutation does change the network


@pytest.mark.parametrize("padding", ["zero", "circular"])
def test_a_layer_permutation_changes_a_conv_nets_npk_the_must_fail_case(padding):
    torch.manual_seed(0)
    model = ConvDGN(2, [4, 4, 4], input_size=(6, 6), d_out=2, padding=padding).double()
    result = layer_permutation(model, double_inputs(8, 2, 6, 6), order=[2, 0, 1])
    assert not result.passed and result.statistic > 1e-3   # measured: 0.053 (circular padding)
    assert not result.details["fully_connected"] and result.details["order"] == [2, 0, 1]


def test_layer_permutation_explicit_order_figure_and_bad_input(tmp_path):
    torch.manual_seed(1)
    model = DLGN(5, [6, 6], 2, gate="soft").double()
    result = layer_permutation(model, double_inputs(10, 5), order=[1, 0])
    assert result.passed and result.details["order"] == [1, 0]
    result.plot(path=tmp_path / "lp.png")
    assert (tmp_path / "lp.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="shapes agree"):
        layer_permutation(DGN(5, [6, 7], 2).double(), double_inputs(4, 5))
    with pytest.raises(ValueError, match="at least two gated layers"):
        layer_permutation(DGN(5, [6], 2).double(), double_inputs(4, 5))
    with pytest.raises(ValueError, match="permutation of the 2 gated layers"):
        layer_permutation(model, double_inputs(4, 5), order=[0, 0])
    with pytest.raises(TypeError, match="npk gated model"):
        layer_permutation(torch.nn.Linear(5, 2), double_inputs(4, 5))
