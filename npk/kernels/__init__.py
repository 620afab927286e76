"""Kernels of gated networks: exact NPK, empirical NTK, expected / infinite-width kernels, diagnostics."""
from .infinite import expected_npk, infinite_ntk
from .linalg import (alignment, centered_alignment, cosine_normalize, normalize, nu, principal_angles, spectrum,
                     top_k_energy)
from .npk import npk_gram
from .ntk import ntk_gram, parameter_group
from .reference import path_features, path_values, reference_npk, reference_output

__all__ = ["npk_gram", "ntk_gram", "parameter_group", "expected_npk", "infinite_ntk", "alignment", "centered_alignment",
           "cosine_normalize", "normalize", "nu", "principal_angles", "spectrum", "top_k_energy", "path_features",
           "path_values", "reference_npk", "reference_output"]
