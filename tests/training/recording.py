"""A store group wrapper that records the chunks read through it (loader and DDP tests)."""

from __future__ import annotations

import threading


class Recording:
    """A store group that records which chunks are read, and by which thread."""

    def __init__(self, group):
        self._group = group
        self.reads: list[int] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._group, name)

    def read_chunk(self, i, columns=("rmm", "weight"), compact=()):
        with self._lock:
            self.reads.append(int(i))
            self.threads.add(threading.current_thread().name)
        return self._group.read_chunk(i, columns, compact)
