"""Weight initialisation for gated networks."""
from __future__ import annotations

import math

import torch
from torch import nn


def he_init(model: nn.Module) -> None:
    """He (Kaiming) normal weights, std = sqrt(2 / fan_in), and zero biases, for every weight layer."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def init_weights(layers, scheme: str = "gaussian", sigma: float | None = None, generator=None) -> None:
    """Redraw the weights of `layers` i.i.d.: N(0, sigma^2) ("gaussian") or +-sigma ("bernoulli").

    sigma defaults to sqrt(2 / fan_in) per layer (fan_in = in-channels times kernel size); biases are zeroed.
    """
    if scheme not in ("gaussian", "bernoulli"):
        raise ValueError(f"scheme must be 'gaussian' or 'bernoulli', got {scheme!r}")
    for m in layers:
        w = m.weight
        s = sigma if sigma is not None else math.sqrt(2.0 / (w[0].numel()))
        z = torch.randn(w.shape, generator=generator, dtype=w.dtype, device="cpu")
        if scheme == "bernoulli":
            z = torch.sign(z)
        w.copy_(s * z)
        if m.bias is not None:
            m.bias.zero_()
