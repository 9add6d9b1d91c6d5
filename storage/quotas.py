"""How many events of each channel go into each chunk of a group: the mixture rule.

A group of ``N = sum(counts)`` events is cut into ``ceil(N / chunk_len)`` chunks; every chunk
but the last holds ``chunk_len`` events. Chunk ``k`` of size ``s_k`` should hold channel ``c``
in its global proportion, ``x_kc = s_k * n_c / N`` events. The quota is that share rounded to
a neighbouring integer, ``floor(x_kc)`` or ``ceil(x_kc)`` (exactly ``x_kc`` when it is an
integer), under two exact constraints: the chunk sizes add up (``sum_c q_kc = s_k``) and every
event is used exactly once (``sum_k q_kc = n_c``).

The rule, in integers (no floating point, so writer and verifier agree bit for bit):

1. Every channel first gets ``floor(x_kc)``. A chunk then has ``R_k = s_k - sum_c floor(x_kc)``
   seats left, one each for ``R_k`` of the channels with a fractional share.
2. The last chunk, when it is short, gives its seats by largest remainder (Hamilton's method):
   the ``R`` channels with the largest ``x_kc - floor(x_kc)`` win, ties to the lower column.
3. The full chunks all have the same fractional parts, so plain largest remainder would give
   the same channels a seat in every chunk and the channel totals would drift. Instead, each
   channel needs ``T_c = n_c - sum_k floor(x_kc) - (its seat in the last chunk)`` seats spread
   over the ``M`` full chunks (``T_c <= M``). The seats are dealt round robin: channel 0's
   ``T_0`` seats go to chunks 0, 1, ..., channel 1's continue where channel 0's stopped,
   wrapping around. A run of at most ``M`` consecutive seats never visits a chunk twice, and
   every chunk receives exactly ``R`` seats.

So every chunk differs from the exact proportion by less than one event per channel, and any
subset of chunks is a faithful sample of the group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["chunk_quotas", "chunk_sizes"]


def chunk_sizes(n_events: int, chunk_len: int) -> np.ndarray:
    """Events per chunk: ``chunk_len`` each, the last one short when it does not divide.

    >>> chunk_sizes(10, 4).tolist()
    [4, 4, 2]
    >>> chunk_sizes(0, 4).tolist()
    []
    """
    if chunk_len <= 0:
        msg = f"chunk_len must be positive, got {chunk_len}"
        raise ValueError(msg)
    n_full, rest = divmod(int(n_events), int(chunk_len))
    sizes = np.full(n_full + (rest > 0), chunk_len, dtype=np.int64)
    if rest:
        sizes[-1] = rest
    return sizes


def _largest_remainder(remainders: np.ndarray, seats: int) -> np.ndarray:
    """0/1 per column: the ``seats`` largest remainders win, ties to the lower column."""
    order = np.lexsort((np.arange(len(remainders)), -remainders))
    won = np.zeros(len(remainders), dtype=np.int64)
    won[order[:seats]] = 1
    return won


def chunk_quotas(counts: Sequence[int] | np.ndarray, chunk_len: int) -> np.ndarray:
    """Events of each channel in each chunk, by the rule in the module docstring.

    Parameters
    ----------
    counts
        Events per channel in the whole group (non-negative integers).
    chunk_len
        Events per chunk; only the last chunk may be shorter.

    Returns
    -------
    numpy.ndarray
        ``int64 [n_chunks, n_channels]``: row sums are the chunk sizes, column sums ``counts``.

    Examples
    --------
    >>> chunk_quotas([6, 3, 1], 4).tolist()
    [[3, 1, 0], [2, 1, 1], [1, 1, 0]]
    >>> chunk_quotas([5, 0], 2).sum(axis=0).tolist()
    [5, 0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        msg = f"counts must be a flat list of non-negative integers, got {counts.tolist()}"
        raise ValueError(msg)
    total = int(counts.sum())
    sizes = chunk_sizes(total, chunk_len)
    quotas = np.zeros((len(sizes), len(counts)), dtype=np.int64)
    if total == 0:
        return quotas
    # Integer numerators of the shares: x_kc = s_k * n_c / total.
    full_floor = (chunk_len * counts) // total
    n_full = int((sizes == chunk_len).sum())
    extras = counts - n_full * full_floor
    if n_full < len(sizes):
        last_floor, last_rem = np.divmod(int(sizes[-1]) * counts, total)
        seats = int(sizes[-1] - last_floor.sum())
        quotas[-1] = last_floor + _largest_remainder(last_rem, seats)
        extras -= quotas[-1]
    if n_full:
        quotas[:n_full] = full_floor
        # Seat j of the round robin goes to chunk j mod n_full.
        ends = np.cumsum(extras)
        starts = ends - extras
        for c in np.flatnonzero(extras):
            quotas[np.arange(starts[c], ends[c]) % n_full, c] += 1
    return quotas
