"""The one blocked-Gram driver: every N x M kernel matrix of npk is filled here, tile by tile.

    G[a, b] = k(x_a, y_b),  a < N, b < M,  filled in b x b tiles G[I, J] = tile(prepare(X[I]), prepare(Y[J]))

A kernel plugs in as a `TileKernel` (`npk.kernels.tiles`): one function `tile` from the features of two slices of inputs to
their (n, m, ...) block. The driver
  - checks the output first (`check_output`: writable, shape and dtype, free disk), then memory
    (`preflight`): the Gram (unless it goes to a file), what the kernel keeps for all inputs (e.g. packed
    gates) and one tile's work, against `max_memory` or `npk.kernels.memory.available_memory()`;
  - computes only the upper tiles of a symmetric Gram (Y None) and mirrors them, iterating tiles lazily;
  - writes into `out`: a new tensor, a numpy array / memmap, or a `.npy` path (a memmap, so a Gram larger
    than memory is filled tile by tile);
  - resumes from a `TileStore` in `checkpoint_dir` (`npk.kernels.store`), keyed by a fingerprint of the
    model, the inputs, the kernel's options and the tiling, and checked before `out` is opened;
  - sends tiles to a Dask cluster with `scheduler=` (`npk.kernels.dist`); the result is the same, bit for bit.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..files import check_free_disk
from ..validate import byte_count
from .memory import available_memory, memory_limit  # noqa: F401  (available_memory: still importable from here)
from .store import TileStore, digest_tensors, model_fingerprint
from .tiles import TileKernel, take


def blocked_gram(kernel: TileKernel, X, Y=None, *, block: int, out=None, checkpoint_dir=None, scheduler=None,
                 progress: bool | None = None, max_memory: int | None = None, resident: dict | None = None,
                 entry: str = "the Gram") -> torch.Tensor:
    """Fill the Gram of `kernel` between the inputs X (N samples) and Y (M; None: Y = X, symmetric).

    Args:
        kernel: the TileKernel.
        X, Y: a tensor or a tuple of sample-indexed objects (tensors, PackedGates), sliced together.
        block: tile side (samples).
        out: None (a new tensor on X's device), a numpy array / memmap of shape (N, M, *extra) and the
            kernel's dtype, or a path ending in .npy (created, or reopened to resume with checkpoint_dir).
        checkpoint_dir: a folder for the TileStore; finished tiles there are skipped on a rerun.
        scheduler: a dask.distributed Client or a scheduler address: tiles run on the cluster.
        progress: tqdm bar (None: for 8 tiles or more).
        max_memory: bytes the computation may use (default: the memory available now).
        resident: {what: bytes} the caller already keeps for all inputs (counted by the preflight).
        entry: the name used in the preflight message (e.g. "npk_gram").
    Returns:
        The Gram (N, M, *extra), a tensor; with out= an array or path, a tensor sharing its memory.

    Example:
        >>> class Dot(TileKernel):
        ...     def tile(self, fx, fy): return fx @ fy.T
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> torch.allclose(blocked_gram(Dot(), X, block=2), X @ X.T)
        True
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    N, M = _length(X), _length(Y)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block (tile side in samples) must be a positive int, got {block!r}")
    block = min(block, max(N, M, 1))
    shape = (N, M, *kernel.extra_shape)
    gram_bytes = math.prod(shape) * dtype_size(kernel.dtype)
    check_output(out, shape, kernel.dtype)
    preflight(entry, {"Gram": 0 if out is not None else gram_bytes,
                      **(resident or {}), "one tile": kernel.work_bytes(block, block)}, max_memory)
    fresh = out is not None and not Path(out).exists() if isinstance(out, (str, os.PathLike)) else False
    store = None
    if checkpoint_dir is not None:
        fingerprint = {"model": [model_fingerprint(m) for m in kernel.modules()],
                       "inputs": _inputs_digest(X, None if symmetric else Y), "kernel": kernel.key,
                       "tiling": {"N": N, "M": M, "block": block, "symmetric": symmetric, "dtype": str(kernel.dtype)}}
        store = TileStore(checkpoint_dir, fingerprint, holds_tiles=not isinstance(out, (str, os.PathLike, np.memmap)))
    rows, cols = _cuts(N, block), _cuts(M, block)
    total = len(rows) * (len(rows) + 1) // 2 if symmetric else len(rows) * len(cols)
    with (store or contextlib.nullcontext()) as store:   # the store is checked before out is touched
        if store is not None and store.holds_tiles:
            written = sum(p.stat().st_size for p in store.dir.glob("tile_*.pt"))   # a resume needs the rest
            check_free_disk(store.dir, gram_bytes * total // max(1, len(rows) * len(cols)) - written, "the tile store")
        H, array = _output(out, shape, kernel.dtype, _device(X))
        if store is not None and fresh:
            store.forget_tiles()    # records of tiles in an output file that is gone
        with _bar(total, progress, kernel.name, kernel.note) as bar:

            def pending():   # lazily: the tiles not in the store (finished ones are placed on the way)
                for i, j in _tiles(len(rows), len(cols), symmetric):
                    done = store.load(i, j, written=H[rows[i], cols[j]]) if store is not None else None
                    if done is None:
                        yield i, j
                        continue
                    _place(H, H[rows[i], cols[j]] if done is True else done, rows[i], cols[j], symmetric and i != j)
                    bar.update()

            todo = pending()
            if scheduler is not None:
                from .dist import dask_tiles
                results = dask_tiles(scheduler, kernel, X, Y, todo, rows, cols, store)
            else:
                results = _serial_tiles(kernel, X, Y, todo, rows, cols, symmetric)
            pairs, start = 0, time.perf_counter()
            for i, j, tile in results:
                _place(H, tile, rows[i], cols[j], symmetric and i != j)
                pairs += tile.shape[0] * tile.shape[1]
                bar.set_postfix_str(f"{(time.perf_counter() - start) * 1e3 / pairs:.3g} ms/pair", refresh=False)
                if store is not None and not (scheduler is not None and store.holds_tiles):   # workers wrote those
                    store.save(i, j, H[rows[i], cols[j]])
                bar.update()
    if array is not None and hasattr(array, "flush"):
        array.flush()
    return H


# ----------------------------------------------------------------------------------- memory
def preflight(entry: str, parts: dict[str, int], max_memory: int | None = None) -> int:
    """Refuse, before anything is allocated, a computation whose memory estimate exceeds the limit.

    Args:
        entry: what is being computed, for the message ("npk_gram").
        parts: {what: bytes} of the estimate (the Gram, gates, one tile's work, ...).
        max_memory: the limit in bytes (default: `available_memory()`).
    Returns:
        The estimate in bytes; raises MemoryError with one line (estimate, limit, what to change) if over.

    Example:
        >>> preflight("npk_gram", {"Gram": 10 * 2**30}, max_memory=2**30)   # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        MemoryError: npk_gram needs about 10 GiB (Gram 10 GiB) but max_memory is 1 GiB; ...
    """
    need = sum(parts.values())
    limit, source = memory_limit() if max_memory is None else (byte_count("max_memory", max_memory), "")
    if need > limit:
        detail = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items() if v)
        where = f"max_memory is {format_bytes(limit)}" if not source else \
            f"only {format_bytes(limit)} is {source}"
        to_disk = "out= a .npy file (the Gram then lives on disk) with checkpoint_dir= to resume, " \
            if parts.get("Gram") else ""
        raise MemoryError(f"{entry} needs about {format_bytes(need)} ({detail}) but {where}; use a smaller N, "
                          f"{to_disk}a smaller memory_budget (smaller tiles), or raise max_memory")
    return need


def preflight_grams(entry: str, sizes, itemsize: int = 8, memory_budget: int = 2**30,
                    max_memory: int | None = None) -> int:
    """The preflight of a computation that keeps Grams of `sizes` [(N, M), ...] (M None: N) in memory.

    For callers (experiments, scripts) that want to refuse before spending time on training: every
    kernel sizes its tiles under `memory_budget`, so the estimate is the Grams plus one budget.

    Example:
        >>> preflight_grams("regimes", [(50_000, None), (10_000, 50_000)], max_memory=16 * 2**30)  # doctest: +SKIP
        MemoryError: regimes needs about 23.4 GiB (Grams 22.4 GiB, one tile 1 GiB) but max_memory is 16 GiB; ...
    """
    grams = sum(n * (n if m is None else m) for n, m in sizes) * itemsize
    return preflight(entry, {"Grams": grams, "one tile": memory_budget}, max_memory)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------- output
def check_output(out, shape: tuple, dtype: torch.dtype) -> None:
    """Refuse, before anything is computed or written, an `out` that cannot take the Gram: the wrong type,
    shape or dtype, a read-only array, a path that is not a writable .npy file, or too little free disk."""
    np_dtype = np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    if out is None:
        return
    if isinstance(out, np.ndarray):
        if out.shape != shape or out.dtype != np_dtype:
            raise ValueError(f"out must have shape {shape} and dtype {np_dtype}, got {out.shape} {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out is read-only (a memmap opened with mode 'r', or flags.writeable False); pass a "
                             "writable array, e.g. np.load(path, mmap_mode='r+'), or a .npy path")
        return
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be None, a numpy array / memmap or a .npy path, got {type(out).__name__}")
    path = Path(out)
    if path.suffix != ".npy" or not str(out).strip():
        raise ValueError(f"out must be a numpy array or a path ending in .npy, got {str(out)!r}")
    if path.is_dir() or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"out {path}: {'is a folder' if path.is_dir() else 'is not writable'}; expected a "
                         f"writable .npy file (new or holding this Gram)")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ValueError(f"out {path}: the folder {path.parent} {'does not exist' if not path.parent.is_dir() else 'is not writable'}; "
                         f"create it, or choose a writable folder")
    need = math.prod(shape) * np_dtype.itemsize
    check_free_disk(path.parent, need - (path.stat().st_size if path.exists() else 0), f"out {path}")


