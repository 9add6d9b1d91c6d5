"""Staging area written by ingest and read by the mix pass.

Layout (Zarr v3, any fsspec URL)::

    <staging>/zarr.json                 attrs: {"complete": bool, "fingerprint", "stage", ...}
    <staging>/<channel>/zarr.json
    <staging>/<channel>/<piece>/zarr.json   attrs: {"complete": true, "filename", "entrystart", ...,
                                                    "schema", "layout"}
    <staging>/<channel>/<piece>/rmm         [blocks, W] uint8: a sparse column (the RMM), a row per block
                                            of BLOCK_ROWS events: its cells' indices, then values
    <staging>/<channel>/<piece>/packed      [B, n] uint8: every small column's little-endian bytes,
                                            column after column (weight, MET, event id, counts, ...)

A column given as a ``scipy.sparse`` matrix is stored sparse: a 2-lepton event reaches about
2 % of its RMM cells, and its dense row would be 2 kB of mostly zeros to move through memory
and the compressor, once when written and once when the mix reads it. Row ``b`` of ``rmm``
holds the little-endian bytes of the cell indices of block ``b``, then of their values, each
padded with zeros to the longest block of the piece; each event's first and end cell in its
block are two uint32 in ``packed``. A block is one read whatever rows of it are wanted, and a
piece is as many files as when the RMM was stored dense.

Packing the small columns makes a row range of a piece two reads instead of fifteen, and a
piece a few files per 1024 events instead of fifteen: the mix pass reads many short row
ranges, and on an object store every read and every write is a request. Stored as rows of
bytes along the event axis, each byte of each field sits next to the same byte of the
neighbouring events, which is what compressors like. ``schema`` (column -> dtype, shape after
the event axis) and ``layout`` (column -> [array, null] for an array of its own,
["packed", first byte, dtype, shape after the event axis], or ["sparse", first byte of its
positions in packed, dtype, shape after the event axis, events per block, cell index dtype])
let readers unpack without looking at the arrays; :func:`read_piece` returns every column
dense, by name.

A *piece* holds the selected events of one input chunk, keyed by
``(fileuuid, entrystart, entrystop)``: a retried or re-run chunk overwrites its own piece
instead of adding a second copy. The piece's ``complete`` attribute is written last, so a
piece whose writer died part-way is visibly unfinished and is redone by the next run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from megaset.config import CompressorConfig
from megaset.errors import IncompleteStoreError, StoreError, StoreKeyError
from megaset.storage.codecs import compressors

__all__ = [
    "LAYOUT_VERSION",
    "BLOCK_ROWS",
    "piece_key",
    "init_staging",
    "write_piece",
    "piece_attrs",
    "list_pieces",
    "read_piece",
    "open_piece",
    "piece_schema",
    "piece_selections",
    "unpack",
    "is_sparse",
    "finish_staging",
    "staging_attrs",
    "remove_staging",
]

#: Version of the staging layout (2: the small columns packed as bytes; 3: the RMM stored
#: sparse; 4: ``block_rows`` names the rows of a staging block).
LAYOUT_VERSION = 4

#: Rows per staging block (one Zarr chunk of a piece's arrays): about 2 MB of float32 RMM rows,
#: so that the mix pass, which takes short contiguous slices of each channel, reads little
#: beyond them.
BLOCK_ROWS = 1024


def piece_key(fileuuid: str, entrystart: int, entrystop: int) -> str:
    """The name of the piece holding one input chunk.

    >>> piece_key("0f3c", 0, 1000)
    '0f3c-0000000000-0000001000'
    """
    # Zero-padded so that lexical order is file order, then entry order.
    return f"{fileuuid}-{entrystart:010d}-{entrystop:010d}"


def _open(url: str, mode: str):
    import zarr

    try:
        return zarr.open_group(store=url, mode=mode, zarr_format=3)
    except (FileNotFoundError, KeyError) as err:
        msg = f"no staging area at {url!r}: run `megaset ingest` first"
        raise StoreError(msg) from err


def init_staging(url: str, channels: Iterable[str], attrs: Mapping[str, Any]) -> None:
    """Create (or reopen for resuming) the staging root and one group per channel.

    The root is marked incomplete until :func:`finish_staging`; existing complete pieces
    are kept, so a rerun skips them.
    """
    import zarr

    root = zarr.open_group(store=url, mode="a", zarr_format=3)
    root.update_attributes({"complete": False, **attrs})
    for channel in channels:
        root.require_group(channel)


_PACKED = "packed"
_SPARSE = "sparse"

#: Columns of at most this many bytes per event go into the packed array.
_PACKED_MAX_BYTES = 64


def is_sparse(values: Any) -> bool:
    """Whether a column is a ``scipy.sparse`` matrix or array (stored sparse), without
    importing scipy."""
    return hasattr(values, "tocsr")


def _blocked(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """A CSR column as one row of bytes per block (cell indices, then values), and each
    event's (first, end) cell in its block."""
    values = values.tocsr()
    n, width_f = values.shape
    indptr = np.asarray(values.indptr, dtype=np.int64)
    starts = np.arange(0, n, BLOCK_ROWS)
    first = indptr[starts]
    length = indptr[np.minimum(starts + BLOCK_ROWS, n)] - first
    width = max(int(length.max(initial=0)), 1)  # a Zarr chunk cannot be 0 wide
    block_first = np.repeat(first, np.minimum(BLOCK_ROWS, n - starts))
    bounds = np.stack([indptr[:-1] - block_first, indptr[1:] - block_first], axis=1).astype(np.uint32)
    at = np.repeat(np.arange(len(starts)) * width - first, length) + np.arange(indptr[-1])
    cells = np.zeros((len(starts), width), dtype=_cell_dtype(width_f))
    data = np.zeros((len(starts), width), dtype=values.dtype.newbyteorder("<"))
    cells.reshape(-1)[at] = values.indices[indptr[0]:indptr[-1]]
    data.reshape(-1)[at] = values.data[indptr[0]:indptr[-1]]
    return np.concatenate([cells.view(np.uint8), data.view(np.uint8)], axis=1), bounds


