"""Helpers shared by the test modules (import them from here, never from another test module)."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from npk import graph
from npk.kernels.npk import npk_gram
from npk.kernels.reference import path_features, path_values
from npk.models.base import GatedNet
from npk.theory.duality import relative_error

TOL = 1e-10


def tiny(gating: str):
    """A GatedNet class with the given gating, for op lists written by hand."""
    return type(f"Tiny_{gating}", (GatedNet,), {"gating": gating})


def randomize(model: GatedNet, seed: int) -> GatedNet:
    """Redraw every weight and bias (value and gating) from N(0, 1 / fan_in), so biases are not zero."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                std = m.weight[0].numel() ** -0.5
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(std * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def inputs(shape, n, seed):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_exact(model: GatedNet, seed: int = 0, gates: str | None = None) -> torch.Tensor:
    """The three identities on 8 inputs X and 3 inputs Y; returns Phi."""
    X, Y = inputs(model.input_shape, 8, seed), inputs(model.input_shape, 3, seed + 1)
    phi_xy, classes = path_features(model, torch.cat([X, Y]), gates)
    phi, phi_y = phi_xy[:8], phi_xy[8:]
    H = npk_gram(model, X, gates=gates)
    assert H.dtype == torch.float64 and (H.diagonal() > 0).sum() >= len(X) // 2, "too many inputs with no active path"
    assert relative_error(H, phi @ phi.T) < TOL
    H_xy = npk_gram(model, X, Y, gates=gates)
    assert H_xy.shape == (8, 3)
    assert relative_error(H_xy, phi @ phi_y.T) < TOL
    if gates in (None, model.gate_kind):
        with torch.no_grad():
            out = model(X)
        assert relative_error(out, phi @ path_values(model, classes)) < TOL
    return phi


def conv(d: int, c_in: int, c_out: int, k: int, padding: str, bias: bool) -> graph.Linear:
    module = (nn.Conv1d, nn.Conv2d)[d - 1](c_in, c_out, k, padding=k // 2, padding_mode=padding, bias=bias)
    return graph.Linear(module)


def dense(a: int, b: int, bias: bool) -> graph.Linear:
    return graph.Linear(nn.Linear(a, b, bias=bias))


def conv_net(d: int, padding: str, bias: bool, head: str, k: int) -> list:
    """conv(k) gate conv(3) gate, then a GAP / flatten + gated dense / AvgPool(2) + flatten head."""
    P = 5 if d == 1 else 16
    ops = [conv(d, 2, 2, k, padding, bias), graph.Gate(0), conv(d, 2, 2, 3, padding, bias), graph.Gate(1)]
    if head == "gap":
        return ops + [graph.GlobalAvgPool(), graph.Readout(nn.Linear(2, 2, bias=bias))]
    if head == "flatten":
        return ops + [graph.Flatten(), dense(2 * P, 2, bias), graph.Gate(2), graph.Readout(nn.Linear(2, 2, bias=bias))]
    pooled = 5 // 2 if d == 1 else (4 // 2) ** 2
    return ops + [graph.AvgPool(2), graph.Flatten(), graph.Readout(nn.Linear(2 * pooled, 2, bias=bias))]


# ----------------------------------------------------------------------------------- processes
ROOT = Path(__file__).resolve().parents[1]           # the repository: subprocesses import npk from here


def lock_holder(path):
    """A process that holds the lock `path` until killed (started once it holds it)."""
    code = f"import time; from npk.locks import FolderLock; lock = FolderLock({str(path)!r}); lock.acquire(); " \
           f"print(1, flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "1"
    return proc
