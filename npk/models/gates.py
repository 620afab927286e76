"""Gate functions: a ReLU is relu(q) = G(q) * q with G the gate.

hard: G(q) = 1{q > 0}
soft: G(q) = (1 + eps) * sigmoid(beta * q)   (the 2020 code's DLNPF: beta = 4, eps = 0.1; the DLGN of
      2110.03403's code: sigmoid(4 q), eps = 0)
"""
from __future__ import annotations

import torch

GATE_KINDS = ("hard", "soft")


def check_kind(kind: str) -> str:
    if kind not in GATE_KINDS:
        raise ValueError(f"gate must be one of {GATE_KINDS}, got {kind!r}")
    return kind


def gate(q: torch.Tensor, kind: str = "hard", beta: float = 4.0, eps: float = 0.1) -> torch.Tensor:
    """The gate values in [0, 1] (hard) or [0, 1 + eps] (soft) for pre-activations q."""
    if check_kind(kind) == "hard":
        return (q > 0).to(q.dtype)
    return (1.0 + eps) * torch.sigmoid(beta * q)
