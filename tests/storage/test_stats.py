from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megaset.storage.stats import combine, finalize, partial_stats


def fold(x: np.ndarray, cuts: list[int]) -> dict[str, np.ndarray]:
    summary = None
    for part in np.split(x, sorted(set(cuts))):
        if len(part):
            summary = combine(summary, partial_stats(part))
    return finalize(summary)


def test_two_values_by_hand():
    out = finalize(combine(partial_stats(np.array([[1.0, 10.0]])), partial_stats(np.array([[3.0, 10.0], [5.0, 40.0]]))))
    assert out["min"].tolist() == [1.0, 10.0]
    assert out["max"].tolist() == [5.0, 40.0]
    assert out["mean"].tolist() == [3.0, 20.0]
    # population std: sqrt(((1-3)^2 + 0 + (5-3)^2) / 3), sqrt((100 + 100 + 400) / 3)
    assert out["std"] == pytest.approx([np.sqrt(8 / 3), np.sqrt(200.0)], rel=1e-15)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), cuts=st.lists(st.integers(0, 300), max_size=8), seed=st.integers(0, 2**32 - 1))
def test_chunked_fold_equals_whole_sample(n, cuts, seed):
    rng = np.random.default_rng(seed)
    x = rng.exponential(30.0, (n, 4)).astype(np.float32)
    x[rng.random((n, 4)) < 0.8] = 0.0
    out = fold(x, [c for c in cuts if c <= n])
    ref = x.astype(np.float64)
    assert out["min"].tolist() == ref.min(axis=0).tolist()
    assert out["max"].tolist() == ref.max(axis=0).tolist()
    np.testing.assert_allclose(out["mean"], ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(out["std"], ref.std(axis=0), rtol=1e-9, atol=1e-12)


def test_columns_zero_in_some_blocks():
    # RMM-like rows over several blocks: a column zero throughout, one zero in the first block
    # alone, one set in a single row of the last block, and negative values.
    rng = np.random.default_rng(5)
    x = np.zeros((3 * 1024 + 17, 6), dtype=np.float32)
    x[1024:, 1] = rng.normal(5.0, 2.0, len(x) - 1024)
    x[-3, 2] = -7.5
    x[:, 3] = rng.normal(-1.0, 0.5, len(x))
    x[rng.random(len(x)) < 0.02, 4] = 0.25
    x[:, 5] = np.where(rng.random(len(x)) < 0.5, 0.0, -rng.exponential(3.0, len(x)))
    out = fold(x, [500, 2100])
    ref = x.astype(np.float64)
    assert out["min"].tolist() == ref.min(axis=0).tolist()
    assert out["max"].tolist() == ref.max(axis=0).tolist()
    np.testing.assert_allclose(out["mean"], ref.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["std"], ref.std(axis=0), rtol=1e-9, atol=1e-12)
    assert out["mean"][0] == out["std"][0] == 0.0


def test_large_offset_stays_accurate():
    # A feature near 1e6 with unit spread: a naive sum of squares in float64 loses the
    # spread to cancellation (1e12 + 1 vs 1e12), the pairwise update does not.
    rng = np.random.default_rng(3)
    x = (1e6 + rng.normal(0, 1, (20_000, 1))).astype(np.float64)
    out = fold(x, list(range(0, 20_000, 1_000)))
    np.testing.assert_allclose(out["std"], x.std(axis=0), rtol=1e-9)
