from __future__ import annotations

import numpy as np
import pytest

from megaset.storage.compact import CompactRows
from megaset.storage.store import open_store


def test_compact_rows_keep_every_bit_of_the_rows():
    rows = np.zeros((4, 3, 2), dtype=np.float32)
    rows[0, 1, 0] = 3.5
    rows[1, 0, 1] = -0.0  # zero by value, not by its bits: kept
    rows[2, 2, 1] = np.nan
    rows[3, 0, 0] = np.float32(1e-45)  # the smallest subnormal
    rows[3, 2, 1] = -np.inf
    cells = CompactRows.of(rows)
    assert cells.shape == (4, 6)
    assert cells.positions.dtype == np.int32
    # Independently: the flat positions of the cells set above, row * 6 + (i * 2 + j).
    assert cells.positions.tolist() == [2, 6 + 1, 12 + 5, 18 + 0, 18 + 5]
    assert cells.nbytes == 5 * 4 + 5 * 4
    dense = cells.dense()
    assert dense.dtype == np.float32 and dense.shape == (4, 6)
    assert dense.tobytes() == rows.tobytes()


def test_compact_rows_of_other_dtypes_and_empty_rows():
    rows = np.array([[0.0, 0.25], [0.0, 0.0]], dtype=np.float64)
    cells = CompactRows.of(rows)
    assert cells.values.dtype == np.float64 and cells.values.tolist() == [0.25]
    np.testing.assert_array_equal(cells.dense(), rows)
    empty = CompactRows.of(np.zeros((0, 5), dtype=np.float32))
    assert empty.shape == (0, 5) and empty.dense().shape == (0, 5)


def test_read_chunk_compacts_the_columns_asked_for(mixed_store):
    cfg, _, _ = mixed_store
    group = open_store(cfg.store.url).group("train")
    for i in range(group.n_chunks):
        dense = group.read_chunk(i, ("rmm", "weight"))
        got = group.read_chunk(i, ("rmm", "weight"), compact=("rmm",))
        assert isinstance(got["rmm"], CompactRows)
        assert got["rmm"].dense().tobytes() == dense["rmm"].tobytes()
        assert got["weight"].tobytes() == dense["weight"].tobytes()
        # Fewer bytes than the dense rows: the synthetic RMMs are mostly zeros.
        assert got["rmm"].nbytes < dense["rmm"].nbytes
    with pytest.raises(ValueError, match=r"compact names \['rmm'\], which are not among the columns read \['weight'\]"):
        group.read_chunk(0, ("weight",), compact=("rmm",))
