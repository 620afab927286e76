"""The cost of an NPK Gram said up front (npk.kernels.cost): the estimate, the progress bar, the one-line warning."""
import re

import torch
from torch import nn

from npk.kernels import cost
from npk.kernels.npk import NPKTiles, npk_gram
from npk.models.trace import from_module


def cnn(pool: type) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), pool(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         pool(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 2)).double()


def shortcut_net() -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 128, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(128, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = torch.relu(h + self.b(h))                  # an identity shortcut into a ReLU
            return self.fc(torch.flatten(self.pool(h), 1))
    return Net().double()


X = torch.randn(3, 1, 8, 8, dtype=torch.float64)


def test_the_estimate_names_its_parts_and_charges_identity_shortcuts_by_their_mask_overlaps():
    est = cost.estimate(from_module(cnn(nn.MaxPool2d), X[:1]), itemsize=8)
    assert est.ms_per_pair > 0 and abs(sum(est.parts.values()) - est.ms_per_pair) < 1e-12
    assert set(est.parts) >= {"convs at 8x8", "max pools at 8x8 (4 channels)", "max pools at 4x4 (4 channels)"}
    shortcut = cost.estimate(from_module(shortcut_net(), X[:1]), itemsize=8)
    assert shortcut.main_part()[0] == "identity shortcuts at 8x8 (128 channels)"
    assert cost.estimate(from_module(shortcut_net(), X[:1]), itemsize=4).ms_per_pair == shortcut.ms_per_pair / 2


def test_the_progress_bar_shows_the_estimate_and_the_measured_ms_per_pair(capsys):
    model = from_module(cnn(nn.MaxPool2d), X[:1])
    assert re.fullmatch(r"est\. [0-9.e+-]+ ms/pair", NPKTiles(model, "hard", torch.float64, 2**20).note)
    npk_gram(model, X, memory_budget=1, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"NPK tiles \(est\. [0-9.e+-]+ ms/pair\).*ms/pair\]", err)


def test_a_gram_over_the_threshold_prints_one_line_once_with_the_estimate_and_its_main_cost(capsys, monkeypatch):
    model = from_module(shortcut_net(), X[:1])
    npk_gram(model, X, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cost, "WARN_SECONDS", 1e-9)
    npk_gram(model, X, memory_budget=1, progress=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"npk_gram: about [0-9.]+ s for 6 pairs \(~[0-9.e+-]+ ms a pair on one thread, \d+ thread\(s\)\); "
                        r"\d+% of it in identity shortcuts at 8x8 \(128 channels\)", lines[0])
