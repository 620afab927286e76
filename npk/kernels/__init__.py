"""Kernels of gated networks: exact NPK, empirical NTK, expected / infinite-width kernels, diagnostics."""
from .npk import npk_gram

__all__ = ["npk_gram"]
