"""The structured empirical NTK of an npk gated network: sums of small per-layer Grams, no N x P Jacobian.

Every weight of a gated network sits in a Linear or Conv layer z = W a (+ b); for a convolution
z(i) = sum_o W_o a(i + o) (+ b), i over output positions, o over kernel offsets. With A(i) the layer's
input patch at position i (the windows a(i + o) over all offsets, zero or wrap-around outside the
input; a dense layer has one position and A = a) and B^k(i) = d y_k / d z(i) the cotangent of output
unit k at the layer's output, d y_k / dW = sum_i B^k(i) A(i)^T and d y_k / db = sum_i B^k(i), so the
layer's NTK block for inputs x, y and outputs k, k' is

    K_layer[k, k'](x, y) = sum_{i, i'} <B^k_x(i), B^k'_y(i')> (<A_x(i), A_y(i')> + 1 if the layer has a bias)

and the NTK is the sum over the selected layers. One forward pass (hooks record a and add a zero
"probe" to every z) and one backward pass per output unit give every A and B. Each layer then uses
the cheaper of two exact contractions:
    "gram"  Grams of positions, sum_{i,i'} (B_x B_y^T)(i, i') (A_x A_y^T)(i, i'):  ~ n m P^2 (K fo + fi)
    "jac"   the per-sample layer Jacobian J^k = sum_i B^k(i) A(i)^T (fo x fi), then <J_x, J_y>:  ~ n m K fo fi
(P positions, fo output and fi input features per position; dense layers have P = 1 and use "gram",
convolutions with many positions use "jac"). Cotangents flow through soft gates, so the gating
network's layers are handled the same way; with hard gates they receive no cotangent and add 0.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import graph
from ..models.base import GatedNet


def add_feature_gram(out: torch.Tensor, Fx: torch.Tensor, Fy: torch.Tensor) -> None:
    """out += sum_f Fx[n, k, f] Fy[m, k', f]: out (n, m, K, K), or (n, m) for the trace over k = k'."""
    n, K, m = Fx.shape[0], Fx.shape[1], Fy.shape[0]
    if out.dim() == 2:
        out.addmm_(Fx.reshape(n, -1), Fy.reshape(m, -1).T)
    else:
        out += (Fx.reshape(n * K, -1) @ Fy.reshape(m * K, -1).T).view(n, K, m, K).permute(0, 2, 1, 3)


@dataclass
class _Layer:
    """One weight layer: fo outputs and fi weight inputs per position (C times the kernel size), P positions."""

    module: nn.Module
    fo: int
    fi: int
    P: int

    @property
    def bias(self) -> int:
        return int(self.module.bias is not None)

    def uses_jacobian(self, K: int, full: bool) -> bool:
        """True when the per-sample Jacobian contraction is cheaper per sample pair than position Grams."""
        fi = self.fi + self.bias
        if full:
            return K * K * self.fo * fi < self.P**2 * (K * K * (self.fo + 1) + fi)
        return K * self.fo * fi < self.P**2 * (K * self.fo + fi)

    def feature_elements(self, K: int, full: bool) -> int:
        """Stored numbers per sample: the layer Jacobian, or the patches and the cotangents."""
        if self.uses_jacobian(K, full):
            return K * self.fo * (self.fi + self.bias)
        return self.P * (K * self.fo + self.fi)

    def pair_elements(self, K: int, full: bool) -> int:
        """Work tensors per sample pair of the position-Gram contraction (none for the Jacobian one)."""
        return 0 if self.uses_jacobian(K, full) else 2 * self.P**2 * (K * K if full else 1)


def select_layers(model: GatedNet, params: str) -> list[nn.Module]:
    """The weight layers of parameter group `params` ("value", "gating" or "all"), in forward order."""
    value = list(model.value_layers)
    gating = value if model.gating == "self" else list(model.gating_layers)
    chosen = {"value": value, "gating": gating, "all": value + gating}[params]
    return list({id(m): m for m in chosen}.values())


class Structured:
    """NTK of a GatedNet w.r.t. the weights and biases of `modules` (Linear / Conv layers of its op lists)."""

    name = "structured"

    def __init__(self, model: GatedNet, modules: list[nn.Module], n_out: int, full: bool):
        self.model, self.K, self.full = model, n_out, full
        self.itemsize = next(model.parameters()).element_size()
        self.layers = [_Layer(m, *_layer_shape(m, shape)) for m, shape in _input_shapes(model, modules)]

    # ------------------------------------------------------------------------------- memory model
    def feature_bytes(self, n: int) -> int:
        """Bytes of the stored features of n samples."""
        return n * self.itemsize * sum(layer.feature_elements(self.K, self.full) for layer in self.layers)

    def block_bytes(self, n: int, m: int) -> int:
        """Peak bytes of one block pair: both sides' features, the forward/backward work, the Grams."""
        work = sum(layer.P * ((2 * self.K + 2) * layer.fo + 2 * layer.fi) for layer in self.layers)
        pair = max([0] + [layer.pair_elements(self.K, self.full) for layer in self.layers])
        pair += 2 * (self.K * self.K if self.full else 1)
        return self.feature_bytes(n + m) + self.itemsize * ((n + m) * work + n * m * pair)

    # -------------------------------------------------------------------------------- features
    def features(self, X: torch.Tensor) -> tuple[int, list]:
        """(n, per layer: ("jac", [J_weight (n, K, fo fi), J_bias (n, K, fo)]) or ("gram", A, B, bias), or None).

        A (n, P, fi) are the patches, B (n, K, fo, P) the cotangents; None marks a layer without a
        cotangent (it does not influence the output, e.g. a gating layer behind hard gates).
        """
        inputs, probes = {}, {}

        def hook(module, args, out):
            if module in inputs:
                raise ValueError(f"{module} is called more than once per forward; the structured NTK needs "
                                 f"every weight layer used once; use implementation='jacobian' or 'ntk-vp'")
            inputs[module] = args[0].detach()
            probes[module] = torch.zeros_like(out, requires_grad=True)
            return out + probes[module]

        handles = [layer.module.register_forward_hook(hook) for layer in self.layers]
        try:
            with torch.enable_grad():
                y = self.model(X)
                ps = [probes[layer.module] for layer in self.layers]
                cots = [torch.autograd.grad(y[:, k].sum(), ps, retain_graph=k < self.K - 1, allow_unused=True)
                        if y.requires_grad else [None] * len(ps) for k in range(self.K)]
        finally:
            for h in handles:
                h.remove()
        feats = []
        for i, layer in enumerate(self.layers):
            if all(c[i] is None for c in cots):
                feats.append(None)
            else:
                B = [(c[i] if c[i] is not None else torch.zeros_like(ps[i])).reshape(len(X), layer.fo, layer.P)
                     for c in cots]
                feats.append(self._layer_features(layer, _patches(layer.module, inputs[layer.module]), B))
        return len(X), feats

    def _layer_features(self, layer: _Layer, A: torch.Tensor, B: list[torch.Tensor]):
        """Features of one layer from its patches A (n, P, fi) and per output unit cotangents B[k] (n, fo, P)."""
        n, B = len(A), torch.stack(B, 1)                 # (n, K, fo, P)
        if not layer.uses_jacobian(self.K, self.full):
            return ("gram", A, B, bool(layer.bias))
        J = torch.bmm(B.view(n, -1, layer.P), A)         # d y_k / dW = sum_i B_k(i) A(i)^T, per sample
        feats = [J.view(n, self.K, -1)]
        return ("jac", feats + [B.sum(-1)] if layer.bias else feats)

    # ----------------------------------------------------------------------------- contraction
    def contract(self, fx: tuple[int, list], fy: tuple[int, list]) -> torch.Tensor:
        p = next(self.model.parameters())
        shape = (fx[0], fy[0], self.K, self.K) if self.full else (fx[0], fy[0])
        total = torch.zeros(shape, dtype=p.dtype, device=p.device)
        for feat_x, feat_y in zip(fx[1], fy[1]):
            if feat_x is None:
                continue
            if feat_x[0] == "jac":
                for Jx, Jy in zip(feat_x[1], feat_y[1]):
                    add_feature_gram(total, Jx, Jy)
            else:
                total += self._position_gram(*feat_x[1:3], *feat_y[1:])
        return total

    def _position_gram(self, Ax, Bx, Ay, By, bias: bool) -> torch.Tensor:
        """sum_{i,i'} <B_x(i), B_y(i')> (<A_x(i), A_y(i')> + bias) (per output pair k, k' if full)."""
        n, m, P = len(Ax), len(Ay), Ax.shape[1]
        Ga = (Ax.reshape(n * P, -1) @ Ay.reshape(m * P, -1).T).view(n, P, m, P)
        if bias:
            Ga += 1
        if not self.full:
            Gb = (Bx.permute(0, 3, 1, 2).reshape(n * P, -1) @ By.permute(0, 3, 1, 2).reshape(m * P, -1).T)
            Gb = Gb.view(n, P, m, P)
            return (Ga * Gb).sum((1, 3)) if P > 1 else (Ga * Gb).view(n, m)
        K = self.K
        Gb = (Bx.transpose(2, 3).reshape(n * K * P, -1) @ By.transpose(2, 3).reshape(m * K * P, -1).T)
        Gb = Gb.view(n, K, P, m, K, P)
        return (Gb * Ga.view(n, 1, P, m, 1, P)).sum((2, 5)).permute(0, 2, 1, 3)


def _patches(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """(n, P, fi): row i holds the input window a(s i + d o - p) over the kernel taps o at output position i.

    A dense layer has one position, its input. Convolutions pad like the module (zeros or wrap-around,
    torch's 'same' / 'valid' / int padding) and copy channels-last strided windows, so a row is ordered
    (tap, channel): the Gram does not depend on the order of the features, only on both sides using the same one.
    """
    n = len(a)
    if isinstance(module, nn.Linear):
        return a.reshape(n, 1, -1)
    axes, channels, taps = graph.conv_axes(module), a.shape[1], math.prod(module.kernel_size)
    sizes = [ax.out_size(s) for ax, s in zip(axes, a.shape[2:])]
    pad = [q for ax in reversed(axes) for q in ax.pad]
    mode = "circular" if module.padding_mode == "circular" else "constant"
    padded = F.pad(a, pad, mode=mode).movedim(1, -1).contiguous()       # (n, *S_padded, C)
    A = a.new_empty(n, *sizes, taps, channels)
    for o, tap in enumerate(itertools.product(*(range(k) for k in module.kernel_size))):
        A[..., o, :] = padded[(slice(None), *(slice(ax.dilation * t, ax.dilation * t + ax.stride * (s - 1) + 1,
                                                     ax.stride) for ax, t, s in zip(axes, tap, sizes)))]
    return A.view(n, -1, taps * channels)


def _layer_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(fo, fi, P) of a weight layer reading one sample of `input_shape` (P its output positions)."""
    P = (1 if isinstance(module, nn.Linear)
         else math.prod(ax.out_size(s) for ax, s in zip(graph.conv_axes(module), input_shape[1:])))
    return module.weight.shape[0], module.weight[0].numel(), P


def _input_shapes(model: GatedNet, modules: list[nn.Module]):
    """(module, per-sample input shape) for each module, from one probe forward pass."""
    shapes, handles = {}, []
    for m in modules:
        handles.append(m.register_forward_hook(lambda mod, args, out: shapes.__setitem__(mod, args[0].shape[1:])))
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *model.input_shape), dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    missing = [m for m in modules if m not in shapes]
    if missing:
        raise ValueError(f"layers {missing} are not used by the model's forward pass; the structured NTK needs "
                         f"every selected layer on the forward path; use implementation='jacobian' or 'ntk-vp'")
    return [(m, shapes[m]) for m in modules]