def _cell_dtype(n_cells: int) -> np.dtype:
    return np.dtype("<u2" if n_cells <= 1 << 16 else "<u4")


def _pack(columns: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """The arrays to store and the layout (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, list] = {}
    small: list[tuple[str, np.ndarray, int]] = []
    sparse: dict[str, Any] = {}
    for name, values in columns.items():
        if name == _PACKED or "." in name:
            msg = f"a staging column may not be called {_PACKED!r} or contain '.' (got {name!r})"
            raise ValueError(msg)
        if is_sparse(values):
            arrays[name], bounds = _blocked(values)
            small.append((name, bounds, bounds.itemsize * 2))
            sparse[name] = values
            continue
        values = np.asarray(values)
        width = values.dtype.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
        if width > _PACKED_MAX_BYTES:
            arrays[name] = np.ascontiguousarray(values)
            layout[name] = [name, None]
        else:
            small.append((name, values, width))
    if small:
        n = len(small[0][1])
        packed = np.empty((sum(width for *_, width in small), n), dtype=np.uint8)
        first = 0
        for name, values, width in small:
            little = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
            packed[first:first + width] = little.view(np.uint8).reshape(n, width).T
            layout[name] = [_PACKED, first, little.dtype.str, list(values.shape[1:])]
            first += width
        arrays[_PACKED] = packed
    for name, values in sparse.items():
        layout[name] = [_SPARSE, layout[name][1], values.dtype.newbyteorder("<").str, list(values.shape[1:]),
                        BLOCK_ROWS, _cell_dtype(values.shape[1]).str]
    return arrays, layout


def write_piece(
    url: str,
    channel: str,
    key: str,
    columns: Mapping[str, Any],
    attrs: Mapping[str, Any],
    compressor: CompressorConfig,
) -> None:
    """Write one piece (every column, then the ``complete`` marker), replacing any old copy.

    ``columns`` are arrays with events along the first axis; a ``scipy.sparse`` matrix of any
    format (the RMM of :func:`megaset.pipeline.rmm.build_rmm` with ``sparse=True``) is stored
    sparse, by its rows, and read back dense.
    """
    from zarr.core.sync import sync

    sync(_write_piece(f"{url.rstrip('/')}/{channel}/{key}", columns, attrs, compressor))


async def _write_piece(url: str, columns: Mapping[str, Any], attrs: Mapping[str, Any],
                       compressor: CompressorConfig) -> None:
    # The piece is built in memory and then stored with concurrent writes. Built
    # in place, zarr's existence checks and metadata writes (some twenty store calls, each a
    # thread hand-off here and a request on an object store) cost more than the data of most
    # pieces, which hold a few selected events.
    import asyncio

    import zarr.api.asynchronous as za
    from zarr.storage import MemoryStore

    built: dict[str, Any] = {}
    group = await za.open_group(store=MemoryStore(built), mode="w", zarr_format=3)
    codecs = compressors(compressor)
    columns = {name: v if is_sparse(v) else np.asarray(v) for name, v in columns.items()}
    arrays, layout = _pack(columns)
    n_rows = int(next(iter(columns.values())).shape[0])

    async def build(name: str, values: np.ndarray) -> None:
        if name == _PACKED:
            chunks = (values.shape[0], BLOCK_ROWS)
        elif layout[name][0] == _SPARSE:
            chunks = (1, values.shape[1])  # one block per chunk
        else:
            chunks = (BLOCK_ROWS, *values.shape[1:])
        # Not sharded, although one shard per array would make a piece a handful of files and
        # its write 1.2x faster: every read of the mix, one block at a time, would then read
        # the shard's index first, and the mix ran at 0.49x a plain copy instead of 0.72x.
        # write_empty_chunks skips zarr's test of every chunk against the fill value, which
        # costs more than compressing mostly-zero RMM rows.
        array = await group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                                         compressors=codecs, config={"write_empty_chunks": True})
        if n_rows:
            await array.setitem(..., values)

    await asyncio.gather(*(build(name, values) for name, values in arrays.items()))
    schema = {name: [np.dtype(v.dtype).name, list(v.shape[1:])] for name, v in columns.items()}
    await group.update_attributes({**attrs, "n_rows": n_rows, "block_rows": BLOCK_ROWS, "schema": schema,
                                   "layout": layout, "complete": True})
    # Replace any old copy with an unfinished group, store the arrays, and write the group's
    # metadata, which carries the complete mark, last.
    target = (await za.open_group(store=url, mode="w", zarr_format=3)).store_path
    marker = built.pop("zarr.json")
    await asyncio.gather(*((target / key).set(value) for key, value in built.items()))
    await (target / "zarr.json").set(marker)


def piece_attrs(url: str, channel: str, key: str) -> dict[str, Any] | None:
    """The attributes of a finished piece, or ``None`` if it is absent or unfinished."""
    import zarr

    try:
        group = zarr.open_group(store=f"{url.rstrip('/')}/{channel}/{key}", mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError):
        return None
    attrs = dict(group.attrs)
    return attrs if attrs.get("complete") else None


def list_pieces(url: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every finished piece, by channel, sorted by key; unfinished pieces are left out."""
    root = _open(url, "r")
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for channel, group in sorted(root.groups()):
        pieces = []
        for key, piece in sorted(group.groups()):
            attrs = dict(piece.attrs)
            if attrs.get("complete"):
                pieces.append((key, attrs))
        out[channel] = pieces
    return out


def open_piece(url: str, channel: str, key: str):
    """The Zarr group of one piece, for readers that take several slices of it."""
    return _open(f"{url.rstrip('/')}/{channel}/{key}", "r")


def piece_schema(attrs: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Column -> (dtype, shape after the event axis), from a piece's attributes."""
    return {name: (dtype, tuple(tail)) for name, (dtype, tail) in attrs["schema"].items()}


def _blocks_of(rows: slice) -> slice:
    """The blocks of a sparse column that hold ``rows``."""
    if rows.step not in (None, 1) or (rows.start or 0) < 0 or (rows.stop is not None and rows.stop < 0):
        msg = f"staging pieces are read by rows with non-negative bounds and step 1, not {rows}"
        raise ValueError(msg)
    start = rows.start or 0
    return slice(start // BLOCK_ROWS, None if rows.stop is None else -(-rows.stop // BLOCK_ROWS))


def piece_selections(layout: Mapping[str, list], columns: Iterable[str], rows: slice,
                     where: str = "staging piece") -> dict[str, tuple[slice, ...]]:
    """Stored array -> Zarr selection, to read ``rows`` of ``columns`` of a piece (``where``)
    whose ``layout`` attribute is given."""
    missing = [c for c in columns if c not in layout]
    if missing:
        msg = f"{where} has no columns {missing}; its columns are: {', '.join(sorted(layout))}"
        raise StoreKeyError(msg)
    out: dict[str, tuple[slice, ...]] = {}
    for name in columns:
        kind = layout[name][0]
        if kind == _SPARSE:
            out[_PACKED] = (slice(None), rows)
            out[name] = (_blocks_of(rows), slice(None))
        elif kind == _PACKED:
            out[_PACKED] = (slice(None), rows)
        else:
            out[kind] = (rows,)
    return out


def _packed(entry: list, packed: np.ndarray) -> np.ndarray:
    """One column's values from the packed bytes (a layout entry ["packed", first byte, dtype,
    shape after the event axis, ...])."""
    first, dtype, tail = entry[1], np.dtype(entry[2]), tuple(entry[3])
    width = dtype.itemsize * int(np.prod(tail, dtype=np.int64))
    raw = np.ascontiguousarray(packed[first:first + width].T)
    return raw.view(dtype).reshape(len(raw), *tail).astype(dtype.newbyteorder("="), copy=False)


def _rows(entry: list, bounds: np.ndarray, blocks: np.ndarray, start: int):
    """The rows of a sparse column as a ``scipy.sparse.csr_array`` of the flattened cells, from
    its blocks read from row ``start`` on."""
    from scipy.sparse import csr_array

    value_dtype, rows_per_block, cell_dtype = np.dtype(entry[2]), entry[4], np.dtype(entry[5])
    width = blocks.shape[1] // (cell_dtype.itemsize + value_dtype.itemsize)
    split = width * cell_dtype.itemsize
    cells = np.ascontiguousarray(blocks[:, :split]).view(cell_dtype)
    data = np.ascontiguousarray(blocks[:, split:]).view(value_dtype)
    block = (start + np.arange(len(bounds))) // rows_per_block - start // rows_per_block
    first = block * width + bounds[:, 0].astype(np.int64)
    length = bounds[:, 1].astype(np.int64) - bounds[:, 0]
    indptr = np.zeros(len(bounds) + 1, dtype=np.int64)
    np.cumsum(length, out=indptr[1:])
    at = np.repeat(first - indptr[:-1], length) + np.arange(indptr[-1])
    shape = (len(bounds), int(np.prod(entry[3], dtype=np.int64)))
    data = data.reshape(-1)[at].astype(value_dtype.newbyteorder("="), copy=False)
    return csr_array((data, cells.reshape(-1)[at], indptr), shape=shape)


def unpack(layout: Mapping[str, list], blocks: Mapping[str, np.ndarray], columns: Iterable[str],
           start: int = 0, *, sparse: bool = False) -> dict[str, Any]:
    """The columns, by name, from the stored arrays read with :func:`piece_selections` for rows
    from ``start`` on: dense, or with ``sparse`` a sparse column as its ``scipy.sparse.csr_array``
    of flattened cells."""
    out = {}
    for name in columns:
        entry = layout[name]
        if entry[0] == _SPARSE:
            bounds = _packed([_PACKED, entry[1], "<u4", [2]], blocks[_PACKED])
            rows = _rows(entry, bounds, blocks[name], start)
            out[name] = rows if sparse else rows.toarray().reshape(len(bounds), *entry[3])
        elif entry[0] == _PACKED:
            out[name] = _packed(entry, blocks[_PACKED])
        else:
            out[name] = blocks[entry[0]]
    return out


def read_piece(
    url: str,
    channel: str,
    key: str,
    columns: Iterable[str] | None = None,
    rows: slice = slice(None),
) -> dict[str, np.ndarray]:
    """Read ``rows`` of the given columns (all columns when ``None``) of one piece."""
    group = open_piece(url, channel, key)
    layout = group.attrs["layout"]
    names = list(columns) if columns is not None else sorted(layout)
    where = f"staging piece {url.rstrip('/')}/{channel}/{key}"
    blocks = {a: group[a][sel] for a, sel in piece_selections(layout, names, rows, where).items()}
    return unpack(layout, blocks, names, start=rows.start or 0)


def finish_staging(url: str, attrs: Mapping[str, Any]) -> None:
    """Record the ingest summary and mark the staging area complete (the last write)."""
    root = _open(url, "r+")
    root.update_attributes({**attrs, "complete": True})


def staging_attrs(url: str, *, require_complete: bool = True) -> dict[str, Any]:
    """The staging root attributes; refuses an unfinished ingest unless asked not to."""
    attrs = dict(_open(url, "r").attrs)
    if require_complete and not attrs.get("complete"):
        msg = (
            f"staging area {url!r} is incomplete: an ingest was interrupted. "
            "Run `megaset ingest` again with the same config to finish it (finished chunks are skipped)."
        )
        raise IncompleteStoreError(msg)
    return attrs


def remove_staging(url: str) -> None:
    """Delete the staging area at ``url`` before it is written anew from other inputs.

    Raises
    ------
    StoreError
        When ``url`` holds a Zarr group that is not a staging area (it is left alone).
    """
    from megaset.storage.backend import remove_tree

    try:
        attrs = dict(_open(url, "r").attrs)
    except StoreError:
        return  # no staging area there
    if "fingerprint" not in attrs:
        msg = f"{url!r} holds a Zarr group that is not a megaset staging area; set store.staging_url elsewhere"
        raise StoreError(msg)
    remove_tree(url)
