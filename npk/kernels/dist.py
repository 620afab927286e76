"""Gram tiles as Dask tasks (the optional `dist` extra: pip install -e ".[dist]").

The kernel (its model as module tree + state dict, see `TileKernel`) is scattered to every worker once;
each task gets the two input slices of its tile, computes the tile and, when the store holds tiles,
writes its record to the store (a path all workers share). The client places the tiles as they come.
A worker that dies loses its running tasks; the scheduler reruns them elsewhere, so the Gram is the
same as a serial run. At most `4 x threads` tasks are in flight, so no list of all tiles is built.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from .tiles import TileKernel, take
from .store import write_record


def client_of(scheduler):
    """(client, whether we opened it) for a dask.distributed Client or a scheduler address."""
    try:
        from distributed import Client
    except ImportError as err:
        raise ImportError("scheduler= needs Dask: pip install 'dask[distributed]' (or npk's extra: "
                          "pip install -e '.[dist]')") from err
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str):
        return Client(scheduler), True
    raise ValueError(f"scheduler must be a dask.distributed Client or an address like 'tcp://host:8786', "
                     f"got {type(scheduler).__name__}")


def dask_tiles(scheduler, kernel: TileKernel, X, Y, todo, rows, cols, store):
    """(i, j, tile) for the tiles in `todo`, computed on the cluster, in the order they finish."""
    from distributed import as_completed
    client, opened = client_of(scheduler)
    try:
        remote = client.scatter(kernel, broadcast=True, hash=False)
        in_flight = 4 * max(1, sum(client.nthreads().values()))
        workers_write = store is not None and store.holds_tiles
        queue = as_completed(with_results=True)   # results are fetched in the background as tasks finish
        where = {}

        def submit(i, j):
            future = client.submit(_tile_task, remote, take(X, rows[i]), take(Y, cols[j]),
                                   str(store.path(i, j)) if workers_write else None, pure=False)
            where[future.key] = (i, j)
            queue.add(future)

        tiles = iter(todo)
        for i, j in tiles:
            submit(i, j)
            if queue.count() >= in_flight:
                break
        for future, tile in queue:
            i, j = where.pop(future.key)
            future.release()
            nxt = next(tiles, None)
            if nxt is not None:
                submit(*nxt)
            yield i, j, tile
    finally:
        if opened:
            client.close()


def _tile_task(kernel: TileKernel, xs, ys, record: str | None):
    import torch
    _plain_malloc()
    with torch.no_grad():
        tile = kernel.compute(xs, ys).to(kernel.dtype)
    if record is not None:
        write_record(Path(record), tile, with_tile=True)
    return tile


@functools.cache
def _plain_malloc() -> None:
    """Give this worker glibc's usual heap behaviour for the tiles' tensors (once per process).

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, which freezes glibc's mmap threshold at
    128 KiB: every tensor above it is freshly mapped and page-faulted, and a conv NPK tile runs ~3x
    slower than in a plain process. Raising the mmap threshold to glibc's maximum (32 MiB) and the trim
    threshold with it restores the plain speed. A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)     # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 2**20)     # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
