"""SQL over the columns of one store group, streamed in runs of chunks (polars SQL).

Every group of a store is a table, named by the group (``train``, ``val``, ``test``, ``data``,
``signal_<name>`` or quoted ``"signal/<name>"``), whose columns are

* the aux columns as stored (``met``, ``m_ll``, ``m_lll``, ``ht``, ``n_jets``, ...);
* ``weight``, the event weight as stored: the expected events of the *whole* channel at the
  store's luminosity are shared between the groups the mix put the channel in (train, val and
  test hold about 60, 20 and 20 % of each background channel), so ``sum(weight)`` over one group
  is that group's share, about a fifth of the report's yields for ``test``;
* ``yield_weight``, the weight scaled to the whole sample as the report's yields are (weight x
  the channel's sum of weights over every group / its sum in this group): ``sum(yield_weight)``
  per channel of any group is the channel's expected yield, the number in ``report.md``;
* ``channel`` (the integer id) and ``channel_name`` (its name, an enum);
* the parts of the event id: ``run``, ``event``, ``file_index``, ``entry``;
* every RMM cell by its feature name (``e_T_miss``, ``m_ele_0_muo_0``, ``h_L_ljet_0``, ...);
* the scores, ``score/<model>`` as ``score_<model>`` and ``score/<model>.<block>`` as
  ``score_<model>_<block>`` (every character that cannot be in an SQL identifier becomes ``_``).

The table is a polars ``LazyFrame`` over an IO source that reads the group in runs of chunks
(about 16 MB of the arrays read, read and decoded at once) and yields one DataFrame per run. It
reads only the arrays behind the columns the query uses (projection pushdown); a filter is
applied to each run as it is read (predicate pushdown): its own columns are read first, and the
other columns only for the runs where rows pass, kept for those rows only. The query runs on
polars' streaming engine, so memory holds a few runs whatever the size of the group. The SQL is
parsed by polars: nothing in it is evaluated as Python, and table functions that would read
other files (``read_csv``, ``read_parquet``, ...) are refused.

>>> query("megaset-demo/store.zarr",  # doctest: +SKIP
...       "SELECT channel_name, count(*) AS n, sum(yield_weight) AS expected FROM test GROUP BY channel_name")
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.errors import ConfigError, StoreError, StoreKeyError
from megaset.storage.store import Store, StoreGroup, open_store

if TYPE_CHECKING:
    import polars as pl

__all__ = ["query", "query_lazy", "scan", "export", "sql_name", "EVENT_ID_FIELDS", "YIELD_WEIGHT"]

#: The column of weights scaled to the whole sample (:meth:`megaset.storage.store.Store.yield_weight`).
YIELD_WEIGHT = "yield_weight"
#: The parts of the ``event_id`` column, in order.
EVENT_ID_FIELDS = ("run", "event", "file_index", "entry")
_TABLE_FUNCTION = re.compile(r"\bread_\w+", re.IGNORECASE)
_FIRST_WORD = re.compile(r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(\w+)", re.DOTALL)
_QUOTED = re.compile(r'"([^"]+)"')
_SHOWN = 12  # how many columns an error message lists before "..."


def sql_name(column: str) -> str:
    """The SQL name of a store column: every character that is not a letter, digit or ``_`` -> ``_``.

    >>> sql_name("score/ae-deep"), sql_name("score/ae-deep.met"), sql_name("signal/c1n2_wz_800_50")
    ('score_ae_deep', 'score_ae_deep_met', 'signal_c1n2_wz_800_50')
    """
    return re.sub(r"\W", "_", column)


@dataclass(frozen=True)
class _Column:
    """One SQL column: the store array it comes from and, for a 2-D array, the index in it."""

    array: str
    index: int | None
    dtype: Any
    scaled: bool = False  # the yield weight: ``array`` times the yield factor of each event's channel


def _polars_dtype(dtype: np.dtype) -> Any:
    import polars as pl

    return pl.Series(np.empty(0, dtype=dtype)).dtype


def _table_columns(store: Store, group: StoreGroup, infos: Mapping[str, dict[str, Any]] | None = None
                   ) -> dict[str, _Column]:
    """SQL column name -> where its values come from, for one group (``infos``: its
    :meth:`~megaset.storage.store.StoreGroup.column_infos`, if already read).

    Raises
    ------
    StoreError
        When two store columns would get the same SQL name.
    """
    import polars as pl

    out: dict[str, _Column] = {}

    def add(name: str, column: _Column, source: str) -> None:
        if name in out:
            msg = (
                f"group {group.name!r} of {store.url!r}: columns {out[name].array!r} and {source!r} "
                f"both map to the SQL name {name!r}; rename one of them"
            )
            raise StoreError(msg)
        out[name] = column

    for array, info in (group.column_infos() if infos is None else infos).items():
        dtype = _polars_dtype(info["dtype"])
        if len(info["shape"]) > 2:
            continue  # e.g. a jet's constituent list: no single SQL column per cell
        if array == store.feature_column:
            for k, feature in enumerate(store.feature_names):
                add(feature, _Column(array, k, dtype), f"{array} cell {feature}")
        elif array == "event_id":
            for k, part in enumerate(EVENT_ID_FIELDS):
                add(part, _Column("event_id", k, dtype), f"event_id[{k}]")
        elif len(info["shape"]) == 2:
            for k in range(info["shape"][1]):
                add(f"{sql_name(array)}_{k}", _Column(array, k, dtype), f"{array}[{k}]")
        else:
            add(sql_name(array), _Column(array, None, dtype), array)
        if array == "channel":
            names = [c["name"] for c in sorted(store.channels, key=lambda c: c["id"])]
            add("channel_name", _Column("channel", None, pl.Enum(names)), "channel names")
    if "weight" in out and "channel" in out:
        add(YIELD_WEIGHT, _Column("weight", None, pl.Float64, scaled=True), "yield weights")
    return out


def _frame(values: Mapping[str, np.ndarray], columns: Mapping[str, _Column], names: list[str],
           channels: Mapping[int, str], scale: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> pl.DataFrame:
    import polars as pl

    series = []
    for name in names:
        col = columns[name]
        data = values[col.array] if col.index is None else values[col.array][:, col.index]
        if col.scaled:
            series.append(pl.Series(name, scale(data, values["channel"]), dtype=col.dtype))
        elif name == "channel_name":
            ids = pl.Series(name, data)
            series.append(ids.replace_strict(list(channels), list(channels.values()), return_dtype=col.dtype))
        else:
            series.append(pl.Series(name, data, dtype=col.dtype))
    return pl.DataFrame(series)


#: Uncompressed bytes of the columns a query reads, per batch of chunks it reads at once.
_BATCH_BYTES = 16 << 20
#: At most this many events per batch, whatever their width.
_BATCH_EVENTS = 1 << 18


def _batches(group: StoreGroup, infos: Mapping[str, dict[str, Any]], arrays: list[str]) -> Iterator[range]:
    """The group's chunks in runs read at once: as many as hold ``_BATCH_BYTES`` of ``arrays``
    (``infos`` gives their shapes; at least one chunk, at most ``_BATCH_EVENTS`` events), so
    that the reads and decodes of a run overlap while memory holds one run."""
    width = sum(infos[a]["dtype"].itemsize * int(np.prod(infos[a]["shape"][1:], dtype=np.int64)) for a in arrays)
    events = min(_BATCH_BYTES // max(width, 1), _BATCH_EVENTS)
    step = max(1, events // group.chunk_len)
    for first in range(0, group.n_chunks, step):
        yield range(first, min(first + step, group.n_chunks))


def scan(url: str | Store, group: str) -> pl.LazyFrame:
    """A lazy table over one group, read chunk by chunk (the table of :func:`query`).

    >>> scan("megaset-demo/store.zarr", "test").filter(pl.col("met") > 200).collect()  # doctest: +SKIP

    Raises
    ------
    StoreKeyError
        For a group the store does not have (the message lists its groups).
    """
    return _scan(url if isinstance(url, Store) else open_store(url), group)


def _scan(store: Store, group: str) -> pl.LazyFrame:
    """:func:`scan` of an opened store."""
    import polars as pl
    from polars.io.plugins import register_io_source

    g = store.group(group)
    infos = g.column_infos()
    cols = _table_columns(store, g, infos)

    def chunks(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        wanted = list(cols) if with_columns is None else list(with_columns)
        filtered = set(predicate.meta.root_names()) if predicate is not None else set()
        needed = set(wanted) | filtered
        if not needed:
            # A bare count(*): the height of the smallest column will do.
            needed = {"channel" if "channel" in cols else next(iter(cols))}
        names = [name for name in cols if name in needed]

        def arrays_of(chosen: list[str]) -> set[str]:
            # The yield weight is computed from the weight and the channel.
            return {cols[name].array for name in chosen} | ({"channel"} if YIELD_WEIGHT in chosen else set())

        tested = [name for name in names if name in filtered]
        first_read = sorted(arrays_of(tested))
        then_read = sorted(arrays_of(names) - set(first_read))

        def scale(weight: np.ndarray, channel: np.ndarray) -> np.ndarray:
            return store.yield_weight(group, weight, channel)

        channels = {int(c["id"]): c["name"] for c in store.channels}
        left = n_rows
        for span in _batches(g, infos, [*first_read, *then_read]):
            if left is not None and left <= 0:
                return
            values = g.read_chunks(span, first_read or then_read)
            if predicate is not None:
                # The predicate first, on its own columns: the other columns are read only for
                # batches with rows that pass, and kept only for those rows.
                keep = _frame(values, cols, tested, channels, scale).select(predicate.fill_null(False)).to_series()
                rows = np.flatnonzero(keep.to_numpy())
                if not len(rows):
                    continue
                values = {a: v[rows] for a, v in values.items()}
                if then_read:
                    values |= {a: v[rows] for a, v in g.read_chunks(span, then_read).items()}
            elif then_read and first_read:
                values |= g.read_chunks(span, then_read)
            frame = _frame(values, cols, names, channels, scale)
            frame = frame.select(wanted) if wanted else frame
            if left is not None:
                frame = frame.head(left)
                left -= frame.height
            yield frame

    # The schema as a mapping, not a function: polars turns a function's schema into an empty
    # frame of every column (some 550 here) each time it plans, which cost more than the reads.
    schema = pl.Schema({name: col.dtype for name, col in cols.items()})
    # The source's name in explain(): polars 1.x takes none, so it is given only where accepted.
    label: dict[str, Any] = {"explain_name": "megaset", "explain_detail": f"{store.url} group {group}"}
    accepted = inspect.signature(register_io_source).parameters
    return register_io_source(chunks, schema=schema, **{k: v for k, v in label.items() if k in accepted})


def _check_sql(sql: str) -> None:
    found = _TABLE_FUNCTION.search(sql)
    if found:
        msg = (
            f"table functions such as {found.group(0)!r} are not available in queries: "
            "select FROM a group of the store (train, val, test, data, signal_<name>)"
        )
        raise ConfigError(msg)
    first = _FIRST_WORD.match(sql)
    if not first or first.group(1).upper() not in ("SELECT", "WITH"):
        word = first.group(1) if first else sql.strip()[:20]
        msg = f"only SELECT queries run on a store, got {word!r}"
        raise ConfigError(msg)


def _tables(store: Store, sql: str, seen: list[str]) -> dict[str, pl.LazyFrame]:
    """The groups named anywhere in ``sql`` (by either name), as tables; ``seen`` lists them."""
    tables = {}
    for name in store.group_names():
        aliases = dict.fromkeys((name, sql_name(name)))
        if not any(re.search(rf"(?<![\w/]){re.escape(alias)}(?![\w/])", sql, re.IGNORECASE) for alias in aliases):
            continue
        frame = _scan(store, name)
        seen.append(name)
        tables.update(dict.fromkeys(aliases, frame))
    return tables


def _unknown_column(err: Exception, store: Store, seen: list[str]) -> StoreKeyError:
    found = _QUOTED.search(str(err))
    column = found.group(1) if found else "?"
    groups = list(dict.fromkeys(seen)) or store.group_names()[:1]
    known = list(_table_columns(store, store.group(groups[0])))
    close = difflib.get_close_matches(column, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    feats = set(store.feature_names)
    plain = [c for c in known if c not in feats]
    listed = ", ".join(plain) + (
        f", and the {len(feats)} RMM cells by feature name ({', '.join(store.feature_names[:3])}, ...)"
        if feats else "")
    msg = f"group {groups[0]!r} of {store.url!r} has no column {column!r}{hint}; its columns are: {listed}"
    return StoreKeyError(msg)


def _unknown_group(err: Exception, store: Store) -> StoreKeyError:
    found = re.search(r"relation '([^']+)'", str(err))
    table = found.group(1) if found else str(err)
    names = [f'{sql_name(n)} (or "{n}")' if "/" in n else n for n in store.group_names()]
    msg = f"store {store.url!r} has no group {table!r}; its groups are: {', '.join(names)}"
    return StoreKeyError(msg)


def query_lazy(url: str | Store, sql: str) -> pl.LazyFrame:
    """The lazy result of ``sql`` over the store at ``url`` (see :func:`query`)."""
    return _run(url, sql, lambda lazy: lazy)


def _run(url: str | Store, sql: str, action: Callable[[pl.LazyFrame], Any]) -> Any:
    """Plan ``sql`` over the store's groups and apply ``action`` to the plan, with clear errors.

    polars reports an unknown table or column either when planning or when collecting.
    """
    import polars as pl

    _check_sql(sql)
    store = url if isinstance(url, Store) else open_store(url)
    seen: list[str] = []
    context = pl.SQLContext(frames=_tables(store, sql, seen))
    try:
        return action(context.execute(sql, eager=False))
    except pl.exceptions.ColumnNotFoundError as err:
        raise _unknown_column(err, store, seen) from None
    except pl.exceptions.SQLInterfaceError as err:
        if "relation" in str(err):
            raise _unknown_group(err, store) from None
        msg = f"cannot run the query on {store.url!r}: {err}"
        raise ConfigError(msg) from None


def query(url: str | Store, sql: str) -> pl.DataFrame:
    """Run one SQL ``SELECT`` over a group of the store at ``url``; the result as a DataFrame.

    Parameters
    ----------
    url
        The store (any fsspec URL) or an opened :class:`~megaset.storage.store.Store`.
    sql
        One ``SELECT`` (or ``WITH ... SELECT``) statement whose ``FROM`` names a group; see the
        module documentation for the columns.

    Returns
    -------
    polars.DataFrame

    Raises
    ------
    StoreKeyError
        For an unknown group (the groups are listed) or column (the columns are listed).
    ConfigError
        For a statement other than a query, a table function, or SQL polars cannot run.

    Examples
    --------
    >>> query(url, "SELECT met, score_ae_shallow FROM test WHERE score_ae_shallow > 0.02")  # doctest: +SKIP
    """
    return _run(url, sql, lambda lazy: lazy.collect(engine="streaming"))


def export(url: str | Store, sql: str, path: str | Path) -> Path:
    """Stream the result of ``sql`` into a Parquet (``.parquet``) or CSV (``.csv``) file.

    Raises
    ------
    ConfigError
        For another file suffix.
    """
    path = Path(path)
    sinks = {".parquet": "sink_parquet", ".csv": "sink_csv"}
    if path.suffix not in sinks:
        msg = f"cannot write {str(path)!r}: give a file ending in .parquet or .csv"
        raise ConfigError(msg)
    _run(url, sql, lambda lazy: getattr(lazy, sinks[path.suffix])(path))
    return path
