"""npk.locks: one writer per folder (the run folders' and the Gram tile stores' lock)."""
import os
import signal

import pytest

from helpers import lock_holder
from npk.locks import FolderLock, LockBusy, running


def test_a_second_holder_is_refused_with_the_first_ones_pid_even_in_one_process(tmp_path):
    with FolderLock(tmp_path / "lock"):
        with pytest.raises(LockBusy, match=f"held by pid {os.getpid()} since .* on ") as busy:
            FolderLock(tmp_path / "lock").acquire()
        assert busy.value.holder.startswith(f"pid {os.getpid()} since ")
        assert running(tmp_path / "lock")
    assert not (tmp_path / "lock").exists() and not running(tmp_path / "lock")


@pytest.mark.slow
def test_a_killed_holders_lock_is_taken_over_and_names_it(tmp_path):
    proc = lock_holder(tmp_path / "lock")
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
