"""Peak memory of this process, as the benchmarks and long runs report it.

Anonymous memory (RssAnon: heap, tensors, arrays) is what a computation allocates; pages of files it reads or
writes through memory maps (a Gram written with out=) count in the resident set VmRSS but are page cache that
the kernel can drop. Linux has no peak of RssAnon, so `PeakMemory` samples /proc/self/status in a thread.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path


class PeakMemory:
    """Peak RssAnon and VmRSS (bytes) of this process, sampled every `interval` seconds in a thread; base_anon
    and base_rss are the values at entry. Zeros where /proc/self/status does not exist (not Linux).

    Example:
        >>> with PeakMemory() as peak:                          # doctest: +SKIP
        ...     work()
        >>> peak.anon - peak.base_anon                          # doctest: +SKIP
    """

    def __init__(self, interval: float = 0.02):
        self.anon = self.rss = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        status = Path("/proc/self/status")
        while not self._stop.is_set():
            if status.exists():
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
                self.anon = max(self.anon, int(fields["RssAnon"].split()[0]) * 1024)
                self.rss = max(self.rss, int(fields["VmRSS"].split()[0]) * 1024)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        time.sleep(2.5 * self.interval)
        self.base_anon, self.base_rss = self.anon, self.rss
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
