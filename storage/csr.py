"""The compact (CSR) form of a store's feature column, written when ``store.form: csr``.

An RMM row is about 98 % zeros, so a store mixed with ``store.form: csr`` keeps its feature
column (``rmm``; a jet store's ``image`` ...) as the non-zero cells of each chunk, a CSR
matrix per chunk, instead of dense rows::

    <group>/rmm_csr/                    attrs: form "csr", column, shape (after the event axis), dtype
        nnz        [N] uint16           non-zero cells of each event, chunked like the group
        cell/<i>   [n_i] uint16         the cells of chunk i's events, event after event, each event's
                                        ascending (its rows flattened row by row: cell r * F + c)
        value/<i>  [n_i] float32        their values

(uint32 instead of uint16 for rows of more than 65,535 cells.) Chunk ``i`` of ``nnz`` tells
which of ``cell/i`` belong to which event: the first ``nnz[0]`` to its first event, and so on.
A cell is zero when its bits are, so ``-0.0`` is kept and the dense rows read back are the very
bits mixed. The group's attribute ``forms`` names the columns stored so; every reader of
:class:`~megaset.storage.store.StoreGroup` sees them dense (or, asked for, as
:class:`~megaset.storage.compact.CompactRows`, made straight from the cells).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from megaset.errors import DamagedChunkError
from megaset.storage.backend import checked_reads
from megaset.storage.compact import CompactRows

__all__ = ["csr_path", "index_dtype", "csr_attrs", "write_csr", "read_csr"]


def csr_path(column: str) -> str:
    """The subgroup that holds ``column`` in the CSR form.

    >>> csr_path("rmm")
    'rmm_csr'
    """
    return f"{column}_csr"


def index_dtype(width: int) -> np.dtype:
    """The dtype of the cell indices and per-event counts of rows of ``width`` cells.

    >>> index_dtype(529), index_dtype(70000)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype("u2" if width <= 0xFFFF else "u4")


def csr_attrs(column: str, dtype: str, tail: Sequence[int]) -> dict[str, Any]:
    """The attributes of the CSR subgroup of ``column`` (``dtype``, ``tail`` after the event axis)."""
    return {"form": "csr", "column": column, "shape": [int(n) for n in tail], "dtype": str(np.dtype(dtype))}


async def write_csr(url: str, group: str, column: str, index: int, start: int, rows: np.ndarray,
                    codecs: list) -> None:
    """Write chunk ``index`` (events from ``start`` on) of ``column`` from its dense ``rows``:
    its cells and values as arrays of their own, then its events' counts."""
    import zarr.api.asynchronous as za

    cells = CompactRows.of(rows)
    width = cells.shape[1]
    row, cell = np.divmod(cells.positions, np.int32(width))
    counts = np.bincount(row, minlength=cells.shape[0]).astype(index_dtype(width))
    path = f"{url.rstrip('/')}/{group}/{csr_path(column)}"
    sub = await za.open_group(store=path, mode="r+", zarr_format=3)

    async def part(name: str, values: np.ndarray) -> None:
        # Each chunk's cells are an array of their own: their number is known only now.
        array = await sub.create_array(f"{name}/{index}", shape=values.shape, chunks=(max(len(values), 1),),
                                       dtype=values.dtype, compressors=codecs, fill_value=0, overwrite=True,
                                       dimension_names=("cell",))
        await array.with_config({"write_empty_chunks": True}).setitem(slice(None), values)

    await asyncio.gather(part("cell", cell.astype(index_dtype(width))), part("value", cells.values))
    nnz = await za.open_array(store=f"{path}/nnz", mode="r+", zarr_format=3)
    await nnz.with_config({"write_empty_chunks": True}).setitem(slice(start, start + len(counts)), counts)


async def read_csr(group: Any, attrs: Mapping[str, Any], chunks: range, rows: slice, chunk_len: int, compact: bool,
                   where: str, fix: str) -> np.ndarray | CompactRows:
    """Events ``rows`` (the chunks ``chunks``, whole) of the CSR column of ``attrs`` in the
    async Zarr ``group`` of the store: dense, or with ``compact`` as :class:`CompactRows`.

    Raises
    ------
    DamagedChunkError
        For a chunk whose checksum fails, whose cells are missing, or whose cells disagree
        with its events' counts (more or fewer, outside the row, out of order).
    """
    tail = tuple(attrs["shape"])
    width = int(np.prod(tail, dtype=np.int64))
    sub = csr_path(attrs["column"])
    try:
        nnz = await group.getitem(f"{sub}/nnz")
        names = [f"{sub}/{part}/{i}" for i in chunks for part in ("cell", "value")]
        parts = await asyncio.gather(*(group.getitem(name) for name in names))
    except KeyError as err:
        msg = f"{where}: the cells of {attrs['column']} are missing ({err}); {fix}"
        raise DamagedChunkError(msg, [f"{group.store_path}/{err.args[0]}"], "missing") from None
    values = await checked_reads([(nnz, rows), *((a, slice(None)) for a in parts)], where, fix)
    counts = values[0].astype(np.int64)
    positions, cells = [], []
    for k, i in enumerate(chunks):
        first = i * chunk_len - rows.start
        n = counts[first:first + chunk_len]
        cell, value = values[1 + 2 * k], values[2 + 2 * k]
        problem = _mismatch(n, cell, value, width)
        if problem:
            name = f"{group.store_path}/{sub}/cell/{i}"
            msg = f"{where}: chunk {i} of {attrs['column']} ({name}) {problem}; {fix}"
            raise DamagedChunkError(msg, [name], problem)
        row = np.repeat(np.arange(first, first + len(n), dtype=np.int64), n)
        positions.append(row * width + cell)
        cells.append(value)
    flat = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    data = np.concatenate(cells) if cells else np.zeros(0, dtype=attrs["dtype"])
    shape = (len(counts), width)
    if compact:
        return CompactRows.at(shape, flat, data)
    out = np.zeros(shape[0] * width, dtype=data.dtype)
    out[flat] = data
    return out.reshape(shape[0], *tail)


def _mismatch(counts: np.ndarray, cell: np.ndarray, value: np.ndarray, width: int) -> str:
    """What is wrong with one chunk's cells given its events' counts ('' when nothing)."""
    if len(cell) != len(value) or len(cell) != int(counts.sum()):
        return f"holds {len(cell)} cells and {len(value)} values, its events' counts add up to {int(counts.sum())}"
    if len(cell) and int(cell.max()) >= width:
        return f"has cell {int(cell.max())} beyond the {width} cells of a row"
    # Within an event the cells ascend; where they do not, an event starts.
    descents = np.flatnonzero(np.diff(cell.astype(np.int64)) <= 0) + 1
    starts = np.cumsum(counts)[:-1]
    if not np.isin(descents, starts).all():
        return "has an event whose cells do not ascend"
    return ""
