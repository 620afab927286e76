"""Reading back the .pt files npk writes (caches, checkpoints, Gram blocks): weights_only loads that name
the file when it cannot be read."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch


class UnreadableFile(ValueError):
    """A saved file that is truncated, corrupt or not npk's: the message names it."""


# What torch.load raises on a torn, truncated or foreign file (zip reader, unpickler, weights_only filter).
LOAD_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
               AttributeError, ImportError, IndexError, KeyError, TypeError)


def _numpy_globals() -> list:
    """What rebuilding numpy arrays and scalars needs (no code runs: arrays of objects are refused)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype,
            *[getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]]


def load_pt(path, map_location="cpu"):
    """torch.load(path, weights_only=True): tensors, numpy arrays and plain Python data only; or UnreadableFile
    naming `path`.

    Example: load_pt("runs/x/cache/gram-npk.pt") -> the saved object.
    """
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(Path(path), map_location=map_location, weights_only=True)
    except LOAD_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else ""
        if "Weights only load failed" in reason:   # torch's advice to load unsafely is not ours to give
            reason = "not a file of tensors and plain data: corrupt, or written by something else"
        raise UnreadableFile(f"{path} is unreadable ({type(e).__name__}: {reason})") from e
