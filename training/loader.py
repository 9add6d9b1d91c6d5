"""Streaming batches out of a store group: an ``IterableDataset`` over its chunks.

Every chunk of a background group holds the channel mixture of the whole group (the store's
mixture invariant, :mod:`megaset.storage.mix`), so any subset of chunks is a faithful sample
and ranks can read disjoint chunks in any order:

* per epoch, a permutation of the chunk indices seeded by ``(seed, epoch)``, the same on every
  rank; shard s of n (a shard is one rank, or one DataLoader worker of one rank) takes
  every n-th chunk of it, so the shards read disjoint chunks that cover the group once;
* consecutive chunks of a shard are grouped in windows of ``shuffle_chunks`` chunks whose rows
  are shuffled together (a permutation seeded by the epoch and the window's first chunk) and cut
  into batches; batches run on across windows, so all but a shard's last batch are full;
* with ``equal_batches`` every shard yields ``min over shards of ceil(rows / batch_size)``
  batches, computed from the chunk sizes alone, so no DDP rank waits on a peer that stopped
  early; the rows beyond (at most about one chunk per shard, different ones every epoch) are
  skipped for that epoch;
* a pool of ``threads`` reader threads keeps ``read_ahead`` chunks in flight and scales them
  (threads, not forked workers: zarr's async I/O can deadlock in a forked child), and one more
  thread assembles up to ``read_ahead`` batches ahead, so that the consumer (the training step)
  only takes finished batches. Memory is bounded by these settings, whatever the size of the
  store: the chunks in flight, one window's chunks and the buffer they are gathered in (reused
  from window to window), the batches ready or kept by the consumer, and zarr's decode buffers
  in each reader thread. Peak memory above the process's own, measured with the defaults
  (2 threads, 2 chunks ahead, 4 shuffled together): 286 MiB for a train group of 127 k events
  in chunks of 8192 x 529 float32 (16.6 MiB), 357 MiB for one of 10.4 M events in chunks of
  16384 (33 MiB); with 1 thread, 1 ahead and no shuffle window, 138 and 196 MiB.

The rank is detected in ``__iter__`` (from ``torch.distributed`` and
``torch.utils.data.get_worker_info``), not when the dataset is built. ``state_dict`` records
(epoch, position in batches); a dataset loaded from it resumes at exactly the next batch without
reading the windows before it.
"""

from __future__ import annotations

import collections
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from megaset.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from megaset.storage.store import StoreGroup
    from megaset.training.scaling import Scaling

__all__ = ["ChunkDataset", "current_shard"]


