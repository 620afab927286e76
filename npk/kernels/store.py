"""Finished Gram tiles on disk: a store that a rerun resumes from and that cannot be reused wrongly.

A store is a folder holding
    gram.json        the fingerprint of the Gram it belongs to: model (architecture and weights), inputs,
                     kernel and options, tiling, and whether records hold tiles or only checksums (out=).
                     Opening the folder for another Gram is refused, naming the parts that differ; so is a
                     non-empty folder without gram.json (npk did not make it, or its description is lost).
    lock             held (npk.locks: fcntl.flock) by the process filling it, naming its pid, start time and
                     host; a second live writer is refused ("in use by pid N since T on HOST"), a killed
                     one's lock is taken over
    tile_I_J.pt      one record per finished tile: its position (I, J), the store's id (a digest of
                     gram.json), its sha256 and, unless the tiles live in an output file (out=), the tile
Records are written under a temporary name unique to the writer and moved into place (atomic; temporary
files a killed writer left are removed when the store is next opened), loaded with
torch.load(weights_only=True) only, and checked against their position, store id and checksum: a
truncated, corrupt or misplaced record is reported with a warning naming the file and its tile is
recomputed. The checksum detects damage, not tampering: it is not authentication, so only open stores
you trust. A finished store in a read-only folder is read without its lock.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from ..locks import FolderLock, LockBusy

META_FILE, LOCK_FILE = "gram.json", "lock"


# ------------------------------------------------------------------------------- fingerprints
def digest_tensors(*tensors, extra: str = "") -> str:
    """sha256 (hex, 16 characters) of tensors' dtypes, shapes and bytes, plus a text."""
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()[:16]


def tensor_bytes(t) -> memoryview:
    """The raw bytes of a torch tensor or numpy array (contiguous copy if needed, on the CPU)."""
    if isinstance(t, np.ndarray):
        return memoryview(np.ascontiguousarray(t)).cast("B")
    t = t.detach().cpu().contiguous()
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def model_fingerprint(model: torch.nn.Module) -> str:
    """Architecture (type, module tree and the plain attributes of every submodule: gating, gate kind,
    beta, eps, layer order, gate permutations, ...) and every state tensor of `model`."""
    parts = [type(model).__qualname__, torch.nn.Module.__repr__(model)]   # the module tree, as before GatedNet's repr
    for name, module in model.named_modules():
        attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}
        parts.append(f"{name}:{json.dumps(attrs, sort_keys=True, default=_tensor_digest)}")
    state = model.state_dict()
    names = sorted(state)
    return digest_tensors(*(state[n] for n in names), extra="\n".join(parts) + str(names))


