from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megaset.storage.quotas import chunk_quotas, chunk_sizes


def test_quotas_by_hand():
    # 10 events (6, 3, 1) in chunks of 4: shares per full chunk 2.4, 1.2, 0.4 (floors 2, 1, 0,
    # one seat left); the short last chunk (2 events) has shares 1.2, 0.6, 0.2: floors 1, 0, 0
    # and its one seat goes to the largest remainder, channel 1. Channels 0 and 2 still need
    # one extra seat each: round robin puts channel 0's in chunk 0 and channel 2's in chunk 1.
    assert chunk_quotas([6, 3, 1], 4).tolist() == [[3, 1, 0], [2, 1, 1], [1, 1, 0]]


def test_exact_division_needs_no_rounding():
    q = chunk_quotas([400, 200, 100], 70)
    assert q.tolist() == [[40, 20, 10]] * 10


def test_last_chunk_takes_largest_remainders_ties_to_lower_column():
    # 3 events in chunks of 4: a single short chunk holds everything.
    assert chunk_quotas([1, 1, 1], 4).tolist() == [[1, 1, 1]]
    # 5 events of (2, 2, 1) in chunks of 3: full chunk shares 1.2, 1.2, 0.6 -> floors 1, 1, 0;
    # last chunk (2 events) shares 0.8, 0.8, 0.4: floors 0, remainders tie -> channels 0, 1.
    assert chunk_quotas([2, 2, 1], 3).tolist() == [[1, 1, 1], [1, 1, 0]]


def test_empty_group_and_empty_channels():
    assert chunk_quotas([0, 0], 8).shape == (0, 2)
    q = chunk_quotas([0, 9, 0], 4)
    assert q.tolist() == [[0, 4, 0], [0, 4, 0], [0, 1, 0]]


@pytest.mark.parametrize(("counts", "chunk_len", "match"), [
    ([3, -1], 4, "non-negative"),
    ([[1, 2]], 4, "flat list"),
    ([1, 2], 0, "chunk_len must be positive"),
])
def test_bad_arguments(counts, chunk_len, match):
    with pytest.raises(ValueError, match=match):
        chunk_quotas(counts, chunk_len)


def test_chunk_sizes():
    assert chunk_sizes(10, 5).tolist() == [5, 5]
    assert chunk_sizes(11, 5).tolist() == [5, 5, 1]


@settings(max_examples=400, deadline=None)
@given(
    counts=st.lists(st.integers(0, 5000), min_size=1, max_size=12),
    chunk_len=st.integers(1, 3000),
)
def test_mixture_invariant_property(counts, chunk_len):
    q = chunk_quotas(counts, chunk_len)
    total = sum(counts)
    sizes = chunk_sizes(total, chunk_len)
    assert q.shape == (len(sizes), len(counts))
    # Every event exactly once, every chunk full except the last.
    assert q.sum(axis=0).tolist() == counts
    assert q.sum(axis=1).tolist() == sizes.tolist()
    # Each quota is its exact share rounded down or up (exact integers, no float error).
    for k, s in enumerate(sizes.tolist()):
        for c, n in enumerate(counts):
            low, high = (s * n) // total, -((-s * n) // total)
            assert low <= q[k, c] <= high, (k, c, q[k, c], s * n / total)
