"""Gated networks: a value network gated by a gating network (see `npk.models.base`)."""
from .base import GatedNet
from .fc import DGN, DLGN, DLGNSF, DNN, FCNet
from . import regimes
from .gates import gate
from .regimes import REGIMES, make_regime

__all__ = ["GatedNet", "FCNet", "DNN", "DGN", "DLGN", "DLGNSF", "gate"]
from .conv import C4GAP, GCONV, VCONV, VGG, ConvDGN, ConvDLGN, ConvDLGNSF, ConvDNN, ConvNet
from .convert import from_sequential
from .trace import from_module
from .resnet import ResDGN, ResDLGN, ResDLGNSF, ResDNN, ResNet, resnet_preset

__all__ += ["ConvNet", "ConvDNN", "ConvDGN", "ConvDLGN", "ConvDLGNSF", "C4GAP", "VCONV", "GCONV", "VGG",
            "ResNet", "ResDNN", "ResDGN", "ResDLGN", "ResDLGNSF", "resnet_preset", "from_sequential",
            "from_module"]
__all__ += ["regimes", "REGIMES", "make_regime"]