def _output(out, shape: tuple, dtype: torch.dtype, device) -> tuple[torch.Tensor, np.ndarray | None]:
    """(tensor to fill, the numpy array behind it or None) for out = None, an array, or a .npy path (checked
    by `check_output`); a new file's blocks are reserved, so a full disk is an error now, not a SIGBUS later."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device), None
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out), out
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    path = Path(out)
    array = np.load(path, mmap_mode="r+") if path.exists() else None
    if array is None or array.shape != shape or array.dtype != np_dtype:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=shape)
        try:
            reserve(path)
        except OSError:
            del array
            path.unlink()   # it held nothing yet
            raise
    return torch.from_numpy(array), array


def reserve(path: Path) -> None:
    """Allocate the blocks of a (sparse) file now; OSError naming it when the disk is full."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):   # a file system without fallocate
            return
        raise OSError(f"out {path}: cannot reserve {format_bytes(os.fstat(fd).st_size)} for the Gram "
                      f"({err.strerror}); free disk space, or choose another folder") from None
    finally:
        os.close(fd)


def _place(H: torch.Tensor, tile: torch.Tensor, rs: slice, cs: slice, mirror: bool) -> None:
    """H[rs, cs] = tile, and its transpose at H[cs, rs] (output axes swapped too) when mirror."""
    H[rs, cs] = tile.to(device=H.device, dtype=H.dtype)
    if mirror:
        H[cs, rs] = H[rs, cs].transpose(0, 1).transpose(-1, -2) if H.dim() == 4 else H[rs, cs].T


