"""``megaset verify``: re-check every invariant of a finished store, chunk by chunk.

Checked: the mixture of every chunk of every group against the quota rule
(:func:`megaset.storage.quotas.chunk_quotas`) and the channel counts in the metadata; the
group and channel counts and weight sums against the metadata; every column's length and
chunking; no NaN or inf in the RMM, the weights and the aux columns; every ``score/*`` column
aligned with its group and finite (an unwritten score chunk reads as NaN); event ids unique
across all groups; every chunk's crc32c checksum (each damaged chunk is listed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from megaset.errors import DamagedChunkError
from megaset.storage.quotas import chunk_quotas
from megaset.storage.scores import is_score_column
from megaset.storage.store import StoreGroup, open_store

__all__ = ["verify"]

#: Duplicated event ids listed in full; the rest are counted.
_SHOW = 5


def verify(url: str) -> list[str]:
    """The problems found in the store at ``url``; an empty list means every invariant holds.

    Raises
    ------
    StoreError
        If there is no megaset store at ``url``.
    """
    store = open_store(url, require_complete=False)
    if not store.attrs.get("complete"):
        return [f"store {url!r} is incomplete: run `megaset mix` to finish it"]
    channels = {int(c["id"]): c for c in store.channels}
    problems: list[str] = []
    keys, places, where = [], [], []
    for name in store.group_names():
        group = store.group(name)
        problems += _check_metadata(group, channels)
        columns = group.columns()
        problems += _check_layout(group, columns)
        quotas = chunk_quotas(group.attrs["counts"], group.chunk_len)
        ids = np.asarray(group.attrs["channel_ids"])
        sums = np.zeros(len(ids))
        damaged = False
        for i in range(group.n_chunks):
            try:
                values = group.read_chunk(i, columns)
            except DamagedChunkError as err:
                # Every damaged chunk named, the chunk's other checks skipped: its values are unknown.
                damaged = True
                problems += [f"{name} chunk {i}: damaged chunk {c} ({err.reason})" for c in err.chunks]
                continue
            problems += _check_chunk(name, i, values, ids, quotas[i], channels)
            weight = values["weight"].astype(np.float64)
            sums += [weight[values["channel"] == c].sum() for c in ids]
            keys.append(values["event_id"])
            places.append(np.full(len(values["event_id"]), len(where), dtype=np.int64))
            where.append(f"{name} chunk {i}")
        if not damaged:  # the sums lack the damaged chunks' weights
            problems += _check_sums(name, ids, sums, group.attrs.get("sum_weights"), channels)
    if keys:
        problems += _duplicates(np.concatenate(keys), np.concatenate(places), where)
    return problems


def _channel_name(channels: Mapping[int, dict], cid: int) -> str:
    return channels[cid]["name"] if cid in channels else f"<unknown channel id {cid}>"


def _check_metadata(group: StoreGroup, channels: Mapping[int, dict]) -> list[str]:
    problems = []
    counts = group.channel_counts
    if sum(counts.values()) != group.n_events:
        problems.append(
            f"{group.name}: channel counts add up to {sum(counts.values()):,}, "
            f"the group has {group.n_events:,} events"
        )
    for cid, n in counts.items():
        listed = channels.get(cid, {}).get("events", {}).get(group.name)
        if listed != n:
            problems.append(
                f"{group.name}: {_channel_name(channels, cid)} has {n:,} events in the group "
                f"metadata but {listed} in the store's channel table"
            )
    return problems


def _check_layout(group: StoreGroup, columns: list[str]) -> list[str]:
    problems = []
    base = set(group.attrs["base_columns"])
    for name in columns:
        info = group.column_info(name)
        rows, chunk = info["shape"][0], info["chunks"][0]
        # The mix's columns share the group's chunks; a column added later holds whole ones.
        aligned = chunk == group.chunk_len if name in base else chunk % group.chunk_len == 0
        if rows != group.n_events or not aligned:
            problems.append(
                f"{group.name}/{name}: {rows:,} rows in chunks of {chunk:,}, "
                f"the group has {group.n_events:,} events in chunks of {group.chunk_len:,}"
                + (" (rerun the scoring with overwrite)" if is_score_column(name) else "")
            )
    return problems


def _check_chunk(group: str, i: int, values: Mapping[str, np.ndarray], ids: np.ndarray,
                 quota: np.ndarray, channels: Mapping[int, dict]) -> list[str]:
    problems = []
    found = {int(c): int(n) for c, n in zip(*np.unique(values["channel"], return_counts=True), strict=True)}
    expected = {int(c): int(q) for c, q in zip(ids, quota, strict=True) if q}
    if found != expected:
        def show(counts: Mapping[int, int]) -> str:
            return ", ".join(f"{_channel_name(channels, c)}={n}" for c, n in sorted(counts.items()))

        problems.append(f"{group} chunk {i}: mixture {{{show(found)}}} differs from its quota {{{show(expected)}}}")
    for name, column in values.items():
        if column.dtype.kind == "f":
            bad = int((~np.isfinite(column)).sum())
            if bad:
                hint = " (unwritten score chunk? rerun `megaset score`)" if is_score_column(name) else ""
                problems.append(f"{group} chunk {i}: {bad} NaN/inf values in {name}{hint}")
    return problems


def _check_sums(group: str, ids: np.ndarray, sums: np.ndarray, listed: Any,
                channels: Mapping[int, dict]) -> list[str]:
    if listed is None:
        return [f"{group}: no sum_weights in the group metadata"]
    listed = np.asarray(listed, dtype=np.float64)
    # The mix adds the weights in another order: allow for float64 rounding only.
    bad = ~np.isclose(sums, listed, rtol=1e-9, atol=1e-9 * max(float(np.abs(listed).sum()), 1.0))
    return [
        f"{group}: weights of {_channel_name(channels, int(c))} add up to {s:.9g}, the metadata says {m:.9g}"
        for c, s, m in zip(ids[bad], sums[bad], listed[bad], strict=True)
    ]


def _event_keys(event_id: np.ndarray) -> np.ndarray:
    """One sortable key per event id: (file index, entry) packed when they fit, else all four fields."""
    file_index, entry = event_id[:, 2], event_id[:, 3]
    if (len(event_id) and file_index.min() >= 0 and entry.min() >= 0
            and file_index.max() < 2**23 and entry.max() < 2**40):
        return (file_index << 40) | entry
    return np.ascontiguousarray(event_id).view(np.dtype((np.void, event_id.itemsize * 4))).ravel()


def _duplicates(event_id: np.ndarray, places: np.ndarray, where: list[str]) -> list[str]:
    keys = _event_keys(event_id)
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    if not same.any():
        return []
    firsts = np.flatnonzero(same & ~np.concatenate([[False], same[:-1]]))
    problems = []
    for f in firsts[:_SHOW]:
        run = [order[f]]
        while f < len(same) and same[f]:
            f += 1
            run.append(order[f])
        run_id, event, file_index, entry = (int(v) for v in event_id[run[0]])
        seen = ", ".join(where[places[r]] for r in run)
        problems.append(
            f"event (run {run_id}, event {event}, file {file_index}, entry {entry}) appears "
            f"{len(run)} times: {seen}"
        )
    if len(firsts) > _SHOW:
        problems.append(f"... and {len(firsts) - _SHOW} more duplicated event ids")
    return problems
