"""Staging pieces on disk: what is written reads back, by rows and columns."""

from __future__ import annotations

import numpy as np
import pytest

from megaset.config import CompressorConfig
from megaset.storage.staging import ROWS_PER_CHUNK, piece_attrs, read_piece, write_piece


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
    n = 2 * ROWS_PER_CHUNK + 300
    columns = _columns(n)
    url = str(tmp_path / "staging.zarr")
    write_piece(url, "ttbar", "f-0-10", columns, {"filename": "a.root"}, CompressorConfig(codec=codec, level=1))

    assert piece_attrs(url, "ttbar", "f-0-10")["n_rows"] == n
    whole = read_piece(url, "ttbar", "f-0-10")
    assert whole.keys() == columns.keys()
    for name, values in columns.items():
        np.testing.assert_array_equal(whole[name], values, err_msg=name)
    rows = slice(ROWS_PER_CHUNK - 5, 2 * ROWS_PER_CHUNK + 7)
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
