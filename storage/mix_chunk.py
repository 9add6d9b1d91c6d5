"""The Dask task of the mix pass: gather, shuffle and write one output chunk.

Runs on a worker. All reads of a task are issued at once through Zarr's asynchronous API,
so they overlap (an object store answers many small requests in parallel), and the writes
of the chunk's columns overlap too. Opened Zarr arrays are kept per worker process, keyed by
the plan's fingerprint, so a worker building many chunks reads each array's metadata once.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from megaset.errors import StoreError
from megaset.storage import stats
from megaset.storage.backend import checked_reads
from megaset.storage.plan import ChunkTask, Stream, rng
from megaset.storage.store import MIX_PREFIX

__all__ = ["build_chunk"]

#: Opened staging pieces and store groups kept per process (a few per channel in flight).
_CACHE_SIZE = 256
_opened: OrderedDict[tuple, dict[str, Any]] = OrderedDict()


async def _arrays(url: str, path: str, names: Sequence[str], mode: str, plan: str) -> dict[str, Any]:
    """The arrays ``names`` of the group ``url/path``, opened once per process and plan."""
    import zarr.api.asynchronous as za

    key = (url, path, tuple(names), mode, plan)
    if key in _opened:
        _opened.move_to_end(key)
        return _opened[key]
    try:
        group = await za.open_group(store=f"{url.rstrip('/')}/{path}", mode=mode, zarr_format=3)
        arrays = dict(zip(names, await asyncio.gather(*(group.getitem(n) for n in names)), strict=True))
    except (FileNotFoundError, KeyError) as err:
        msg = f"{url.rstrip('/')}/{path} lost a group or array during the mix ({err}); rerun `megaset mix`"
        raise StoreError(msg) from err
    _opened[key] = arrays
    if len(_opened) > _CACHE_SIZE:
        _opened.popitem(last=False)
    return arrays


async def _gather(task: ChunkTask, staging: str, columns: Sequence[str], layout: Mapping[str, list],
                  position: np.ndarray) -> dict[str, np.ndarray]:
    """The chunk's rows of every column: the ``i``-th row taken (channel after channel, each
    channel's quota of rows) lands at ``position[i]``, so the rows come out shuffled.

    Every staging block is read whole (it is one Zarr chunk of the piece, decompressed whole anyway).
    """
    from megaset.storage.staging import is_sparse, piece_selections, unpack

    segments = [(cid, seg) for cid, segs in zip(task.channel_ids, task.segments, strict=True) for seg in segs]
    pieces = sorted({(seg.channel, seg.piece) for _, seg in segments})
    stored = list(piece_selections(layout, columns, slice(None)))  # the arrays holding the columns
    opened = await asyncio.gather(*(_arrays(staging, f"{c}/{p}", stored, "r", task.plan) for c, p in pieces))
    arrays = dict(zip(pieces, opened, strict=True))
    reads = [piece_selections(layout, columns, slice(seg.start, seg.start + seg.length))
             for _, seg in segments]
    blocks = iter(await checked_reads(
        [(arrays[seg.channel, seg.piece][name], selection)
         for (_, seg), read in zip(segments, reads, strict=True) for name, selection in read.items()],
        f"staging area {staging!r}", "run `megaset ingest` into a new store.staging_url to stage the inputs again"))
    out: dict[str, np.ndarray] = {}
    taken = 0
    for (cid, seg), read in zip(segments, reads, strict=True):
        # Sparse columns stay sparse until their rows land in the chunk: only the rows taken
        # are made dense, straight into place.
        values = unpack(layout, {name: next(blocks) for name in read}, columns, start=seg.start, sparse=True)
        if values[columns[0]].shape[0] != seg.length:
            msg = (
                f"staging piece {staging}/{seg.channel}/{seg.piece} ends before row {seg.start + seg.length}: "
                "the staging area changed since the mix was planned; rerun `megaset mix`"
            )
            raise StoreError(msg)
        rows = rng(task.seed, Stream.ROWS_IN_BLOCK, cid, seg.block).permutation(seg.length)[seg.lo:seg.hi]
        where = position[taken:taken + len(rows)]
        taken += len(rows)
        for name in columns:
            column = values[name]
            sparse = is_sparse(column)  # (events, cells)
            if name not in out:
                out[name] = (np.zeros if sparse else np.empty)((task.size, *column.shape[1:]), dtype=column.dtype)
            if sparse:
                picked = column[rows].tocoo()
                out[name][where[picked.row], picked.col] = picked.data
            else:
                out[name][where] = column[rows]
    return out


async def _write(task: ChunkTask, url: str, values: Mapping[str, np.ndarray], sums: np.ndarray,
                 scaler: np.ndarray | None, csr: Sequence[str], codecs: list) -> None:
    """Write the chunk of every column (those named in ``csr`` in that form) and its
    bookkeeping; the done mark goes last."""
    from megaset.storage.csr import write_csr

    rows = slice(task.start, task.start + task.size)
    dense = [name for name in values if name not in csr]
    arrays = await _arrays(url, task.group, dense, "r+", task.plan)
    # Write even all-zero chunks (m_lll of a 2-lepton store): every chunk is then stored.
    await asyncio.gather(
        *(arrays[name].with_config({"write_empty_chunks": True}).setitem(rows, values[name]) for name in dense),
        *(write_csr(url, task.group, name, task.index, task.start, values[name], codecs) for name in csr))
    names = ["weights", "done"] + (["stats"] if scaler is not None else [])
    book = await _arrays(url, f"{MIX_PREFIX}/{task.group}", names, "r+", task.plan)
    await asyncio.gather(book["weights"].setitem(task.index, sums),
                         *([book["stats"].setitem(task.index, scaler)] if scaler is not None else []))
    # The done mark is the chunk's last write: a chunk without it is redone on resume.
    await book["done"].setitem(task.index, True)


def build_chunk(task: ChunkTask, *, staging: str, url: str, columns: Sequence[str],
                layout: Mapping[str, list], feature_column: str = "rmm", csr: Sequence[str] = (),
                compressor: Mapping[str, Any] | None = None) -> int:
    """Build and write one output chunk; returns the bytes of column data written.

    ``layout`` is the staging pieces' storage layout (:mod:`megaset.storage.staging`); the
    scaler partials are those of ``feature_column``, flattened after the event axis. The
    columns named in ``csr`` are written in the CSR form (:mod:`megaset.storage.csr`) with
    the store's ``compressor``.

    The rows are gathered channel after channel straight into the chunk's seeded random
    order; the weights are summed per channel, and the train group also records the chunk's
    scaler partials (:func:`megaset.storage.stats.partial_stats`).
    """
    from zarr.core.sync import sync

    from megaset.config import CompressorConfig
    from megaset.storage.codecs import compressors

    position = rng(task.seed, Stream.ROWS_IN_CHUNK, zlib.crc32(task.group.encode()), task.index).permutation(task.size)
    values = sync(_gather(task, staging, columns, layout, position))
    weight = values["weight"].astype(np.float64)
    sums = np.array([weight[values["channel"] == cid].sum() for cid in task.channel_ids])
    features = values[feature_column]
    scaler = stats.partial_stats(features.reshape(len(features), -1)) if task.scaler else None
    codecs = compressors(CompressorConfig(**(compressor or {}))) if csr else []
    sync(_write(task, url, values, sums, scaler, csr, codecs))
    return sum(column.nbytes for column in values.values())