# ------------------------------------------------------------------------------------ tiles
def _cuts(n: int, block: int) -> list[slice]:
    return [slice(r, min(r + block, n)) for r in range(0, n, block)] or [slice(0, 0)]


def _tiles(n_rows: int, n_cols: int, symmetric: bool) -> Iterator[tuple[int, int]]:
    for i in range(n_rows):
        for j in range(i if symmetric else 0, n_cols):
            yield i, j


def _serial_tiles(kernel: TileKernel, X, Y, todo, rows, cols, symmetric: bool):
    """(i, j, tile) for every tile to do, keeping the features of `kernel.cache_blocks` blocks."""
    cache: OrderedDict = OrderedDict()

    def features(side: str, k: int, inputs, cuts):
        key = ("x" if symmetric else side, k)
        if key not in cache:
            cache[key] = kernel.prepare(take(inputs, cuts[k]))
            while len(cache) > max(2, kernel.cache_blocks):
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    for i, j in todo:
        fx = features("x", i, X, rows)
        yield i, j, kernel.tile(fx, features("y", j, Y, cols))


def _length(inputs) -> int:
    return len(inputs[0] if isinstance(inputs, tuple) else inputs)


def _device(inputs):
    first = inputs[0] if isinstance(inputs, tuple) else inputs
    return first.device if isinstance(first, torch.Tensor) else "cpu"


def _inputs_digest(X, Y) -> str:
    tensors = [t for inputs in (X, Y) if inputs is not None
               for t in (inputs if isinstance(inputs, tuple) else (inputs,)) if isinstance(t, torch.Tensor)]
    return digest_tensors(*tensors, extra=f"{Y is None}")


def _bar(total: int, enabled: bool | None, name: str, note: str = ""):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"{name} tiles" + (f" ({note})" if note else ""), unit="tile",
                disable=(total < 8) if enabled is None else not enabled)
