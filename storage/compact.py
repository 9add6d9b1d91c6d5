"""Rows of a chunk as their non-zero cells: the compact form the loader moves to the device.

An RMM row is about 98 % zeros (a 2-lepton event reaches ~2 % of its 529 cells), so a chunk's
rows as the positions of their non-zero cells (int32, in the chunk's rows flattened row by row)
and those cells' values are about 8 bytes a filled cell instead of 4 bytes a cell: ~0.1 kB an
event instead of ~2.1 kB. :meth:`megaset.storage.store.StoreGroup.read_chunk` returns the
columns named in ``compact`` so: made from the stored cells of a column in the store's CSR
form (:mod:`megaset.storage.csr`), compacted after decoding a dense one.

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
        flat = rows.reshape(-1)
        # Zero by its bits, not by value: -0.0 is kept. (A boolean mask first: numpy finds the
        # non-zero entries of a boolean array several times faster than of an integer one.)
        positions = np.flatnonzero(flat.view(f"u{flat.dtype.itemsize}") != 0)
        return cls.at((rows.shape[0], rows.shape[1]), positions, flat[positions])

    @classmethod
    def at(cls, shape: tuple[int, int], positions: np.ndarray, values: np.ndarray) -> CompactRows:
        """The cells ``values`` at the ascending flat ``positions`` of ``shape[0]`` rows of
        ``shape[1]`` cells (the store's compact form read back)."""
        # With room for one cell more a row: a reader may lay the cells out in wider rows.
        if shape[0] * (shape[1] + 1) >= 2**31:
            msg = (f"a chunk of {shape[0]} rows x {shape[1]} cells has more cells than int32 "
                   "positions reach; mix the store with a smaller store.chunk_len")
            raise ValueError(msg)
        return cls((int(shape[0]), int(shape[1])), positions.astype(np.int32, copy=False), values)

    def rows(self, start: int, stop: int) -> CompactRows:
        """The cells of rows ``start`` to ``stop``, their positions counted from row ``start``.

        >>> CompactRows.of(np.eye(3, dtype=np.float32)).rows(1, 3).dense().tolist()
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        """
        width = self.shape[1]
        lo, hi = np.searchsorted(self.positions, [start * width, stop * width])
        return CompactRows((stop - start, width), self.positions[lo:hi] - np.int32(start * width),
                           self.values[lo:hi])

    @property
    def nbytes(self) -> int:
        """Bytes of the positions and values."""
        return self.positions.nbytes + self.values.nbytes

    def dense(self) -> np.ndarray:
        """The rows, ``shape``, zeros where no cell is given."""
        out = np.zeros(self.shape[0] * self.shape[1], dtype=self.values.dtype)
        out[self.positions] = self.values
        return out.reshape(self.shape)
