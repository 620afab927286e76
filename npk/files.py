"""Writing files atomically, and reading back the .pt files npk writes (caches, checkpoints, Gram tiles):
weights_only loads that name the file when it cannot be read."""
from __future__ import annotations

import os
import pickle
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Callable

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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call write(tmp) and move tmp over `path`, so a reader never sees a half-written file.

    The temporary name is unique to the writer (pid and a random suffix), so concurrent writers of the
    same file never clash; the last move wins.

    Example:
        >>> atomic_write("state.pt", lambda tmp: torch.save({"epoch": 3}, tmp))  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_free_disk(folder: str | os.PathLike, need: int, what: str) -> None:
    """An OSError naming `what` unless the file system of `folder` has `need` bytes free."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OSError(f"{what} needs about {need / 2**20:.4g} MiB of disk but only {free / 2**20:.4g} MiB is "
                          f"free in {folder}; free disk space, or choose a folder on another disk")
