"""Rows of a chunk as their non-zero cells: the compact form the loader moves to the device.

An RMM row is about 98 % zeros (a 2-lepton event reaches ~2 % of its 529 cells), so a chunk's
rows as the positions of their non-zero cells (int32, in the chunk's rows flattened row by row)
and those cells' values are about 8 bytes a filled cell instead of 4 bytes a cell: ~0.1 kB an
event instead of ~2.1 kB. The store keeps the dense column, which plain zarr and xarray users
read as it is; :meth:`megaset.storage.store.StoreGroup.read_chunk` compacts the columns named
in ``compact`` after decoding them.

A cell is zero when its bits are: ``-0.0`` is kept as a value, so that
:meth:`CompactRows.dense` gives back the very bits it was made from.

>>> rows = np.array([[0.0, 2.5, 0.0], [0.0, 0.0, -1.0]], dtype=np.float32)
>>> cells = CompactRows.of(rows)
>>> cells.positions.tolist(), cells.values.tolist(), cells.shape
([1, 5], [2.5, -1.0], (2, 3))
>>> np.array_equal(cells.dense(), rows)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CompactRows"]


@dataclass(frozen=True)
class CompactRows:
    """The non-zero cells of ``shape[0]`` rows of ``shape[1]`` cells.

    ``positions`` (int32, ascending) index the rows flattened row by row: cell ``c`` of row
    ``r`` is ``r * shape[1] + c``; ``values`` holds those cells, in the column's dtype.
    """

    shape: tuple[int, int]
    positions: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray) -> CompactRows:
        """The non-zero cells of ``rows`` (events first; the axes after it are flattened)."""
        rows = np.ascontiguousarray(rows).reshape(len(rows), int(np.prod(rows.shape[1:])))
        # With room for one cell more a row: a reader may lay the cells out in wider rows.
        if rows.shape[0] * (rows.shape[1] + 1) >= 2**31:
            msg = (f"a chunk of {rows.shape[0]} rows x {rows.shape[1]} cells has more cells than int32 "
                   "positions reach; mix the store with a smaller store.chunk_len")
            raise ValueError(msg)
        flat = rows.reshape(-1)
        # Zero by its bits, not by value: -0.0 is kept. (A boolean mask first: numpy finds the
        # non-zero entries of a boolean array several times faster than of an integer one.)
        positions = np.flatnonzero(flat.view(f"u{flat.dtype.itemsize}") != 0).astype(np.int32)
        return cls((rows.shape[0], rows.shape[1]), positions, flat[positions])

    @property
    def nbytes(self) -> int:
        """Bytes of the positions and values."""
        return self.positions.nbytes + self.values.nbytes

    def dense(self) -> np.ndarray:
        """The rows, ``shape``, zeros where no cell is given."""
        out = np.zeros(self.shape[0] * self.shape[1], dtype=self.values.dtype)
        out[self.positions] = self.values
        return out.reshape(self.shape)
