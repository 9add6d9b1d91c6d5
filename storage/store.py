"""The reader API of the RMM store: the only code that knows its layout.

Layout (Zarr v3, any fsspec URL)::

    <store>/zarr.json                 root attrs: provenance ("stage": the mix's record, "ingest"), channels,
                                      scaler, "complete"
    <store>/train | val | test | data | signal/<name>/
        zarr.json                     group attrs: kind, n_events, chunk_len, channel counts
        rmm [N, F] float32, weight [N] float32, channel [N] int16, event_id [N, 4] int64,
        aux columns [N] (met, m_ll, n_jets, ...), later score/<model> [N, ...]
        rmm_csr/ instead of rmm in a store mixed with store.form: csr (:mod:`megaset.storage.csr`),
        read back as dense rows all the same
    <store>/_mix/<group>/{done, weights, stats}   per-chunk bookkeeping of the mix pass

Every array carries Zarr v3 ``dimension_names`` (:func:`column_dimensions`; ``event`` first),
so ``xarray.open_zarr(url, group="test/score")`` opens any group or subgroup, and the
``channel`` column names its codes as CF ``flag_values`` / ``flag_meanings``
(:func:`channel_flags`). Stores mixed before they did still read: nothing here needs them.

Every array of a group is chunked along events with the group's ``chunk_len``; chunk ``i``
holds events ``i * chunk_len`` up to the next chunk (the last one may be short).

>>> store = open_store("megaset-demo/store.zarr")            # doctest: +SKIP
>>> train = store.group("train")                              # doctest: +SKIP
>>> for i, cols in train.iter_chunks(("rmm", "weight")): ...  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from megaset.errors import IncompleteStoreError, StoreError, StoreKeyError
from megaset.storage.backend import checked_reads, chunk_exists, float_fill, open_group
from megaset.storage.scores import scored_models

__all__ = ["open_store", "remove_store", "Store", "StoreGroup", "MIX_PREFIX", "SCHEMA_VERSION", "ADDED_CHUNK_EVENTS",
           "column_dimensions",
           "channel_flags"]

#: Version of the store layout written by :mod:`megaset.storage.mix`.
SCHEMA_VERSION = 1

#: Where the mix pass keeps its per-chunk bookkeeping; not a data group.
MIX_PREFIX = "_mix"

#: The fewest events a chunk of an added column (a score, a latent representation) holds: a
#: whole number of the group's chunks. A float32 score of a 1,024-event chunk is 4 kB, and zarr
#: spends 1-2 ms on every chunk it writes, more than the forward pass of those events takes.
ADDED_CHUNK_EVENTS = 16_384


#: The names of the axes after the event axis of the base columns that have some.
_DIMENSIONS = {"rmm": ("feature",), "image": ("pixel",), "event_id": ("id_field",)}

# The root attributes every finished store has; a reader indexes them without checking.
_COMPLETE_KEYS = ("channels", "groups", "feature_names")


def open_store(url: str, *, require_complete: bool = True) -> Store:
    """Open the store at ``url`` (any fsspec URL).

    Raises
    ------
    StoreError
        When there is no megaset store at ``url``.
    IncompleteStoreError
        When the store was not finished (``require_complete=True``).
    """
    root = open_group(url, what="megaset store", hint="run `megaset mix` to build it, or check store.url")
    attrs = dict(root.attrs)
    if "schema_version" not in attrs:
        msg = f"{url!r} is a Zarr group but not a megaset store (no schema_version attribute)"
        raise StoreError(msg)
    if "mix" not in attrs:
        what = ("a staging area written by `megaset ingest`, not a store"
                if "fingerprint" in attrs and "channels" in attrs
                else "a Zarr group with a schema_version attribute but not a megaset store (no mix attribute)")
        msg = f"{url!r} is {what}: give the path of a store (store.url), which `megaset mix` writes"
        raise StoreError(msg)
    missing = [key for key in _COMPLETE_KEYS if key not in attrs] if attrs.get("complete") else []
    if missing:
        msg = (f"{url!r} is marked complete but lacks the root attributes {', '.join(missing)} that "
               "`megaset mix` writes last: it was not written by this version of megaset; mix it again into a "
               "new store.url")
        raise StoreError(msg)
    if require_complete and not attrs.get("complete"):
        msg = (
            f"store {url!r} is incomplete: its mix was interrupted or is still running; "
            "run `megaset mix` to finish it (finished chunks are kept)"
        )
        raise IncompleteStoreError(msg)
    return Store(url, attrs)


def remove_store(url: str) -> None:
    """Delete the store at ``url`` before it is mixed anew from another staging area.

    Raises
    ------
    StoreError
        When ``url`` holds a Zarr group that is not a megaset store (it is left alone).
    """
    from megaset.storage.backend import remove_tree

    try:
        attrs = open_group(url).attrs
    except StoreError:
        return  # no store there
    if "schema_version" not in attrs:
        msg = f"{url!r} holds a Zarr group that is not a megaset store; set store.url to another location"
        raise StoreError(msg)
    remove_tree(url)


def column_dimensions(name: str, n_tail: int) -> tuple[str, ...]:
    """The ``dimension_names`` of column ``name`` with ``n_tail`` axes after the event axis.

    Every array of the store carries them, so that ``xarray.open_zarr(url, group=...)`` opens
    each group and subgroup: ``event`` first, then the column's own axes, named after the
    column's last path part where no common name exists (two models' latent columns of
    different sizes must not share an axis name within their subgroup).

    >>> column_dimensions("rmm", 1), column_dimensions("score/ae-deep", 0), column_dimensions("latent/jet-ae", 1)
    (('event', 'feature'), ('event',), ('event', 'jet-ae_1'))
    """
    if name in _DIMENSIONS and len(_DIMENSIONS[name]) == n_tail:
        return ("event", *_DIMENSIONS[name])
    leaf = name.rsplit("/", 1)[-1]
    return ("event", *(f"{leaf}_{k}" for k in range(1, n_tail + 1)))


def channel_flags(names: Mapping[int, str]) -> dict[str, Any]:
    """The attributes of the ``channel`` column that name its codes, as CF flags.

    ``flag_values`` lists the codes and ``flag_meanings`` their names, blank-separated (a
    blank inside a name becomes ``_``), so that CF-aware readers (``cf_xarray``, ncdump-style
    tools) decode the int16 codes without the store's root attributes.

    >>> channel_flags({1: "ttbar", 0: "Z jets"})
    {'long_name': 'channel', 'flag_values': [0, 1], 'flag_meanings': 'Z_jets ttbar'}
    """
    ids = sorted(names)
    return {"long_name": "channel", "flag_values": ids,
            "flag_meanings": " ".join("_".join(str(names[i]).split()) for i in ids)}


class Store:
    """An opened store: metadata and access to its groups."""

    def __init__(self, url: str, attrs: dict[str, Any]):
        self.url = url
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"Store({self.url!r}, groups={self.group_names()})"

    @property
    def feature_names(self) -> list[str]:
        return list(self.attrs["feature_names"])

    @property
    def feature_column(self) -> str:
        """The column the feature names and the scaler describe: ``rmm``, or for a jet store
        ``image`` (by default), ``constituents`` or ``tau``."""
        return str(self.attrs.get("feature_column", "rmm"))

    @property
    def kind(self) -> str:
        """``events`` (RMMs of selected events) or ``jets`` (one boosted jet per row)."""
        return str(self.attrs.get("kind", "events"))

    @property
    def channels(self) -> list[dict[str, Any]]:
        """Per channel: id, name, is_signal, is_data, events and sum of weights per group."""
        return [dict(c) for c in self.attrs["channels"]]

    @property
    def scaler(self) -> dict[str, np.ndarray]:
        """Per-feature ``min, max, mean, std`` of the train group (float64 arrays)."""
        stats = self.attrs.get("scaler")
        if not stats:
            msg = f"store {self.url!r} has no scaler statistics: its train group is empty"
            raise StoreError(msg)
        return {k: np.asarray(stats[k], dtype=np.float64) for k in ("min", "max", "mean", "std")}

    def yield_factors(self, group: str) -> dict[int, float]:
        """Per channel id, the factor that turns the weights of ``group`` into yields of the
        whole sample: the channel's sum of weights over every group / its sum in ``group``.

        The mix splits a channel between groups (train, val, test; a contaminating signal
        between ``train`` and its own group), so the events of one group carry only that group's
        share of the channel's expected events; ``weight x factor`` summed over a group gives
        each channel's whole expected yield at the store's luminosity. A channel held by one
        group alone (a signal, data) has factor 1; a channel absent from ``group`` is left out.

        >>> Store("s", {"channels": [{"id": 0, "sum_weights": {"train": 6.0, "test": 2.0}}]}).yield_factors("test")
        {0: 4.0}
        """
        out = {}
        for channel in self.attrs["channels"]:
            sums = channel.get("sum_weights", {})
            inside = sums.get(group, 0.0)
            if inside:
                out[int(channel["id"])] = float(sum(sums.values()) / inside)
        return out

    def yield_weight(self, group: str, weight: np.ndarray, channel: np.ndarray) -> np.ndarray:
        """The events' ``weight`` (float64) times the :meth:`yield_factors` of their ``channel``.

        >>> store = Store("s", {"channels": [{"id": 0, "sum_weights": {"train": 6.0, "test": 2.0}},
        ...                                  {"id": 1, "sum_weights": {"test": 5.0}}]})
        >>> store.yield_weight("test", np.array([1.0, 2.0, 0.5]), np.array([0, 1, 0])).tolist()
        [4.0, 2.0, 2.0]
        """
        factors = self.yield_factors(group)
        lookup = np.ones(max((int(c["id"]) for c in self.attrs["channels"]), default=0) + 1)
        lookup[list(factors)] = list(factors.values())
        return np.asarray(weight, dtype=np.float64) * lookup[np.asarray(channel, dtype=np.intp)]

    def group_names(self) -> list[str]:
        """``train``, ``val``, ``test``, ``signal/<name>`` ..., ``data`` (those present)."""
        return list(self.attrs["groups"])

    def group(self, name: str) -> StoreGroup:
        """The group ``name``.

        Raises
        ------
        StoreKeyError
            For a name the store does not have (the message lists the groups).
        """
        if name not in self.group_names():
            msg = f"store {self.url!r} has no group {name!r}; its groups are: {', '.join(self.group_names())}"
            raise StoreKeyError(msg)
        return StoreGroup(self.url, name, dict(open_group(self.url, name, what="store group").attrs))


class StoreGroup:
    """One group of a store, read and written chunk by chunk.

    Picklable: Dask tasks receive it and open the arrays on their worker.
    """

    def __init__(self, url: str, name: str, attrs: dict[str, Any]):
        self.url = url
        self.name = name
        self.attrs = attrs
        self._handles: dict[tuple[str, bool], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "attrs": self.attrs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["name"], state["attrs"])

    def __repr__(self) -> str:
        return f"StoreGroup({self.url!r}, {self.name!r}, n_events={self.n_events}, n_chunks={self.n_chunks})"

    @property
    def n_events(self) -> int:
        return int(self.attrs["n_events"])

    @property
    def chunk_len(self) -> int:
        return int(self.attrs["chunk_len"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_events // self.chunk_len)

    @property
    def channel_counts(self) -> dict[int, int]:
        """Events per channel id in this group."""
        return {int(c): int(n) for c, n in zip(self.attrs["channel_ids"], self.attrs["counts"], strict=True)}

    def columns(self) -> list[str]:
        """Every array of the group, ``score/<model>`` columns included, sorted."""
        return list(self.column_infos())

    @property
    def forms(self) -> dict[str, str]:
        """The columns kept in another form than dense rows, e.g. ``{"rmm": "csr"}``
        (:mod:`megaset.storage.csr`); every read gives them dense all the same."""
        return {str(k): str(v) for k, v in self.attrs.get("forms", {}).items()}

    def column_infos(self) -> dict[str, dict[str, Any]]:
        """:meth:`column_info` of every column, sorted by name, from one listing of the group."""
        from megaset.storage.csr import csr_path

        group = self._group(write=False)
        infos = {name: _info(array) for name, array in group.arrays()}
        compact = {csr_path(name): name for name in self.forms}
        for sub, members in group.groups():
            if sub in compact:
                infos[compact[sub]] = self.column_info(compact[sub])
            else:
                infos |= {f"{sub}/{name}": _info(array) for name, array in members.arrays()}
        return dict(sorted(infos.items()))

    def has_column(self, name: str) -> bool:
        """Whether ``name`` is one of :meth:`columns`, from one look at its metadata instead of a
        listing of every array of the group."""
        import zarr

        from megaset.storage.csr import csr_path

        if name in self.forms:
            return True
        if any(name.startswith(f"{csr_path(column)}/") for column in self.forms):
            return False  # the arrays of a column kept in another form are not columns
        return isinstance(self._group(write=False).get(name), zarr.Array)

    def scored_models(self) -> list[str]:
        """The models with a ``score/<model>`` column in this group."""
        return scored_models(self.columns())

    def column_attrs(self, name: str) -> dict[str, Any]:
        """The attributes of column ``name`` (e.g. what made a score column)."""
        if name in self.forms:
            return self._form_attrs(name)
        return dict(self._array(name).attrs)

    def set_column_attrs(self, name: str, attrs: Mapping[str, Any]) -> None:
        """Replace the attributes of column ``name``."""
        self._array(name, write=True).attrs.put(dict(attrs))

    def column_info(self, name: str) -> dict[str, Any]:
        """``shape``, ``chunks`` and ``dtype`` of one column (as read: dense rows)."""
        if name in self.forms:
            from megaset.storage.csr import csr_path

            attrs, counts = self._form_attrs(name), self._array(f"{csr_path(name)}/nnz")
            tail = tuple(attrs["shape"])
            return {"shape": (counts.shape[0], *tail), "chunks": (counts.chunks[0], *tail),
                    "dtype": np.dtype(attrs["dtype"])}
        return _info(self._array(name))

    def chunk_slice(self, i: int) -> slice:
        """The events of chunk ``i``."""
        if not 0 <= i < self.n_chunks:
            msg = f"chunk {i} is out of range for group {self.name!r} of {self.url!r} ({self.n_chunks} chunks)"
            raise IndexError(msg)
        return slice(i * self.chunk_len, min((i + 1) * self.chunk_len, self.n_events))

    def read_chunk(self, i: int, columns: Sequence[str] = ("rmm", "weight"),
                   compact: Collection[str] = ()) -> dict[str, Any]:
        """The values of ``columns`` in chunk ``i``; those named in ``compact`` as
        :class:`~megaset.storage.compact.CompactRows` (their non-zero cells)."""
        return self.read_chunks(range(i, i + 1), columns, compact)

    def read_chunks(self, indices: range, columns: Sequence[str] = ("rmm", "weight"),
                    compact: Collection[str] = ()) -> dict[str, Any]:
        """The values of ``columns`` in the consecutive chunks ``indices``, one array per column
        (one :class:`~megaset.storage.compact.CompactRows` per column named in ``compact``: made
        straight from the stored cells of a column in the CSR form, without dense rows)."""
        from zarr.core.sync import sync

        from megaset.storage.compact import CompactRows
        from megaset.storage.csr import read_csr

        if not indices or indices.step != 1:
            msg = f"read_chunks takes a non-empty range of consecutive chunks, not {indices}"
            raise ValueError(msg)
        if not set(compact) <= set(columns):
            msg = (f"compact names {sorted(set(compact) - set(columns))}, which are not among the columns read "
                   f"{list(columns)}")
            raise ValueError(msg)
        first, last = self.chunk_slice(indices[0]), self.chunk_slice(indices[-1])
        rows = slice(first.start, last.stop)
        where = f"group {self.name!r} of store {self.url!r}"
        fix = ("run `megaset verify` to list every damaged chunk, then rebuild the store from its staging area "
               "(`megaset mix` into a new store.url) or rescore a damaged score/ column")
        forms = self.forms
        dense = [name for name in columns if name not in forms]
        group = self._group(write=False)._async_group
        arrays = [(self._array(name).async_array, rows) for name in dense]
        kept = {name: self._form_attrs(name) for name in columns if name in forms}

        async def read() -> list[Any]:
            # All columns and chunks at once: the reads and decodes overlap.
            return await asyncio.gather(
                checked_reads(arrays, where, fix),
                *(read_csr(group, attrs, indices, rows, self.chunk_len, name in compact, where, fix)
                  for name, attrs in kept.items()))

        plain, *compacted = sync(read())
        values = dict(zip(dense, plain, strict=True)) | dict(zip(kept, compacted, strict=True))
        return {name: CompactRows.of(values[name]) if name in compact and name in dense else values[name]
                for name in columns}

    def iter_chunks(self, columns: Sequence[str] = ("rmm", "weight"),
                    indices: Iterable[int] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(i, values)`` for the chunks ``indices`` (all, in order, by default)."""
        for i in range(self.n_chunks) if indices is None else indices:
            yield i, self.read_chunk(i, columns)

    def create_column(self, name: str, dtype: Any, shape_tail: tuple[int, ...] = (), overwrite: bool = False) -> None:
        """Add a column, e.g. ``score/ae-deep``, in chunks of whole chunks of the group: as many
        as hold :data:`ADDED_CHUNK_EVENTS` events (one where the group's chunks are as large).

        Float columns are filled with NaN until written, so an unwritten chunk reads as
        missing (and ``megaset verify`` reports it). Creating an existing column with the
        same dtype and shape keeps it and its written chunks (resumable scoring); with
        ``overwrite=True`` it starts empty.
        """
        from megaset.config import CompressorConfig
        from megaset.storage.codecs import compressors

        if name in self.attrs["base_columns"]:
            msg = (f"column {name!r} of group {self.name!r} in {self.url!r} is written by `megaset mix`; "
                   f"pick another name, e.g. 'score/{name}'")
            raise StoreError(msg)
        dtype = np.dtype(dtype)
        shape = (self.n_events, *shape_tail)
        group = self._group(write=True)
        if not overwrite and self.has_column(name):
            existing = group[name]
            if existing.dtype == dtype and tuple(existing.shape) == shape:
                return
            msg = (
                f"column {name!r} of group {self.name!r} in {self.url!r} exists as {existing.dtype} "
                f"{tuple(existing.shape)}, not {dtype} {shape}; pass overwrite=True to replace it"
            )
            raise StoreError(msg)
        codec = CompressorConfig(**self.attrs["compressor"])
        group.create_array(
            name, shape=shape, dtype=dtype, chunks=(self.chunk_len * max(1, ADDED_CHUNK_EVENTS // self.chunk_len),
                                                   *shape_tail),
            compressors=compressors(codec), fill_value=float_fill(dtype), overwrite=True,
            dimension_names=column_dimensions(name, len(shape_tail)),
        )
        self._handles.clear()

    def column_span(self, name: str) -> int:
        """How many of the group's chunks one chunk of column ``name`` holds: 1 for the columns
        of the mix, more for the columns added later where the group's chunks are small."""
        if name in self.forms:
            return 1
        return int(self._array(name).chunks[0]) // self.chunk_len

    def column_chunks(self, name: str, indices: range | None = None) -> list[range]:
        """The group's chunks ``indices`` (all by default) as the chunks of column ``name`` hold
        them: runs of :meth:`column_span` chunks, the last one shorter at the group's end.

        Raises ``ValueError`` where ``indices`` would cut a chunk of the column: two writers of
        one chunk would each rewrite the other's half."""
        span = self.column_span(name)
        indices = range(self.n_chunks) if indices is None else indices
        first, stop = indices.start, indices.stop
        if indices and (indices.step != 1 or first % span or not 0 <= first < stop <= self.n_chunks
                        or (stop % span and stop != self.n_chunks)):
            msg = (f"chunks {first}..{stop - 1} of group {self.name!r} in {self.url!r} do not cover whole chunks of "
                   f"column {name!r} ({span} of the group's chunks each); start on a multiple of {span} and end on "
                   f"one or at the group's end ({self.n_chunks})")
            raise ValueError(msg)
        return [range(start, min(start + span, stop)) for start in range(first, stop, span)]

    def write_chunks(self, name: str, indices: range, values: np.ndarray) -> None:
        """Write the group's chunks ``indices`` of column ``name``, which must be whole chunks
        of the column (:meth:`column_chunks`): one writer per chunk, no locks."""
        self.column_chunks(name, indices)
        rows = slice(self.chunk_slice(indices[0]).start, self.chunk_slice(indices[-1]).stop) if indices else slice(0, 0)
        array = self._array(name, write=True)
        expected = (rows.stop - rows.start, *array.shape[1:])
        values = np.asarray(values)
        if values.shape != expected:
            msg = (f"chunks {indices.start}..{indices.stop - 1} of {self.name}/{name} in {self.url!r} need shape "
                   f"{expected}, got {values.shape}")
            raise ValueError(msg)
        array[rows] = values.astype(array.dtype, copy=False)

    def chunk_written(self, name: str, i: int) -> bool:
        """Whether the chunk of column ``name`` that holds the group's chunk ``i`` has been
        written (for resumable scoring)."""
        self.chunk_slice(i)
        return chunk_exists(self._array(name), i // self.column_span(name))

    def _form_attrs(self, name: str) -> dict[str, Any]:
        """The attributes of the subgroup holding column ``name`` in its form (read once)."""
        from megaset.storage.csr import csr_path

        key = (f"{csr_path(name)}/", False)
        if key not in self._handles:
            self._handles[key] = dict(self._group(write=False)[csr_path(name)].attrs)
        return self._handles[key]

    def _group(self, write: bool):
        key = ("", write)
        if key not in self._handles:
            self._handles[key] = open_group(self.url, self.name, mode="r+" if write else "r", what="store group")
        return self._handles[key]

    def _array(self, name: str, write: bool = False):
        key = (name, write)
        if key not in self._handles:
            group = self._group(write)
            try:
                array = group[name]
            except KeyError:
                msg = (
                    f"group {self.name!r} of {self.url!r} has no column {name!r}; "
                    f"its columns are: {', '.join(self.columns())}"
                )
                raise StoreKeyError(msg) from None
            # Every chunk written is stored, even all zeros, so chunk_written sees it.
            self._handles[key] = array.with_config({"write_empty_chunks": True}) if write else array
        return self._handles[key]


def _info(array: Any) -> dict[str, Any]:
    return {"shape": tuple(array.shape), "chunks": tuple(array.chunks), "dtype": np.dtype(array.dtype)}

