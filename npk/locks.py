"""One writer per folder: a lock file held with fcntl.flock that names its holder.

The file holds the holder's pid, start time and host (JSON), for the messages only: the lock itself is
the flock, which the kernel drops when the holder dies, so a killed holder's lock is simply taken (and
`taken_over` names the holder it replaced). Two opens of the file conflict even within one process. A
clean release deletes the file while still holding it; an acquirer that locked the deleted file notices
(its inode is no longer the path's) and locks the new one.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class LockBusy(RuntimeError):
    """The lock is held by another live writer; `holder` reads 'pid N since T on HOST'."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.holder = holder


class FolderLock:
    """The exclusive claim of this process on the lock file `path` (a context manager).

    Attributes: taken_over ('pid N since T on HOST' of a holder that died holding the lock, else None).

    Example:
        >>> with FolderLock("runs/.regimes.lock") as lock:     # doctest: +SKIP
        ...     lock.taken_over                               # None, or who left the lock behind
    Raises LockBusy (with .holder) when another live writer holds it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path, self.taken_over, self._file = Path(path), None, None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        while True:
            f = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = describe(f.read())
                f.close()
                raise LockBusy(self.path, holder) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            f.close()   # the holder released (deleted) the file we locked: lock the new one
        f.seek(0)
        previous = f.read().strip()
        self.taken_over = describe(previous) if previous else None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "host": socket.gethostname()}))
        f.flush()
        os.fsync(f.fileno())
        self._file = f

    def release(self) -> None:
        """Delete the lock file and unlock it (a no-op when not held)."""
        if self._file is not None:
            self.path.unlink(missing_ok=True)   # while still holding it (see acquire)
            self._file.close()
            self._file = None


def describe(text: str) -> str:
    """'pid N since T' (plus ' on HOST' when recorded) from a lock file's content."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} since {info['since']}" + (f" on {info['host']}" if info.get("host") else "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "another process (starting)"


def running(path: str | os.PathLike) -> bool:
    """Whether the lock file `path` names a live process (of this host, or of another: not checkable)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        if info.get("host", socket.gethostname()) != socket.gethostname():
            return True
        os.kill(info["pid"], 0)
        return True
    except PermissionError:
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
