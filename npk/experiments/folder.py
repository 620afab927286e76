"""One writer per run folder, forced reruns that cannot half-finish, and what failed runs left behind.

Beside a run folder <parent>/<name>:

    .<name>.lock   held (npk.locks: fcntl.flock) by the one process writing the folder, and holding its
                   pid, start time and host; the kernel drops the lock when that process dies, so the lock
                   of a killed run is taken over (with a note). A clean exit deletes it.
    .<name>.new    where a forced rerun (force=True) builds the new run: swapped in when it finishes,
                   so the folder holds either the old finished run or the new one, never a mix; an
                   interrupted forced rerun resumes from it on the next forced run.
    .<name>.old    the replaced run during the swap (deleted after it; put back if the swap was cut).

A run folder holds the marker .npk-run (older runs: config.json and versions.json): a
forced rerun replaces, and any removal deletes, only a folder that has it; a folder of the user's own
files is refused with one line naming it.

A run that fails or is interrupted records why in results.json ("stopped"); one that fails before
saving anything worth resuming removes the folder it created. The next run in the same parent folder
lists the unfinished runs there.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..locks import FolderLock, LockBusy, running
from ..report import RESULTS, write_json

MARKER = ".npk-run"
KEEP_NOTHING = {"config.json", "versions.json", RESULTS, "report.md", "cache", MARKER}  # a folder of only these is empty


class RunFolderError(ValueError):
    """A run folder that cannot be used: its message starts with the folder's path."""


class RunFolderBusy(RunFolderError):
    """Another process is writing the run folder."""


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def sibling(target: Path, suffix: str) -> Path:
    return target.parent / f".{target.name}.{suffix}"


class RunFolder:
    """The claim of one process on the run folder `target` (a context manager: the lock is held inside).

    Attributes: path (where this run writes: target, or .<name>.new for a forced rerun), notes (what
    the run should tell the user: a taken-over lock, a restored swap, unfinished runs), created (path
    did not exist before).

    Example:
        with RunFolder(Path("runs/regimes"), force=False) as place:
            ...write into place.path...
            place.commit()
    """

    def __init__(self, target, force: bool = False):
        self.target, self.force = Path(os.path.abspath(target)), force
        self.notes: list[str] = []
        self.lock_path = sibling(self.target, "lock")
        self._lock = FolderLock(self.lock_path)

    def __enter__(self) -> "RunFolder":
        self._make_parent()
        self._acquire()
        try:
            self._prepare()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    # ------------------------------------------------------------------ lock
    def _make_parent(self) -> None:
        if self.target.exists() and not self.target.is_dir():
            raise RunFolderError(f"{self.target}: is a file; expected a folder (new or existing)")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            probe = self.target.parent / f".{self.target.name}.probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise RunFolderError(f"{self.target}: cannot write in {self.target.parent} ({e.strerror or e}); "
                                 f"expected a folder path this user may create") from e

    def _acquire(self) -> None:
        try:
            self._lock.acquire()
        except LockBusy as busy:
            raise RunFolderBusy(f"{self.target}: in use by {busy.holder} (another npk run writes there); wait "
                                f"for it to finish, or choose another folder") from None
        if self._lock.taken_over:
            self.notes.append(f"took over the lock of {self.target} from {self._lock.taken_over}, which ended "
                              f"without releasing it (killed?)")

    # ------------------------------------------------------------------ folders
    def _prepare(self) -> None:
        old, new = sibling(self.target, "old"), sibling(self.target, "new")
        if old.exists():
            if self.target.exists():  # the swap finished; only deleting the old run was cut
                remove_run(old)
            else:
                os.rename(old, self.target)
                self.notes.append(f"put back the finished run of {self.target}: a forced rerun was cut while "
                                  f"swapping it out")
        if new.exists() and _results(new).get("finished") is True:   # cut between finishing and the swap
            self.path = new
            self.commit()
            self.notes.append(f"swapped in the finished forced rerun of {self.target}: the run that made it "
                              f"stopped before swapping it in")
        if self.force:
            if self.target.exists() and any(self.target.iterdir()) and not is_run_folder(self.target):
                raise RunFolderError(f"{self.target}: holds files npk did not make (no {MARKER}); --force replaces "
                                     f"only an npk run folder; choose another --out, or empty that folder")
            if new.exists():
                self.notes.append(f"resuming the interrupted forced rerun in {new}")
            self.path = new
        else:
            if new.exists():
                self.notes.append(f"{new} holds an unfinished forced rerun of {self.target}; pass force=True "
                                  f"(--force) to resume it, or delete it")
            self.path = self.target
        self.created = not self.path.exists()
        self.path.mkdir(exist_ok=True)
        if self.created or is_run_folder(self.path):
            (self.path / MARKER).touch()
        stopped = _results(self.path).get("stopped")
        if stopped and _results(self.path).get("finished") is not True:
            self.notes.append(f"resuming {self.path}: the last run there stopped at {stopped.get('at')} "
                              f"({stopped.get('reason')})")
        others = unfinished_runs(self.target.parent, skip={self.target.name})
        if others:
            self.notes.append(f"unfinished runs in {self.target.parent} (failed or interrupted): "
                              f"{'; '.join(others)}; rerun them to resume, or delete them")

    def commit(self) -> None:
        """Make the finished run the folder's content: for a forced rerun, swap .<name>.new in."""
        if self.path == self.target:
            return
        old = sibling(self.target, "old")
        if self.target.exists():
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        remove_run(old)
        self.path = self.target

    def stopped(self, results: dict, error: BaseException) -> None:
        """Record why the run stopped in results.json, or remove the folder when it created it and holds
        nothing worth resuming."""
        if self.created and _nothing_saved(self.path):
            remove_run(self.path)
            return
        reason = "interrupted" if isinstance(error, KeyboardInterrupt) else \
            f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        results["stopped"] = {"at": now(), "reason": reason}
        write_json(self.path / RESULTS, results)


