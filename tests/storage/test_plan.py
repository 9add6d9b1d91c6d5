from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megaset.config import StoreConfig
from megaset.errors import ConfigError
from megaset.storage.plan import make_plan, split_counts
from megaset.storage.quotas import chunk_quotas

CHANNELS = [
    {"id": 0, "name": "a", "signal": False, "data": False},
    {"id": 1, "name": "b", "signal": False, "data": False},
    {"id": 5, "name": "sig", "signal": True, "data": False},
    {"id": 7, "name": "dat", "signal": False, "data": True},
]


def pieces_of(sizes: dict[str, list[int]], block_rows: int = 100) -> dict[str, list]:
    return {
        name: [(f"{name}-{i:03d}", {"n_rows": n, "block_rows": block_rows, "filename": f"{name}{i}.root"})
               for i, n in enumerate(ns)]
        for name, ns in sizes.items()
    }


def test_split_counts_by_hand():
    assert split_counts(10, (0.6, 0.2, 0.2)) == [6, 2, 2]
    # 7 * (0.6, 0.2, 0.2) = 4.2, 1.4, 1.4: floors 4, 1, 1, one left -> first of the tied .4s.
    assert split_counts(7, (0.6, 0.2, 0.2)) == [4, 2, 1]
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]


def test_groups_and_ranges():
    cfg = StoreConfig(chunk_len=50, seed=1)
    plan = make_plan(cfg, CHANNELS, pieces_of({"a": [120, 80], "b": [30], "sig": [40], "dat": [10]}))
    assert [g.name for g in plan.groups] == ["train", "val", "test", "signal/sig", "data"]
    train, val, test = plan.groups[:3]
    assert train.counts == [120, 18] and val.counts == [40, 6] and test.counts == [40, 6]
    # Each split starts where the previous one stopped in the channel's sequence.
    assert val.firsts == [120, 18] and test.firsts == [160, 24]
    assert plan.group("signal/sig").counts == [40]
    assert plan.group("data").channel_ids == [7]


def test_skipped_files_are_left_out():
    cfg = StoreConfig(chunk_len=50)
    plan = make_plan(cfg, CHANNELS, pieces_of({"a": [120, 80], "b": [30]}), skipped_files=["a1.root"])
    assert plan.sequences[0].n_events == 120
    assert make_plan(cfg, CHANNELS, pieces_of({"a": [120, 80], "b": [30]})).fingerprint != plan.fingerprint


def test_contamination_moves_signal_from_its_group_to_train():
    cfg = StoreConfig(chunk_len=50, contamination={"signal": "sig", "fraction": 0.1})
    plan = make_plan(cfg, CHANNELS, pieces_of({"a": [300], "b": [100], "sig": [40]}))
    train = plan.group("train")
    assert train.channel_ids == [0, 1, 5] and train.counts == [180, 60, 24]   # 0.1 * 240
    assert plan.group("signal/sig").counts == [16] and plan.group("signal/sig").firsts == [24]
    assert plan.contamination == {"signal": "sig", "fraction": 0.1, "channel_id": 5, "n_events": 24}


@pytest.mark.parametrize(("contamination", "match"), [
    ({"signal": "a", "fraction": 0.1}, r"store.contamination.signal='a' is not a signal channel.*signal channels: sig"),
    ({"signal": "sig", "fraction": 0.5}, r"asks for 120 sig events in train.*only 40 are staged"),
])
def test_contamination_errors(contamination, match):
    cfg = StoreConfig(chunk_len=50, contamination=contamination)
    with pytest.raises(ConfigError, match=match):
        make_plan(cfg, CHANNELS, pieces_of({"a": [300], "b": [100], "sig": [40]}))


@settings(max_examples=120, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 700), min_size=1, max_size=4), min_size=4, max_size=4),
    chunk_len=st.integers(1, 400),
    block_rows=st.integers(1, 300),
    train=st.floats(0.0, 1.0),
    val_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_every_staged_row_lands_exactly_once(sizes, chunk_len, block_rows, train, val_share, seed):
    val = (1.0 - train) * val_share
    cfg = StoreConfig(chunk_len=chunk_len, seed=seed, splits={"train": train, "val": val, "test": 1.0 - train - val})
    pieces = pieces_of(dict(zip(["a", "b", "sig", "dat"], sizes, strict=True)), block_rows)
    plan = make_plan(cfg, CHANNELS, pieces)
    taken: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for group in plan.groups:
        quotas = chunk_quotas(group.counts, chunk_len)
        assert group.n_chunks == len(quotas)
        for task in plan.tasks(group.name):
            # The chunk's rows per channel are exactly its quota: the mixture invariant.
            got = [sum(seg.hi - seg.lo for seg in segs) for segs in task.segments]
            assert got == quotas[task.index].tolist()
            assert task.size == sum(got) and task.start == task.index * chunk_len
            for segs in task.segments:
                for seg in segs:
                    assert 0 <= seg.lo < seg.hi <= seg.length <= block_rows
                    taken[seg.channel, seg.piece, seg.start, seg.length].append((seg.lo, seg.hi))
    # Every block's permuted positions are covered once: every staged row lands exactly once.
    expected = {
        (name, key, start, min(block_rows, attrs["n_rows"] - start))
        for name, entries in pieces.items() for key, attrs in entries
        for start in range(0, attrs["n_rows"], block_rows)
    }
    assert set(taken) == expected
    for (_, _, _, length), ranges in taken.items():
        covered = np.zeros(length, dtype=int)
        for lo, hi in ranges:
            covered[lo:hi] += 1
        assert (covered == 1).all()
