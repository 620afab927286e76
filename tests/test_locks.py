"""npk.locks: one writer per folder (the run folders' and the Gram tile stores' lock)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from npk.locks import FolderLock, LockBusy, running

ROOT = Path(__file__).resolve().parents[1]


def holder(path):
    """A process that holds the lock `path` until killed (started once it holds it)."""
    code = f"import time; from npk.locks import FolderLock; lock = FolderLock({str(path)!r}); lock.acquire(); " \
           f"print(1, flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "1"
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_pid_even_in_one_process(tmp_path):
    with FolderLock(tmp_path / "lock"):
        with pytest.raises(LockBusy, match=f"held by pid {os.getpid()} since .* on ") as busy:
            FolderLock(tmp_path / "lock").acquire()
        assert busy.value.holder.startswith(f"pid {os.getpid()} since ")
        assert running(tmp_path / "lock")
    assert not (tmp_path / "lock").exists() and not running(tmp_path / "lock")


def test_a_killed_holders_lock_is_taken_over_and_names_it(tmp_path):
    proc = holder(tmp_path / "lock")
    try:
        with pytest.raises(LockBusy, match=f"pid {proc.pid} since"):
            FolderLock(tmp_path / "lock").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "lock").exists() and not running(tmp_path / "lock")   # left behind, but not held
    with FolderLock(tmp_path / "lock") as lock:
        assert lock.taken_over.startswith(f"pid {proc.pid} since ")
    with FolderLock(tmp_path / "lock") as lock:                                 # released cleanly: nothing to note
        assert lock.taken_over is None