def _plain(value) -> bool:
    """True for numbers, strings, None, tensors and lists / tuples / dicts of them."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return isinstance(value, (str, int, float, bool, type(None), torch.Tensor))


def _tensor_digest(t: torch.Tensor) -> str:
    return digest_tensors(t)


def checksum(tile) -> str:
    return hashlib.sha256(tensor_bytes(tile)).hexdigest()


# ------------------------------------------------------------------------------------- store
class TileStore:
    """The records of one Gram's finished tiles in `directory` (see the module docstring).

    fingerprint: {part: value} (model, inputs, kernel, tiling); holds_tiles: False when the tiles live in an
    output file and records hold only checksums. Use as a context manager: it takes and releases the lock.

    Example:
        >>> with TileStore("ckpt", {"tiling": [4, 4, 2]}) as store:        # doctest: +SKIP
        ...     store.save(0, 0, torch.ones(2, 2)); store.load(0, 0)
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: dict, holds_tiles: bool = True):
        if not str(directory).strip():
            raise ValueError("checkpoint_dir must be a folder path, got ''; pass a path (it is created), or None")
        self.dir = Path(directory).absolute()     # absolute: Dask workers write records there too
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"checkpoint_dir {self.dir} is a file; expected a folder (new, or a tile store)")
        fingerprint = {**fingerprint, "records": "tiles" if holds_tiles else "checksums (the tiles are in out=)"}
        self.fingerprint, self.holds_tiles = json.loads(json.dumps(fingerprint)), holds_tiles
        self.id = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.read_only = False
        self._claim = FolderLock(self.dir / LOCK_FILE)   # the client's only: Dask workers never take it

    def __enter__(self) -> "TileStore":
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"checkpoint_dir {self.dir}: cannot create it ({err.strerror}); expected a writable "
                          f"folder path") from None
        self._lock()
        try:
            self._check_fingerprint()
            if not self.read_only:
                for tmp in self.dir.glob(".*.tmp"):   # left by a killed writer (ours have the lock now)
                    tmp.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ fingerprint and lock
    def _check_fingerprint(self) -> None:
        meta = self.dir / META_FILE
        foreign = sorted(p.name for p in self.dir.iterdir() if p.name not in (LOCK_FILE, META_FILE))
        if not meta.exists() and foreign:
            raise ValueError(f"{self.dir} holds {len(foreign)} files ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}) but no {META_FILE}: "
                             f"not an npk tile store, or its description was deleted, so its tiles cannot be "
                             f"trusted; use an empty or new checkpoint_dir (npk deletes nothing there)")
        if meta.exists():
            try:
                old = json.loads(meta.read_text())
            except (OSError, ValueError):
                old = {"unreadable": True}
            if old != self.fingerprint:
                differ = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
                raise ValueError(f"{self.dir} holds tiles of another Gram ({', '.join(differ)} differ: stored "
                                 f"{[old.get(k) for k in differ]}, now {[self.fingerprint.get(k) for k in differ]}); "
                                 f"use an empty checkpoint_dir, or the same model, inputs, options and out=")
        else:
            self._write(meta, lambda tmp: tmp.write_text(json.dumps(self.fingerprint)))

    def _write(self, path: Path, write) -> None:
        """atomic_write, with one line naming the store when the disk is full or the folder read-only."""
        try:
            atomic_write(path, write)
        except (OSError, RuntimeError) as err:   # torch.save reports a full disk as a RuntimeError
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise OSError(f"cannot write {path} ({reason}); free disk space in {self.dir}, make it writable, "
                          f"or use another checkpoint_dir") from None

    def _lock(self) -> None:
        """Claim the folder: refuse if another live process holds it; take over a dead process's claim."""
        try:
            self._claim.acquire()
        except PermissionError:
            self.read_only = True    # a finished store in a read-only folder can still be read
        except OSError as err:
            if err.errno != errno.EROFS:
                raise
            self.read_only = True
        except LockBusy as busy:
            raise RuntimeError(f"{self.dir} is in use by {busy.holder}; wait for it to finish, or give this "
                               f"Gram another checkpoint_dir") from None

    def close(self) -> None:
        self._claim.release()

    # ---------------------------------------------------------------------------- records
    def path(self, i: int, j: int) -> Path:
        return self.dir / f"tile_{i}_{j}.pt"

    def save(self, i: int, j: int, tile: torch.Tensor) -> None:
        """Record tile (i, j): its position, the store id, its checksum, and the tile if this store holds tiles."""
        self._write(self.path(i, j), record_writer(tile, self.holds_tiles, (i, j), self.id))

    def forget_tiles(self) -> None:
        """Delete the tile records (the store's own files; gram.json stays)."""
        for path in self.dir.glob("tile_*.pt"):
            path.unlink()

    def load(self, i: int, j: int, written=None) -> torch.Tensor | bool | None:
        """The finished tile (i, j) (or True when `written`, the tile already in the output, matches its
        checksum); None when it is missing, or corrupt (with a warning naming the file)."""
        path = self.path(i, j)
        if not path.exists():
            return None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            place = (tuple(record.get("at", ())), record.get("store"))
            tile = record["tile"] if self.holds_tiles else written
            if checksum(tile) != record["sha256"]:
                raise ValueError("checksum mismatch")
        except Exception as err:   # any unreadable record is recomputed, never trusted
            warnings.warn(f"Gram tile file {path} is corrupt or truncated ({type(err).__name__}: "
                          f"{str(err)[:80]}); recomputing that tile", stacklevel=3)
            return None
        if place != ((i, j), self.id):
            warnings.warn(f"Gram tile file {path} holds tile {place[0]} of store {place[1]}, not tile {(i, j)} of "
                          f"this store ({self.id}); recomputing that tile", stacklevel=3)
            return None
        return record["tile"] if self.holds_tiles else True


def record_writer(tile: torch.Tensor, with_tile: bool, at: tuple[int, int], store: str):
    """write(tmp) of a tile record (position, store id, checksum, and the tile if with_tile), for atomic_write."""
    tile = tile.detach().cpu()
    record = {"at": tuple(at), "store": store, "sha256": checksum(tile), **({"tile": tile} if with_tile else {})}
    return lambda tmp: torch.save(record, tmp)


def remove_store(directory: str | os.PathLike) -> None:
    """Delete a tile store's own files (records, gram.json) and its folder if that empties it; a folder
    without gram.json is not a store and is left alone."""
    folder = Path(directory)
    if not (folder / META_FILE).is_file():
        return
    for path in folder.glob("tile_*.pt"):
        path.unlink()
    (folder / META_FILE).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
