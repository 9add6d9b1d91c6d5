"""Input trees kept open per process, so that a tree's metadata is read once, whoever asks.

Reading a TTree's metadata (every branch, its baskets, its type) costs about a quarter of
reading the branches of a 30,000-event chunk. coffea reads it when it opens a chunk's file, and
the processor needs the same tree to read the chunk's branches. :data:`OPEN_TREES` is handed
to uproot as its ``object_cache`` (``uproot.open(..., object_cache=OPEN_TREES)``, also through
coffea's ``uproot_options``), so every tree uproot reads in this process is kept here:

* a tree read by coffea is lent to the processor while coffea's file is open (the chunk it
  is processing), so the chunk's tree is read once;
* a file whose second chunk comes to this process is opened here and kept open (a few files,
  least recently used first out), so its later chunks find its tree without reading it again,
  coffea's open included.

The cache pickles as a reference to the receiving process's own cache, so a Dask task gets its
worker's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["OpenTrees", "OPEN_TREES"]

#: Files kept open by a process. A worker reads one chunk at a time, mostly of one file.
_CAPACITY = 4
#: Files whose tree was lent, remembered to open a file at its second chunk here.
_REMEMBERED = 256


class OpenTrees(MutableMapping):
    """An uproot object cache that also opens and keeps files (see the module docstring)."""

    def __init__(self, capacity: int = _CAPACITY):
        self._capacity = capacity
        self._objects: dict[str, Any] = {}
        #: (file path, tree path) -> the object key of a tree read from that file.
        self._trees: dict[tuple[str, str], str] = {}
        self._files: OrderedDict[str, Any] = OrderedDict()  # path -> open uproot directory
        self._lent: OrderedDict[str, None] = OrderedDict()  # paths whose tree was lent, latest last
        self._lock = threading.RLock()

    def __reduce__(self):
        return (_process_trees, ())

    def tree(self, path: str, name: str, options: Mapping[str, Any] | None = None):
        """The tree ``name`` of the file at ``path``: a tree already read in this process whose
        file is still open, or read from the file (opened with uproot ``options``), which is
        then kept open."""
        import uproot

        with self._lock:
            found = self._open_tree(path, name)
            if found is not None and (path in self._files or path not in self._lent):
                self._lent[path] = None
                while len(self._lent) > _REMEMBERED:
                    self._lent.popitem(last=False)
                return found
            # A second chunk of this file here: keep the file open for its next ones.
            directory = uproot.open(path, **{**(options or {}), "object_cache": self, "array_cache": None})
            self._files[path] = directory
            while len(self._files) > self._capacity:
                old, evicted = self._files.popitem(last=False)
                self._forget(old)
                evicted.close()
            return directory[name]

    def _open_tree(self, path: str, name: str):
        key = self._trees.get((path, name.strip("/")))
        tree = self._objects.get(key) if key is not None else None
        if tree is None or tree.file.closed:
            return None
        return tree

    def _forget(self, path: str) -> None:
        for where in [w for w in self._trees if w[0] == path]:
            self._objects.pop(self._trees.pop(where), None)
        self._lent.pop(path, None)

    # The mapping uproot reads and fills.

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._objects[key]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            self._objects[key] = value
            file = getattr(value, "file", None)
            if file is not None and hasattr(value, "num_entries"):
                self._trees[file.file_path, value.object_path.strip("/")] = key
            # Trees of closed files (coffea closes a chunk's file after it) are dropped here;
            # uproot drops them too when it meets one.
            for stale in [k for k, v in self._objects.items() if getattr(getattr(v, "file", None), "closed", False)]:
                del self._objects[stale]
            for where in [w for w, k in self._trees.items() if k not in self._objects]:
                del self._trees[where]

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._objects[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._objects))

    def __len__(self) -> int:
        return len(self._objects)


#: This process's cache.
OPEN_TREES = OpenTrees()


def _process_trees() -> OpenTrees:
    return OPEN_TREES
