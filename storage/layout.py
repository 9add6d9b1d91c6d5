"""The feature layout of the store's RMM rows: an n x n matrix flattened row by row.

Row and column 0 hold MET (E_T^miss, the m_T and h_L cells), the upper triangle of the objects
the invariant masses, the lower triangle the rapidity differences and the diagonal the E_T and
delta E_T cells (:mod:`megaset.pipeline.rmm` builds the rows, Chekanov's convention). The
store records the feature names; this module reads their arrangement from their number.
"""

from __future__ import annotations

import math

import numpy as np

from megaset.errors import ConfigError

__all__ = ["BLOCKS", "matrix_side", "block_masks"]

#: The blocks of an RMM, in the order their per-block score columns are written.
BLOCKS = ("met", "mass", "rapidity", "energy")


def matrix_side(n_features: int) -> int | None:
    """``n`` when ``n_features`` flattened features can be an n x n RMM, else ``None``.

    >>> matrix_side(529), matrix_side(530)
    (23, None)
    """
    side = math.isqrt(n_features)
    return side if side * side == n_features else None


def block_masks(n_features: int) -> dict[str, np.ndarray]:
    """Feature indices of each block of the flattened n x n RMM (row-major).

    The blocks partition the matrix: ``met`` is row and column 0 (E_T^miss, the m_T and h_L
    cells), ``mass`` the upper triangle of the objects (invariant masses, i < j), ``rapidity``
    the lower triangle (h cells, i > j) and ``energy`` the diagonal of the objects (E_T and
    delta E_T).

    >>> {name: idx.tolist() for name, idx in block_masks(9).items()}
    {'met': [0, 1, 2, 3, 6], 'mass': [5], 'rapidity': [7], 'energy': [4, 8]}

    Raises
    ------
    ConfigError
        When ``n_features`` is not a square number (not an RMM): set ``scoring.blocks: false``.
    """
    side = matrix_side(n_features)
    if side is None:
        msg = (
            f"per-block errors need the features of an n x n RMM, but the store has {n_features} "
            "features; set scoring.blocks: false"
        )
        raise ConfigError(msg)
    row, col = np.divmod(np.arange(n_features), side)
    kinds = {
        "met": (row == 0) | (col == 0),
        "mass": (row > 0) & (row < col),
        "rapidity": (col > 0) & (row > col),
        "energy": (row > 0) & (row == col),
    }
    return {name: np.flatnonzero(kinds[name]) for name in BLOCKS}