def is_run_folder(folder: Path) -> bool:
    """Whether npk made `folder` as a run folder: its marker, or the two files every older run wrote first."""
    return (folder / MARKER).is_file() or all((folder / f).is_file() for f in ("config.json", "versions.json"))


def remove_run(folder: Path) -> None:
    """Delete a run folder npk made; refuse (RunFolderError naming it) any other folder."""
    if not folder.exists():
        return
    if not is_run_folder(folder):
        raise RunFolderError(f"{folder}: not an npk run folder (no {MARKER}); npk deletes only its own folders, "
                             f"move or delete it yourself")
    shutil.rmtree(folder, ignore_errors=True)


def _results(folder: Path) -> dict:
    try:
        results = json.loads((folder / RESULTS).read_text(encoding="utf-8"))
        return results if isinstance(results, dict) else {}
    except (OSError, ValueError):
        return {}


def _nothing_saved(folder: Path) -> bool:
    """True when the folder holds only the files every run writes at its start, and an empty cache."""
    if any(p.name not in KEEP_NOTHING for p in folder.iterdir()):
        return False
    cache = folder / "cache"
    return not cache.exists() or not any(cache.iterdir())


def unfinished_runs(parent: Path, skip=(), limit: int = 5) -> list[str]:
    """'name (why it stopped)' for the run folders in `parent` (they hold config.json and versions.json)
    whose run is unfinished and not running; at most `limit` of them, then how many more."""
    found = []
    try:
        folders = sorted(p for p in parent.iterdir() if not p.name.startswith(".") and p.name not in skip)
        for folder in folders:
            if not is_run_folder(folder) or running(sibling(folder, "lock")):
                continue
            results = _results(folder)
            if results.get("finished") is not True:
                stopped = results.get("stopped")
                found.append(f"{folder.name} ({'stopped at ' + stopped['at'] + ': ' + stopped['reason'] if stopped else 'interrupted'})")
    except OSError:
        pass  # an unreadable parent or entry: nothing to report
    return found[:limit] + ([f"and {len(found) - limit} more"] if len(found) > limit else [])
