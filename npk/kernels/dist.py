"""Gram tiles as Dask tasks (the optional `dist` extra: pip install -e ".[dist]").

The kernel (its model as module tree + state dict, see `TileKernel`) is scattered to every worker once;
each task gets the two input slices of its tile, computes the tile and, when the store holds tiles,
writes its record to the store (a path all workers share). The client places the tiles as they come.
A worker that dies loses its running tasks; the scheduler reruns them elsewhere, so the Gram is the
same as a serial run. At most `4 x threads` tasks are in flight, so no list of all tiles is built.
Before any task, every worker must see the store (the lock file this client holds, same content): a
worker on a machine where the path is another folder is named at once. A tile the cluster loses for
good (every worker died, the task was cancelled or failed) ends the run with one line naming it; the
finished tiles stay in the store. An address is connected to within CONNECT_TIMEOUT seconds; pass your
own Client(address, timeout=...) (or `npk gram --connect-timeout`) to wait longer.
"""
from __future__ import annotations

import ctypes
import functools
import time
from pathlib import Path

from ..files import atomic_write
from .tiles import TileKernel, take
from .store import LOCK_FILE, record_writer

CONNECT_TIMEOUT = 5.0   # seconds: an address that refuses or is not a Dask scheduler fails fast
POLL = 0.02             # seconds between looks at the futures when no tile has finished


def client_of(scheduler, timeout: float = CONNECT_TIMEOUT):
    """(client, whether we opened it) for a dask.distributed Client or a scheduler address (connected
    within `timeout` seconds, else a ValueError naming the address)."""
    try:
        from distributed import Client
    except ImportError as err:
        raise ImportError("scheduler= needs Dask: pip install 'dask[distributed]' (or npk's extra: "
                          "pip install -e '.[dist]')") from err
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str):
        try:
            return Client(scheduler, timeout=timeout), True
        except Exception as err:   # noqa: BLE001  (refused, timed out, or a listener that is not Dask)
            raise ValueError(f"scheduler {scheduler!r}: no Dask scheduler answered within {timeout:g} s "
                             f"({type(err).__name__}); expected the address of a running dask scheduler, like "
                             f"'tcp://host:8786'") from None
    raise ValueError(f"scheduler must be a dask.distributed Client or an address like 'tcp://host:8786', "
                     f"got {type(scheduler).__name__}")


def dask_tiles(scheduler, kernel: TileKernel, X, Y, todo, rows, cols, store):
    """(i, j, tile) for the tiles in `todo`, computed on the cluster, in the order they finish.

    Results are fetched in the background as tasks finish (`as_completed(with_results=True)`), and the loop
    polls it rather than blocking on it: when nothing has finished it looks for a cancelled future itself,
    since `as_completed` can miss a cancellation and then waits forever (dask/distributed#2571)."""
    from distributed import as_completed
    client, opened = client_of(scheduler)
    try:
        workers_write = store is not None and store.holds_tiles and not store.read_only
        if workers_write:
            check_workers_see(client, store)
        remote = client.scatter(kernel, broadcast=True, hash=False)
        in_flight = 4 * max(1, sum(client.nthreads().values()))
        queue = as_completed(with_results=True)
        where = {}                                             # future -> (i, j)

        def submit(i, j):
            record = (str(store.path(i, j)), (i, j), store.id) if workers_write else None
            future = client.submit(_tile_task, remote, take(X, rows[i]), take(Y, cols[j]), record, pure=False)
            where[future] = (i, j)
            queue.add(future)

        tiles = iter(todo)
        for i, j in tiles:
            submit(i, j)
            if len(where) >= in_flight:
                break
        while where:
            done = queue.next_batch(block=False)
            if not done:
                cancelled = next((f for f in where if f.cancelled()), None)
                if cancelled is not None:
                    raise _lost(where[cancelled], cancelled, "FutureCancelledError")
                time.sleep(POLL)
                continue
            for future, tile in done:
                ij = where.pop(future)
                if future.status != "finished" or isinstance(tile, BaseException):
                    raise _lost(ij, future, f"{type(tile).__name__} {str(tile)[:80]}")
                future.release()
                nxt = next(tiles, None)
                if nxt is not None:
                    submit(*nxt)
                yield (*ij, tile)
    finally:
        if opened:
            client.close()


def _lost(ij: tuple, future, why: str) -> RuntimeError:
    return RuntimeError(f"the Dask cluster lost tile {ij} ({future.status}: {why}); its workers died or the task "
                        f"was cancelled; rerun with the same checkpoint_dir to resume")


def check_workers_see(client, store) -> None:
    """A RuntimeError naming the workers that do not see the store's lock file as this client wrote it."""
    mine = (store.dir / LOCK_FILE).read_text()
    seen = client.run(_read_text, str(store.dir / LOCK_FILE))
    blind = sorted(worker for worker, text in seen.items() if text != mine)
    if blind:
        raise RuntimeError(f"Dask worker(s) {', '.join(blind)} cannot see the tile store {store.dir} (missing "
                           f"there, or another folder); give checkpoint_dir a path on a file system every "
                           f"worker shares")


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _tile_task(kernel: TileKernel, xs, ys, record: tuple | None):
    import torch
    _plain_malloc()
    with torch.no_grad():
        tile = kernel.compute(xs, ys).to(kernel.dtype)
    if record is not None:
        path, at, store = record
        atomic_write(Path(path), record_writer(tile, True, at, store))
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
