"""Gated networks: a value network gated by a gating network (see `npk.models.base`)."""
from .base import GatedNet
from .fc import DGN, DLGN, DLGNSF, DNN, FCNet
from .gates import gate

__all__ = ["GatedNet", "FCNet", "DNN", "DGN", "DLGN", "DLGNSF", "gate"]
