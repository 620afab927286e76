"""npk: the dual view of ReLU networks.

A ReLU network is gates times linear maps. npk splits it into a gating network and a value network,
computes the neural path kernel (NPK) of its gates exactly, its neural tangent kernels, and checks the
theorems that link them.
"""
from . import models
from .kernels.npk import npk_gram

__version__ = "0.1.0"
__all__ = ["models", "npk_gram", "__version__"]
