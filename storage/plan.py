"""The mix plan: which staged rows go to which chunk of which group. Pure, no I/O.

Every channel's staged events form one *sequence*: the channel's pieces (sorted by key, pieces
of skipped files left out) are cut into staging blocks (``block_rows`` rows, so a block is
read whole and only once per output chunk that needs it), the blocks are put in a seeded
random order, and the rows inside each block in a seeded random order too.
Consecutive ranges of that sequence are then handed out:

- a background channel's sequence is split into train / val / test ranges by the split
  fractions (largest remainder, per channel, so every split is stratified);
- the contamination signal's first ``fraction x train size`` events go to ``train``, the rest
  to ``signal/<name>``;
- inside a group, chunk ``k`` takes ``quota[k, c]`` events of channel ``c``
  (:func:`megaset.storage.quotas.chunk_quotas`), the next range of the channel's share.

The chunk's rows are finally put in a seeded random order. All seeds derive from
``store.seed``, so a plan, and therefore the store, is a pure function of the staging area and
the store settings; a resumed mix redoes missing chunks identically.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megaset.config import StoreConfig
from megaset.errors import ConfigError
from megaset.storage.quotas import chunk_quotas
from megaset.storage.staging import BLOCK_ROWS

__all__ = [
    "Segment",
    "ChunkTask",
    "ChannelSequence",
    "GroupPlan",
    "MixPlan",
    "channel_roles",
    "make_plan",
    "split_counts",
    "rng",
    "Stream",
    "BACKGROUND_GROUPS",
]

BACKGROUND_GROUPS = ("train", "val", "test")

class Stream(enum.IntEnum):
    """Tags of the seeded random streams, so that no two uses share random numbers."""

    #: The order in which a channel's staging blocks are dealt out to the groups.
    BLOCK_ORDER = 0
    #: Which rows of a staging block an output chunk takes.
    ROWS_IN_BLOCK = 1
    #: Where each row lands in its output chunk (the shuffle).
    ROWS_IN_CHUNK = 2


def rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    """The generator of one seeded stream (``tag``) for one object (``keys``)."""
    return np.random.default_rng([seed % 2**63, tag, *keys])


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """``n`` events split by ``fractions`` (summing to 1), largest remainder, ties to the first.

    >>> split_counts(10, (0.6, 0.2, 0.2))
    [6, 2, 2]
    >>> split_counts(7, (0.6, 0.2, 0.2))
    [4, 2, 1]
    """
    ideal = np.asarray(fractions, dtype=np.float64) * n
    counts = np.floor(ideal).astype(np.int64)
    left = n - int(counts.sum())
    order = np.lexsort((np.arange(len(ideal)), -(ideal - counts)))
    counts[order[:left]] += 1
    return counts.tolist()


@dataclass(frozen=True)
class Segment:
    """Rows ``lo:hi`` of one staging block (after its row permutation) taken by one chunk."""

    channel: str
    piece: str
    start: int
    length: int
    block: int
    lo: int
    hi: int


@dataclass(frozen=True)
class ChunkTask:
    """Everything one Dask task needs to build one output chunk (small, picklable).

    ``plan`` is the plan's fingerprint: workers key the Zarr arrays they keep open by it.
    """

    group: str
    index: int
    start: int
    size: int
    channel_ids: tuple[int, ...]
    segments: tuple[tuple[Segment, ...], ...]
    scaler: bool
    seed: int
    plan: str


@dataclass
class ChannelSequence:
    """A channel's staged events as one seeded-shuffled sequence of blocks.

    Per block, in shuffled order: ``piece`` (index into ``pieces``), ``start`` (first row in
    the piece), ``length``, ``block`` (its index before shuffling, which seeds its row order);
    ``offsets`` are the cumulative lengths, so sequence position ``p`` is in the block ``j``
    with ``offsets[j] <= p < offsets[j + 1]``.
    """

    name: str
    id: int
    pieces: list[str]
    piece: np.ndarray
    start: np.ndarray
    length: np.ndarray
    block: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, name: str, channel_id: int, pieces: Sequence[tuple[str, Mapping[str, Any]]],
              seed: int) -> ChannelSequence:
        """The sequence of the finished pieces ``(key, attrs)`` of one channel, sorted by key."""
        keys, piece, start, length = [], [], [], []
        for key, attrs in pieces:
            n_rows = int(attrs["n_rows"])
            step = int(attrs.get("block_rows", BLOCK_ROWS))
            if n_rows == 0:
                continue
            firsts = np.arange(0, n_rows, step)
            piece.append(np.full(len(firsts), len(keys)))
            start.append(firsts)
            length.append(np.minimum(step, n_rows - firsts))
            keys.append(key)
        piece_a, start_a, length_a = (
            np.concatenate(a).astype(np.int64) if a else np.zeros(0, np.int64) for a in (piece, start, length)
        )
        order = rng(seed, Stream.BLOCK_ORDER, channel_id).permutation(len(piece_a))
        offsets = np.concatenate([[0], np.cumsum(length_a[order])]).astype(np.int64)
        return cls(name, channel_id, keys, piece_a[order], start_a[order], length_a[order], order, offsets)

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def segments(self, first: int, stop: int) -> tuple[Segment, ...]:
        """The block pieces holding sequence positions ``first:stop``."""
        if stop <= first:
            return ()
        j0 = int(np.searchsorted(self.offsets, first, side="right")) - 1
        j1 = int(np.searchsorted(self.offsets, stop, side="left"))
        out = []
        for j in range(j0, j1):
            lo = max(first, int(self.offsets[j])) - int(self.offsets[j])
            hi = min(stop, int(self.offsets[j + 1])) - int(self.offsets[j])
            out.append(Segment(self.name, self.pieces[self.piece[j]], int(self.start[j]),
                               int(self.length[j]), int(self.block[j]), lo, hi))
        return tuple(out)


@dataclass
class GroupPlan:
    """One output group: its channels, their ranges in the channel sequences, the quotas."""

    name: str
    kind: str
    channel_ids: list[int]
    counts: list[int]
    firsts: list[int]
    chunk_len: int
    quotas: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.quotas = chunk_quotas(self.counts, self.chunk_len)
        self._ends = np.cumsum(self.quotas, axis=0)

    @property
    def n_events(self) -> int:
        return int(sum(self.counts))

    @property
    def n_chunks(self) -> int:
        return len(self.quotas)

    def task(self, k: int, sequences: Mapping[int, ChannelSequence], seed: int, plan: str) -> ChunkTask:
        """The task building chunk ``k``."""
        ends = self._ends[k]
        begins = ends - self.quotas[k]
        segments = tuple(
            sequences[cid].segments(first + int(b), first + int(e))
            for cid, first, b, e in zip(self.channel_ids, self.firsts, begins, ends, strict=True)
        )
        return ChunkTask(self.name, k, k * self.chunk_len, int(self.quotas[k].sum()),
                         tuple(self.channel_ids), segments, self.name == "train", seed, plan)


@dataclass
class MixPlan:
    """Every group of the store and the channel sequences they draw from."""

    groups: list[GroupPlan]
    sequences: dict[int, ChannelSequence]
    seed: int
    contamination: dict[str, Any] | None
    fingerprint: str

    def group(self, name: str) -> GroupPlan:
        return next(g for g in self.groups if g.name == name)

    def tasks(self, name: str, indices: Sequence[int] | None = None) -> Iterator[ChunkTask]:
        group = self.group(name)
        for k in range(group.n_chunks) if indices is None else indices:
            yield group.task(int(k), self.sequences, self.seed, self.fingerprint)


def _contamination(cfg: StoreConfig, channels: list[dict], n_train: int,
                   sequences: dict[int, ChannelSequence]) -> tuple[int, int] | None:
    """(channel id, injected events) of the contamination, or None."""
    if cfg.contamination is None:
        return None
    signals = {c["name"]: c["id"] for c in channels if c.get("signal")}
    name = cfg.contamination.signal
    if name not in signals:
        msg = (
            f"store.contamination.signal={name!r} is not a signal channel of the staging area; "
            f"signal channels: {', '.join(sorted(signals)) or 'none'}"
        )
        raise ConfigError(msg)
    cid = signals[name]
    n_inject = round(cfg.contamination.fraction * n_train)
    available = sequences[cid].n_events
    if n_inject > available:
        msg = (
            f"store.contamination.fraction={cfg.contamination.fraction:g} asks for {n_inject:,} "
            f"{name} events in train ({n_train:,} background events), but only {available:,} are "
            f"staged; lower the fraction to at most {available / max(n_train, 1):.4g} or stage more signal"
        )
        raise ConfigError(msg)
    return cid, n_inject


def channel_roles(cfg: StoreConfig, channels: list[dict]) -> list[dict]:
    """The channel table with ``store.background`` applied: the named channels are the
    background, every other non-data channel a signal."""
    if cfg.background is None:
        return channels
    names = [c["name"] for c in channels]
    unknown = [b for b in cfg.background if b not in names]
    if unknown:
        msg = (f"store.background names {unknown}, which the staging area does not hold; "
               f"its channels: {', '.join(names)}")
        raise ConfigError(msg)
    return [{**c, "signal": c["name"] not in cfg.background and not c.get("data")} for c in channels]


def make_plan(cfg: StoreConfig, channels: list[dict], pieces: Mapping[str, Sequence[tuple[str, Mapping]]],
              skipped_files: Sequence[str] = ()) -> MixPlan:
    """The plan of a mix.

    Parameters
    ----------
    cfg
        The store settings (chunk length, splits, seed, contamination).
    channels
        The staging area's channel table: ``{"id", "name", "signal", "data"}`` per channel.
    pieces
        Finished pieces per channel name, ``(key, attrs)`` sorted by key (``list_pieces``).
    skipped_files
        Input files the ingest skipped: their pieces are left out.
    """
    channels = channel_roles(cfg, channels)
    skipped = set(skipped_files)
    kept = {
        c["name"]: [(key, attrs) for key, attrs in pieces.get(c["name"], []) if attrs.get("filename") not in skipped]
        for c in channels
    }
    sequences = {c["id"]: ChannelSequence.build(c["name"], c["id"], kept[c["name"]], cfg.seed) for c in channels}
    background = [c for c in channels if not c.get("signal") and not c.get("data")]
    fractions = (cfg.splits.train, cfg.splits.val, cfg.splits.test)
    per_split = {c["id"]: split_counts(sequences[c["id"]].n_events, fractions) for c in background}
    groups = []
    for s, name in enumerate(BACKGROUND_GROUPS):
        ids = [c["id"] for c in background]
        groups.append(GroupPlan(name, "background", ids, [per_split[i][s] for i in ids],
                                [sum(per_split[i][:s]) for i in ids], cfg.chunk_len))
    injected = _contamination(cfg, channels, groups[0].n_events, sequences)
    train = groups[0]
    if injected:
        train = GroupPlan("train", "background", [*train.channel_ids, injected[0]],
                          [*train.counts, injected[1]], [*train.firsts, 0], cfg.chunk_len)
        groups[0] = train
    for c in channels:
        if c.get("signal"):
            first = injected[1] if injected and injected[0] == c["id"] else 0
            groups.append(GroupPlan(f"signal/{c['name']}", "signal", [c["id"]],
                                    [sequences[c["id"]].n_events - first], [first], cfg.chunk_len))
    data = [c["id"] for c in channels if c.get("data")]
    if data:
        groups.append(GroupPlan("data", "data", data, [sequences[i].n_events for i in data],
                                [0] * len(data), cfg.chunk_len))
    contamination = None
    if injected:
        contamination = {"signal": cfg.contamination.signal, "fraction": cfg.contamination.fraction,
                         "channel_id": injected[0], "n_events": injected[1]}
    fingerprint = hashlib.sha256(json.dumps({
        "pieces": {name: [[key, int(attrs["n_rows"])] for key, attrs in ps] for name, ps in kept.items()},
        "channels": channels,
        "store": cfg.model_dump(mode="json", exclude={"url", "staging_url"}),
    }, sort_keys=True).encode()).hexdigest()[:16]
    return MixPlan(groups, sequences, cfg.seed, contamination, fingerprint)
