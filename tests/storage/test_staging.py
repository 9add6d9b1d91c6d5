"""Staging pieces on disk: what is written reads back, by rows and columns."""

from __future__ import annotations

import numpy as np
import pytest

from megaset.config import CompressorConfig
from megaset.storage.staging import BLOCK_ROWS, piece_attrs, read_piece, write_piece


def _columns(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    rmm = np.zeros((n, 49), dtype=np.float32)
    rmm[:, :5] = rng.random((n, 5), dtype=np.float32)
    return {
        "rmm": rmm,
        "event_id": rng.integers(0, 1 << 40, size=(n, 4)),
        "weight": rng.normal(size=n).astype(np.float32),
        "met": rng.random(n, dtype=np.float32),
        "channel": np.full(n, 3, dtype=np.int16),
        "n_jet": rng.integers(0, 9, size=n).astype(np.int16),
    }


@pytest.mark.parametrize("codec", ["zstd", "blosc-lz4", "none"])
def test_piece_reads_back_by_rows_across_chunk_boundaries(tmp_path, codec):
    n = 2 * BLOCK_ROWS + 300
    columns = _columns(n)
    url = str(tmp_path / "staging.zarr")
    write_piece(url, "ttbar", "f-0-10", columns, {"filename": "a.root"}, CompressorConfig(codec=codec, level=1))

    assert piece_attrs(url, "ttbar", "f-0-10")["n_rows"] == n
    whole = read_piece(url, "ttbar", "f-0-10")
    assert whole.keys() == columns.keys()
    for name, values in columns.items():
        np.testing.assert_array_equal(whole[name], values, err_msg=name)
    rows = slice(BLOCK_ROWS - 5, 2 * BLOCK_ROWS + 7)
    part = read_piece(url, "ttbar", "f-0-10", ["rmm", "met", "n_jet"], rows)
    for name in ("rmm", "met", "n_jet"):
        np.testing.assert_array_equal(part[name], columns[name][rows], err_msg=name)


def test_empty_piece_is_complete_and_reads_as_no_rows(tmp_path):
    url = str(tmp_path / "staging.zarr")
    empty = {name: values[:0] for name, values in _columns(10).items()}
    write_piece(url, "wjets", "k", empty, {}, CompressorConfig())
    assert piece_attrs(url, "wjets", "k")["complete"] is True
    got = read_piece(url, "wjets", "k")
    assert {name: got[name].shape for name in got} == {name: v.shape for name, v in empty.items()}


def test_small_columns_of_any_dtype_and_byte_order_read_back(tmp_path):
    """The packed bytes keep each column's dtype, shape and values, whatever its byte order."""
    n = BLOCK_ROWS + 7
    rng = np.random.default_rng(3)
    columns = {
        "rmm": np.zeros((n, 20), dtype=np.float32),
        "big_endian": rng.normal(size=n).astype(">f8"),
        "flag": rng.random(n) > 0.5,
        "pair": rng.integers(-5, 5, size=(n, 2)).astype(np.int8),
    }
    url = str(tmp_path / "staging.zarr")
    write_piece(url, "c", "k", columns, {}, CompressorConfig())
    got = read_piece(url, "c", "k", rows=slice(3, n))
    for name, values in columns.items():
        assert got[name].shape == values[3:].shape and got[name].dtype == values.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got[name], values[3:], err_msg=name)


def test_packed_is_not_a_column_name(tmp_path):
    with pytest.raises(ValueError, match="may not be called 'packed'"):
        write_piece(str(tmp_path / "s.zarr"), "c", "k", {"packed": np.zeros(3)}, {}, CompressorConfig())


def _sparse_rmm(n: int, width: int = 49):
    """CSR rows with a varying number of cells (none for some events), unsorted, some explicit zeros."""
    from scipy.sparse import csr_array

    rng = np.random.default_rng(11)
    counts = rng.integers(0, 9, size=n)
    cells = np.concatenate([np.zeros(0, np.int64)] + [rng.choice(width, size=k, replace=False) for k in counts])
    values = rng.normal(size=counts.sum()).astype(np.float32)
    values[::7] = 0.0
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return csr_array((values, cells.astype(np.int32), indptr), shape=(n, width))


@pytest.mark.parametrize("rows", [slice(None), slice(0, BLOCK_ROWS), slice(BLOCK_ROWS - 5, 2 * BLOCK_ROWS + 7),
                                  slice(2 * BLOCK_ROWS + 1, None), slice(3, 3)])
def test_sparse_column_is_stored_sparse_and_reads_back_dense(tmp_path, rows):
    import zarr

    n = 2 * BLOCK_ROWS + 300
    rmm = _sparse_rmm(n)
    columns = {"rmm": rmm, "weight": np.arange(n, dtype=np.float32)}
    url = str(tmp_path / "staging.zarr")
    write_piece(url, "c", "k", columns, {}, CompressorConfig())

    stored = zarr.open_group(f"{url}/c/k", mode="r")
    assert sorted(name for name, _ in stored.arrays()) == ["packed", "rmm"]
    assert stored["rmm"].shape[0] == 3  # one row per block of events
    assert stored["rmm"].nbytes < rmm.nnz * 8  # a dense copy would be 49 * 4 bytes per event
    assert stored.attrs["schema"]["rmm"] == ["float32", [49]]
    got = read_piece(url, "c", "k", rows=rows)
    assert got["rmm"].dtype == np.float32
    np.testing.assert_array_equal(got["rmm"], rmm.toarray()[rows])
    np.testing.assert_array_equal(got["weight"], columns["weight"][rows])


def test_a_sparse_column_in_another_format_is_stored_as_its_rows(tmp_path):
    url = str(tmp_path / "staging.zarr")
    rmm = _sparse_rmm(BLOCK_ROWS + 9)
    columns = {"rmm": rmm.tocsc(), "weight": np.zeros(rmm.shape[0], np.float32)}
    write_piece(url, "c", "k", columns, {}, CompressorConfig())
    np.testing.assert_array_equal(read_piece(url, "c", "k")["rmm"], rmm.toarray())


def test_empty_sparse_column_reads_as_no_rows(tmp_path):
    url = str(tmp_path / "staging.zarr")
    write_piece(url, "c", "k", {"rmm": _sparse_rmm(0), "weight": np.zeros(0, np.float32)}, {}, CompressorConfig())
    assert read_piece(url, "c", "k")["rmm"].shape == (0, 49)


def test_rows_read_backwards_are_refused(tmp_path):
    url = str(tmp_path / "staging.zarr")
    write_piece(url, "c", "k", {"rmm": _sparse_rmm(10), "weight": np.zeros(10, np.float32)}, {}, CompressorConfig())
    with pytest.raises(ValueError, match="step 1"):
        read_piece(url, "c", "k", rows=slice(None, None, -1))
