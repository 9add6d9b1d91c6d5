"""Streaming batches out of a store group: an ``IterableDataset`` over its chunks.

Every chunk of a background group holds the channel mixture of the whole group (the store's
mixture invariant, :mod:`megaset.storage.mix`), so any subset of chunks is a faithful sample
and ranks can read disjoint chunks in any order:

* per epoch, a permutation of the chunk indices seeded by ``(seed, epoch)``, the same on every
  rank; shard s of n (a shard is one rank, or one DataLoader worker of one rank) takes
  every n-th chunk of it, so the shards read disjoint chunks that cover the group once;
* a group of fewer chunks than shards (a small sample's train group under DDP) is read in
  pieces instead: every chunk is cut into n row ranges and shard s takes one of each (the
  ranges rotate along the permutation so that no shard always gets the shorter ones), so every
  shard still has events and the shards still cover the group once; each shard then reads every
  chunk and keeps its rows, which costs little for a group that small. Only a group of fewer
  events than shards is refused;
* consecutive chunks of a shard are grouped in windows of ``shuffle_chunks`` chunks whose rows
  are shuffled together (a permutation seeded by the epoch and the window's first chunk) and cut
  into batches; batches run on across windows, so all but a shard's last batch are full;
* with ``equal_batches`` every shard yields ``min over shards of ceil(rows / batch_size)``
  batches, computed from the chunk sizes alone, so no DDP rank waits on a peer that stopped
  early; the rows beyond (at most about one chunk per shard, different ones every epoch) are
  skipped for that epoch;
* a pool of ``threads`` reader threads keeps ``read_ahead`` chunks in flight (threads, not
  forked workers: zarr's async I/O can deadlock in a forked child); each thread decodes its
  chunk, keeps only the features' non-zero cells
  (:class:`~megaset.storage.compact.CompactRows`: ~0.1 kB an RMM event instead of ~2.1 kB) and
  scales them (in pinned memory for a GPU). For a GPU, one more thread assembles up to
  ``read_ahead`` batches ahead, so that the consumer (the training step) only takes finished
  batches; on the CPU the consumer's thread assembles them (a thread of their own would compete
  with torch's threads for the cores);
* the pieces read are kept, as those scaled cells, while they fit in ``cache_mib``: later
  epochs take them from memory, and skip the read, the decoding and the compaction, which
  cost about as much CPU as a shallow model's training step. The pieces read first stay, so a
  group larger than the cache still finds the same share of every epoch there;
* the assembling works on ``device``: each chunk's cells are copied there (from pinned
  memory, without blocking, on a CUDA stream of the loader's own so that the copies overlap the
  training step) and a window stays in that compact form; each batch is made dense there,
  straight from the cells of its rows (the other cells hold the scaled zero): the host only
  decodes, compacts and scales the non-zero cells, and finds where each batch's cells go. Each
  cell goes through the same float32 subtraction and multiplication as in
  :class:`~megaset.training.scaling.Scaling`, so the batches are those of scaling and gathering
  the dense rows in numpy, bit for bit.

Memory is bounded by these settings, whatever the size of the store: the cache, the chunks in
flight, one window's cells (about 0.1 kB an RMM event), the batches ready or kept by the
consumer, and zarr's decode buffers in each reader thread. Peak memory above the process's own,
measured on the CPU with the defaults (2 threads, 2 chunks ahead, 4 shuffled together) when a
window was a dense buffer and before the cache: 286 MiB for a train group of 127 k events in
chunks of 8192 x 529 float32 (16.6 MiB), 357 MiB for one of 10.4 M events in chunks of 16384
(33 MiB); with 1 thread, 1 ahead and no shuffle window, 138 and 196 MiB. The dense window
buffer of four chunks (138 MB at 16384) is gone since.

The rank is detected in ``__iter__`` (from ``torch.distributed`` and
``torch.utils.data.get_worker_info``), not when the dataset is built. ``state_dict`` records
(epoch, position in batches); a dataset loaded from it resumes at exactly the next batch without
reading the windows before it.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from megaset.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from megaset.storage.store import StoreGroup
    from megaset.training.scaling import Scaling

__all__ = ["ChunkDataset", "current_shard"]

class _Piece(NamedTuple):
    """A piece as the reader threads hand it over, on the host: its features' non-zero cells,
    row after row (their columns, each row's count, their scaled values), the features' width,
    its weights and its context column (or ``None``). The values, weights and context are
    tensors (pinned for a GPU, so that their copy to it does not block); where the cells go is
    worked out in numpy, on the host."""

    columns: np.ndarray
    counts: np.ndarray
    values: torch.Tensor
    n_cells: int
    weight: torch.Tensor
    context: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        tensors = (self.values, self.weight, *((self.context,) if self.context is not None else ()))
        return self.columns.nbytes + self.counts.nbytes + sum(t.nbytes for t in tensors)


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
    """Batches ``(x [B, F] float32, weight [B] float32)`` on ``device`` from the chunks of one store group.

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
    cache_mib
        Memory for pieces kept after their first read, as their non-zero cells: later epochs
        take them from there instead of reading and decoding them again. 0 keeps none.
    column
        The store column read as features (flattened after the event axis): ``rmm``, or a
        jet store's ``image``, ``constituents`` or ``tau``.
    context
        A one-number-per-event column appended unscaled as a last feature (the jet mass an
        adversary regresses), or ``None``.
    device
        Where the batches are assembled and handed over (``cuda:0``); the CPU by default.

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
        cache_mib: float = 0.0,
        column: str = "rmm",
        context: str | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if cache_mib < 0:
            msg = f"cache_mib ({cache_mib}) must not be negative; 0 keeps no piece in memory"
            raise ConfigError(msg)
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
        self.cache_bytes = int(cache_mib * 2**20)
        # Pieces by (chunk, first row, rows), as _read gives them; filled by _windows' consumer
        # thread alone, so no lock.
        self._cache: dict[tuple[int, int, int], _Piece] = {}
        self._cached_bytes = 0
        self.column, self.context = column, context
        self.device = torch.device(device)
        self.chunk_sizes = np.array(
            [s.stop - s.start for s in map(group.chunk_slice, range(group.n_chunks))], dtype=np.int64
        )
        self.epoch = 0
        self._position = 0
        self._n_shards: int | None = None
        # The pieces read by the shards of the running epoch (see _pieces).
        self._piece_chunk, self._piece_start, self._piece_sizes = _whole_chunks(self.chunk_sizes)

    # ------------------------------------------------------------------ plan

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at its first batch (as ``DistributedSampler.set_epoch``)."""
        self.epoch, self._position, self._n_shards = epoch, 0, None

    def pieces_per_chunk(self, n_shards: int) -> int:
        """Row ranges every chunk is cut into for ``n_shards`` shards: 1 (whole chunks) unless the
        group has fewer chunks than shards, then ``n_shards``."""
        return 1 if len(self.chunk_sizes) >= n_shards else n_shards

    def _pieces(self, n_shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunk, first row within it, and size of every piece; piece ``c * k + j`` is range j
        of chunk c, k = :meth:`pieces_per_chunk`."""
        k = self.pieces_per_chunk(n_shards)
        if k == 1:
            return _whole_chunks(self.chunk_sizes)
        # Range j of a chunk of n rows: rows [j * n // k, (j + 1) * n // k).
        bounds = (self.chunk_sizes[:, None] * np.arange(k + 1)[None, :]) // k
        chunk = np.repeat(np.arange(len(self.chunk_sizes)), k)
        return chunk, bounds[:, :-1].ravel(), np.diff(bounds, axis=1).ravel()

    def assignment(self, n_shards: int) -> list[np.ndarray]:
        """Piece indices of every shard in this epoch, in reading order: chunk indices when
        every shard gets whole chunks (see :meth:`pieces_per_chunk` and :meth:`_pieces`)."""
        n = len(self.chunk_sizes)
        order = np.random.default_rng((self.seed, self.epoch)).permutation(n) if self.shuffle else np.arange(n)
        k = self.pieces_per_chunk(n_shards)
        if k == 1:
            return [order[s::n_shards] for s in range(n_shards)]
        position = np.arange(n)
        return [order * k + (s + position) % k for s in range(n_shards)]

    def n_batches(self, shard: int, n_shards: int) -> int:
        """Batches shard ``shard`` of ``n_shards`` yields in this epoch."""
        sizes = self._pieces(n_shards)[2]
        rows = [int(sizes[p].sum()) for p in self.assignment(n_shards)]
        if not self.equal_batches:
            return -(-rows[shard] // self.batch_size)
        if min(rows) == 0:
            msg = (
                f"group {self.group.name!r} has {int(self.chunk_sizes.sum())} events, fewer than the "
                f"{n_shards} ranks x loader workers reading it: some would train on nothing; lower "
                "training.ddp.world_size, or give the sample more events"
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
        self._piece_chunk, self._piece_start, self._piece_sizes = self._pieces(n_shards)
        pieces = self.assignment(n_shards)[shard]
        n_batches = self.n_batches(shard, n_shards)
        k = self.shuffle_chunks
        windows = [pieces[i : i + k] for i in range(0, len(pieces), k)]
        ends = np.cumsum([self._piece_sizes[w].sum() for w in windows], dtype=np.int64)
        start = self._position * self.batch_size
        stop = min(int(ends[-1]) if len(ends) else 0, n_batches * self.batch_size)
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(ends, stop, side="left"))
        skip = start - (int(ends[first - 1]) if first else 0)
        batches = self._batches(windows[first : last + 1], skip, n_batches - self._position)
        if self.device.type == "cuda":
            # Asked here, in the consumer's thread: the stream the batches will be used on.
            batches = _in_background(_on_own_stream(batches, self.device, torch.cuda.current_stream(self.device)),
                                     self.read_ahead)
        # On the CPU the consumer's thread assembles the batches: a thread of their own would take
        # the cores from torch's threads, and every parallel region of the step waits for its
        # slowest thread (0.68 of in-memory steps that way against 0.89-1.03, on 2 cores).
        # The position counts the batches handed over, not those assembled ahead of them.
        with contextlib.closing(batches):
            for batch in batches:
                self._position += 1
                yield batch
        self.set_epoch(self.epoch + 1)

    def _batches(self, windows: list[np.ndarray], skip: int, n_batches: int):
        """Cut the windows' shuffled rows into ``n_batches`` batches; batches run on across windows."""
        b = self.batch_size
        made = 0
        rest: tuple[torch.Tensor, torch.Tensor] | None = None
        for window, order in self._windows(windows):
            order, skip = order[skip:], 0
            start = 0
            if rest is not None:
                x, w = window.rows(order[: b - len(rest[1])])
                start = len(w)
                rest = (torch.cat([rest[0], x]), torch.cat([rest[1], w]))
                if len(rest[1]) < b:
                    continue
                made += 1
                yield rest
                rest = None
            while start + b <= len(order) and made < n_batches:
                idx = order[start : start + b]
                start += b
                made += 1
                yield window.rows(idx)
            if made == n_batches:
                return
            if start < len(order):
                rest = window.rows(order[start:])
        if rest is not None and made < n_batches:
            yield rest

    def _windows(self, windows: list[np.ndarray]) -> Iterator[tuple[_Window, np.ndarray]]:
        """Each window's cells on the device and its (shuffled) row order, its pieces read ahead
        by the thread pool.

        A window stays in the compact form of its pieces: only the rows of a batch are made
        dense, once each, straight into the batch (a dense window buffer was 138 MB for four
        chunks of 16,384 events, and every row crossed memory three times instead of once).
        """
        order = [int(c) for window in windows for c in window]
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="megaset-read")
        pending: collections.deque[tuple[tuple[int, int, int], Future]] = collections.deque()
        blank: torch.Tensor | None = None

        def submit(piece: int) -> None:
            key = (int(self._piece_chunk[piece]), int(self._piece_start[piece]), int(self._piece_sizes[piece]))
            if key in self._cache:
                future: Future = Future()
                future.set_result(self._cache[key])
            else:
                future = pool.submit(self._read, piece)
            pending.append((key, future))

        def take() -> _Piece:
            nonlocal submitted
            key, future = pending.popleft()
            part = future.result()
            self._keep(key, part)
            if submitted < len(order):
                submit(order[submitted])
                submitted += 1
            return part

        try:
            for c in order[: self.read_ahead]:
                submit(c)
            submitted = len(pending)
            for window in windows:
                parts = [take() for _ in window]
                if blank is None:
                    blank = self._blank_row(parts[0].n_cells, parts[0].context is not None)
                cells = _Window(parts, blank, self.device)
                n = len(cells.weight)
                if self.shuffle:
                    rows = np.random.default_rng((self.seed, self.epoch, int(window[0]))).permutation(n)
                else:
                    rows = np.arange(n)
                del parts
                yield cells, rows
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _keep(self, key: tuple[int, int, int], part: _Piece) -> None:
        """Keep a piece read from the store for later epochs, while the cache has room: the
        pieces first read stay, so that an epoch larger than the cache still finds the same
        share of its pieces there (evicting the oldest would miss every one of them)."""
        if key in self._cache:
            return
        if self._cached_bytes + part.nbytes <= self.cache_bytes:
            self._cache[key] = part
            self._cached_bytes += part.nbytes

    def _blank_row(self, n_cells: int, context: bool) -> torch.Tensor:
        """A row of scaled zero cells (and a 0 for the context), on the device: what the cells
        absent from a chunk's compact form stand for."""
        zero = np.zeros(n_cells, dtype=np.float32)
        row = zero if self.scaling is None else self.scaling.cells(zero, np.arange(n_cells))
        return torch.from_numpy(np.append(row, np.float32(0))[: n_cells + context]).to(self.device)

    def _read(self, piece: int) -> _Piece:
        """One piece's features as their scaled non-zero cells, with its weights and context."""
        names = (self.column, "weight", *((self.context,) if self.context else ()))
        # Read as non-zero cells: a store of the CSR form gives them without dense rows.
        data = self.group.read_chunk(int(self._piece_chunk[piece]), columns=names, compact=(self.column,))
        start = int(self._piece_start[piece])
        rows = slice(start, start + int(self._piece_sizes[piece]))
        cells = data[self.column].rows(rows.start, rows.stop)
        n_rows, n_cells = cells.shape
        row, columns = np.divmod(cells.positions, np.int32(n_cells))
        # A feature's column fits 16 bits for every form a store holds (the RMM has 529): the
        # cache then holds a quarter more events.
        columns = columns.astype(np.int16 if n_cells < 2**15 else np.int32)
        values = cells.values.astype(np.float32, copy=False)
        if self.scaling is not None:
            values = self.scaling.cells(values, columns)
        arrays = [values, np.asarray(data["weight"][rows], dtype=np.float32)]
        if self.context:
            arrays.append(np.asarray(data[self.context][rows], dtype=np.float32))
        # A read-only array (a memory-mapped chunk) is copied rather than shared.
        host = [torch.from_numpy(a) if a.flags.writeable else torch.tensor(a) for a in arrays]
        if self.device.type == "cuda":
            host = [t.pin_memory() for t in host]
        values_t, weight, *context = host
        counts = np.bincount(row, minlength=n_rows).astype(np.int32)
        return _Piece(columns, counts, values_t, n_cells, weight, context[0] if context else None)

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


class _Window:
    """The rows of a window's pieces as their scaled non-zero cells on the device, with where
    each row's cells start and their columns on the host; :meth:`rows` makes the rows of a batch
    dense."""

    def __init__(self, parts: list[_Piece], blank: torch.Tensor, device: torch.device):
        self.columns = np.concatenate([p.columns for p in parts])
        counts = np.concatenate([p.counts for p in parts])
        self.starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self.blank, self.device = blank, device
        self.values = self._joined([p.values for p in parts])
        self.weight = self._joined([p.weight for p in parts])
        self.context = self._joined([p.context for p in parts]) if parts[0].context is not None else None

    def _joined(self, tensors: list) -> torch.Tensor:
        # Each piece copied on its own: pinned host memory goes to a GPU without blocking.
        return torch.cat([t.to(self.device, non_blocking=True) for t in tensors])

    def _there(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)

    def rows(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` of the window, dense and in that order: ``(x [len(idx), width], weight)``.

        Which cells go where is found on the host, in numpy (torch's ``repeat_interleave`` took
        3.5-8x numpy's ``repeat`` on the CPU); the cells are gathered and placed on the device.
        """
        first, counts = self.starts[idx], self.starts[idx + 1] - self.starts[idx]
        ends = np.cumsum(counts)
        # Cell j of the batch is cell (j - the batch's cells before its row) of its row's cells.
        cells = np.arange(ends[-1] if len(ends) else 0) + np.repeat(first - (ends - counts), counts)
        width = len(self.blank)
        to = np.repeat(np.arange(len(idx), dtype=np.int64) * width, counts) + self.columns[cells]
        # A fresh tensor filled by copy_: contiguous() hands back the blank row itself for one
        # row, and repeat and clone took 1.5-12x as long here.
        x = torch.empty((len(idx), width), dtype=self.blank.dtype, device=self.device)
        x.copy_(self.blank.expand(len(idx), width))
        x.view(-1).index_copy_(0, self._there(to), self.values.index_select(0, self._there(cells)))
        rows = self._there(idx)
        if self.context is not None:
            x[:, -1] = self.context.index_select(0, rows)
        return x, self.weight.index_select(0, rows)


def _whole_chunks(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pieces of a group read in whole chunks: piece i is chunk i."""
    return np.arange(len(sizes)), np.zeros(len(sizes), dtype=np.int64), sizes


def _on_own_stream(batches: Generator, device: torch.device, consumer: torch.cuda.Stream) -> Generator:
    """``batches``, assembled on a CUDA stream of their own so that their copies and gathers
    overlap the consumer's kernels; each is complete before it is handed over, and the caching
    allocator is told that ``consumer`` uses its memory (it must not be reused for the next
    batch while the training step still reads it)."""
    own = torch.cuda.Stream(device)
    with contextlib.closing(batches), torch.cuda.stream(own):
        for batch in batches:
            for t in batch:
                t.record_stream(consumer)
            own.synchronize()
            yield batch


_DONE = object()


def _in_background(items: Generator, depth: int) -> Iterator:
    """The items of ``items``, produced by a thread of their own up to ``depth`` ahead.

    On a GPU, assembling a batch (launching its copies and gathers on the loader's stream, and
    waiting for them) would otherwise stop the consumer's thread, which feeds the device. The
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
