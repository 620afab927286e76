"""Kernels of gated networks: exact NPK, empirical NTK, expected / infinite-width kernels, diagnostics."""
from .npk import npk_gram
from .reference import path_features, path_values, reference_npk, reference_output

__all__ = ["npk_gram", "path_features", "path_values", "reference_npk", "reference_output"]