def current_shard() -> tuple[int, int]:
    """``(shard, n_shards)`` of the calling code: DDP rank x DataLoader worker."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    if info is None:
        return rank, world
    return rank * info.num_workers + info.id, world * info.num_workers


class ChunkDataset(IterableDataset):
    """Batches ``(x [B, F] float32, weight [B] float32)`` from the chunks of one store group.

    Parameters
    ----------
    group
        A :class:`megaset.storage.store.StoreGroup` (``store.group("train")``).
    batch_size
        Events per batch and shard.
    scaling
        Applied to the features as each chunk is read; ``None`` passes them unchanged.
    seed
        Seeds the chunk permutation and the in-window shuffles, with the epoch.
    shuffle
        ``False`` reads every shard's chunks in index order, unshuffled (validation, scoring).
    equal_batches
        Give every shard the same number of batches (training under DDP).
    read_ahead, threads, shuffle_chunks
        Chunks in flight, reader threads, and chunks shuffled together.
    column
        The store column read as features (flattened after the event axis): ``rmm``, or a
        jet store's ``image``, ``constituents`` or ``tau``.
    context
        A one-number-per-event column appended unscaled as a last feature (the jet mass an
        adversary regresses), or ``None``.

    Examples
    --------
    >>> ds = ChunkDataset(store.group("train"), batch_size=8192, scaling=scaling)  # doctest: +SKIP
    >>> ds.set_epoch(3)                                                         # doctest: +SKIP
    >>> for x, weight in ds: ...                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        group: StoreGroup,
        *,
        batch_size: int,
        scaling: Scaling | None = None,
        seed: int = 0,
        shuffle: bool = True,
        equal_batches: bool = True,
        read_ahead: int = 2,
        threads: int = 2,
        shuffle_chunks: int = 4,
        column: str = "rmm",
        context: str | None = None,
    ):
        super().__init__()
        if min(batch_size, read_ahead, threads, shuffle_chunks) < 1:
            msg = (
                f"batch_size ({batch_size}), read_ahead ({read_ahead}), threads ({threads}) and "
                f"shuffle_chunks ({shuffle_chunks}) must all be at least 1"
            )
            raise ConfigError(msg)
        self.group = group
        self.batch_size = batch_size
        self.scaling = scaling
        self.seed = seed
        self.shuffle = shuffle
        self.equal_batches = equal_batches
        self.read_ahead = read_ahead
        self.threads = threads
        self.shuffle_chunks = shuffle_chunks if shuffle else 1
        self.column, self.context = column, context
        self.chunk_sizes = np.array(
            [s.stop - s.start for s in map(group.chunk_slice, range(group.n_chunks))], dtype=np.int64
        )
        self.epoch = 0
        self._position = 0
        self._n_shards: int | None = None

    # ------------------------------------------------------------------ plan

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch (as ``DistributedSampler.set_epoch``)."""
        self.epoch, self._position, self._n_shards = epoch, 0, None

    def assignment(self, n_shards: int) -> list[np.ndarray]:
        """Chunk indices of every shard in this epoch, in reading order."""
        n = len(self.chunk_sizes)
        order = np.random.default_rng((self.seed, self.epoch)).permutation(n) if self.shuffle else np.arange(n)
        return [order[s::n_shards] for s in range(n_shards)]

    def n_batches(self, shard: int, n_shards: int) -> int:
        """Batches shard ``shard`` of ``n_shards`` yields in this epoch."""
        rows = [int(self.chunk_sizes[c].sum()) for c in self.assignment(n_shards)]
        if not self.equal_batches:
            return -(-rows[shard] // self.batch_size)
        if min(rows) == 0:
            msg = (
                f"group {self.group.name!r} has {len(self.chunk_sizes)} chunks with events, fewer "
                f"than the {n_shards} ranks x loader workers reading it; lower store.chunk_len "
                "or training.ddp.world_size"
            )
            raise ConfigError(msg)
        return min(-(-r // self.batch_size) for r in rows)

    # ------------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_shard(*current_shard())

    def iter_shard(self, shard: int, n_shards: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one shard in this epoch, from the current position on.

        Running to the end advances the dataset to the next epoch.
        """
        if self._n_shards is not None and self._n_shards != n_shards:
            msg = (
                f"cannot resume loader of group {self.group.name!r} in the middle of epoch "
                f"{self.epoch}: it was read by {self._n_shards} shards (ranks x workers), "
                f"found {n_shards} instead; resume with the same world size"
            )
            raise CheckpointError(msg)
        self._n_shards = n_shards
        chunks = self.assignment(n_shards)[shard]
        n_batches = self.n_batches(shard, n_shards)
        k = self.shuffle_chunks
        windows = [chunks[i : i + k] for i in range(0, len(chunks), k)]
        ends = np.cumsum([self.chunk_sizes[w].sum() for w in windows], dtype=np.int64)
        start = self._position * self.batch_size
        stop = min(int(ends[-1]) if len(ends) else 0, n_batches * self.batch_size)
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(ends, stop, side="left"))
        skip = start - (int(ends[first - 1]) if first else 0)
        batches = self._batches(windows[first : last + 1], skip, n_batches - self._position)
        # The position counts the batches handed over, not those assembled ahead of them.
        for batch in _in_background(batches, self.read_ahead):
            self._position += 1
            yield batch
        self.set_epoch(self.epoch + 1)

    def _batches(self, windows: list[np.ndarray], skip: int, n_batches: int):
        """Cut the windows' shuffled rows into ``n_batches`` batches; batches run on across windows."""
        b = self.batch_size
        made = 0
        rest: tuple[np.ndarray, np.ndarray] | None = None
        for x, w, order in self._windows(windows):
            order, skip = order[skip:], 0
            start = 0
            if rest is not None:
                take = order[: b - len(rest[1])]
                start = len(take)
                rest = (np.concatenate([rest[0], np.take(x, take, axis=0)]), np.concatenate([rest[1], w[take]]))
                if len(rest[1]) < b:
                    continue
                made += 1
                yield torch.from_numpy(rest[0]), torch.from_numpy(rest[1])
                rest = None
            while start + b <= len(order) and made < n_batches:
                idx = order[start : start + b]
                start += b
                made += 1
                # A gathered copy: the window's buffer is reused for the next window.
                yield torch.from_numpy(np.take(x, idx, axis=0)), torch.from_numpy(w[idx])
            if made == n_batches:
                return
            if start < len(order):
                rest = (np.take(x, order[start:], axis=0), w[order[start:]])
        if rest is not None and made < n_batches:
            yield torch.from_numpy(rest[0]), torch.from_numpy(rest[1])

    def _windows(self, windows: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each window's rows and their (shuffled) order, read ahead by the thread pool.

        Several chunks are copied into one buffer reused from window to window, each as soon as
        it is read, so that a window holds its chunks once: a fresh window-sized array would be
        a new memory mapping, and faulting its pages in costs more than copying the data.
        """
        order = [int(c) for window in windows for c in window]
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="megaset-read")
        pending: collections.deque[Future] = collections.deque()
        buffer = None

        def take() -> tuple[np.ndarray, np.ndarray]:
            nonlocal submitted
            part = pending.popleft().result()
            if submitted < len(order):
                pending.append(pool.submit(self._read, order[submitted]))
                submitted += 1
            return part

        try:
            for c in order[: self.read_ahead]:
                pending.append(pool.submit(self._read, c))
            submitted = len(pending)
            for window in windows:
                if len(window) == 1:
                    x, w = take()
                else:
                    n = int(self.chunk_sizes[window].sum())
                    w, at = np.empty(n, np.float32), 0
                    for _ in window:
                        part_x, part_w = take()
                        if buffer is None:
                            rows = self.shuffle_chunks * int(self.chunk_sizes.max())
                            buffer = np.empty((rows, part_x.shape[1]), np.float32)
                        x = buffer[:n]
                        x[at : at + len(part_w)], w[at : at + len(part_w)] = part_x, part_w
                        at += len(part_w)
                        del part_x, part_w
                if self.shuffle:
                    rows = np.random.default_rng((self.seed, self.epoch, int(window[0]))).permutation(len(w))
                else:
                    rows = np.arange(len(w))
                yield x, w, rows
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        names = (self.column, "weight", *((self.context,) if self.context else ()))
        data = self.group.read_chunk(index, columns=names)
        x = np.asarray(data[self.column], dtype=np.float32)
        x = x.reshape(len(x), -1)
        if self.scaling is not None:
            # In place when the chunk was decoded into an array of its own (zarr does): a fresh
            # allocation costs more than the arithmetic, for every event of every epoch.
            mine = x.flags.owndata and x.flags.writeable
            x = self.scaling(x, out=x if mine else None)
        if self.context:
            x = np.concatenate([x, np.asarray(data[self.context], dtype=np.float32)[:, None]], axis=1)
        return x, np.asarray(data["weight"], dtype=np.float32)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Epoch and position (batches already yielded), with what a resume must match."""
        return {
            "group": self.group.name,
            "epoch": self.epoch,
            "position": self._position,
            "n_shards": self._n_shards,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle_chunks": self.shuffle_chunks,
            "chunk_sizes": self.chunk_sizes.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; refuses a state taken over other data or settings."""
        mine = self.state_dict()
        for key in ("group", "seed", "batch_size", "shuffle_chunks", "chunk_sizes"):
            if state[key] != mine[key]:
                found, expected = state[key], mine[key]
                if key == "chunk_sizes":
                    found, expected = f"{len(found)} chunks, {sum(found)} events", (
                        f"{len(expected)} chunks, {sum(expected)} events")
                msg = (
                    f"loader state of group {state['group']!r} does not fit this loader: {key} is "
                    f"{found} in the saved state, found {expected} instead; resume with the same "
                    "store and training settings, or start afresh"
                )
                raise CheckpointError(msg)
        self.epoch, self._position = state["epoch"], state["position"]
        self._n_shards = state["n_shards"] if state["position"] else None


_DONE = object()


def _in_background(items: Generator, depth: int) -> Iterator:
    """The items of ``items``, produced by a thread of their own up to ``depth`` ahead.

    Assembling a batch (concatenating a window, gathering shuffled rows) is a copy of every
    event: done in the consumer's thread, it would stop the training step each time. The
    producer's errors are raised in the consumer; a consumer that stops early stops it.
    """
    import queue
    import threading

    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(exc)
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="megaset-batches", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
