"""Imports every experiment module, so that each registers itself in `base.EXPERIMENTS`."""
from . import demo, kernels_vs_network  # noqa: F401
from . import theorems  # noqa: F401
from . import npk_evolution  # noqa: F401
from . import spectral  # noqa: F401
from . import regimes_table  # noqa: F401
from . import dnn_dgn_dlgn  # noqa: F401
from . import gate_copy  # noqa: F401
from . import shuffle_and_ones  # noqa: F401
from . import primal_dual  # noqa: F401
