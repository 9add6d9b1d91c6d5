"""Compiled loops over the offsets of jagged collections, the hot path of the selection.

The functions here are plain Python over numpy buffers; :func:`kernels` compiles them with
numba on first use (numba is imported then, not with this module). A per-event sum is the
difference of a float64 running sum over the whole chunk at the event's first and last
object: the arithmetic of a cumulative sum taken at the offsets, value for value.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

__all__ = ["kernels"]


@functools.cache
def kernels() -> SimpleNamespace:
    """The compiled kernels (compiled once per process, cached on disk by numba)."""
    import numba

    # numba's on-disk cache records the module that compiled a function: compile the installed
    # module's functions so that ``pipeline._select_kernels`` imported from the repository root
    # leaves no cache the installed package cannot load.
    from megaset.pipeline import _select_kernels as mod

    jit = numba.njit(cache=True, nogil=True, error_model="numpy")
    return SimpleNamespace(
        running_sums=jit(mod._running_sums),
        leading_masses=jit(mod._leading_masses),
        kept_objects=jit(mod._kept_objects),
    )


def _running_sums(offsets, values):
    """Sum of ``values`` in each event, as the difference of a running float64 sum.

    Non-finite values count as 0 so that they do not spoil the running sum of later events.
    """
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.float64)
    acc = 0.0
    for i in range(n):
        start = acc
        for j in range(offsets[i], offsets[i + 1]):
            v = np.float64(values[j])
            if np.isfinite(v):
                acc += v
        out[i] = acc - start
    return out


def _leading_masses(po1, i1, pt1, mass1, trig1, po2, i2, pt2, mass2, trig2):
    """Invariant masses of the two and three leading objects by pT of two sources per event.

    For each source: ``po`` offsets per event into its picked objects, ``i`` the picked
    objects' indices into the collection's ``pt`` and ``mass``, ``trig`` one row
    (cos phi, sin phi, sinh eta) per picked object. Within an event the objects are listed
    first source first; equal pT ranks the earlier object first. Events with fewer objects
    get 0.
    """
    n = len(po1) - 1
    width = 0
    for i in range(n):
        width = max(width, po1[i + 1] - po1[i] + po2[i + 1] - po2[i])
    pt = np.empty(width, dtype=np.float64)
    picked = np.empty(width, dtype=np.int64)  # row in trig1 (>= 0) or trig2 (-1 - row)
    masses = np.zeros((2, n), dtype=np.float64)
    acc = np.zeros((2, 4), dtype=np.float64)  # running (E, px, py, pz) of the leading 2, then 3
    start = np.zeros((2, 4), dtype=np.float64)
    p = np.empty(4, dtype=np.float64)
    for i in range(n):
        total = 0
        for j in range(po1[i], po1[i + 1]):
            pt[total] = pt1[i1[j]]
            picked[total] = j
            total += 1
        for j in range(po2[i], po2[i + 1]):
            pt[total] = pt2[i2[j]]
            picked[total] = -1 - j
            total += 1
        for lead in range(2):
            for c in range(4):
                start[lead, c] = acc[lead, c]
        for k in range(total):
            rank = 0
            for q in range(k):
                if not (pt[k] > pt[q]):
                    rank += 1
            for q in range(k + 1, total):
                if pt[q] > pt[k]:
                    rank += 1
            if rank >= 3:
                continue
            j = picked[k]
            if j >= 0:
                m, cos_phi, sin_phi, sinh_eta = np.float64(mass1[i1[j]]), trig1[j, 0], trig1[j, 1], trig1[j, 2]
            else:
                j = -1 - j
                m, cos_phi, sin_phi, sinh_eta = np.float64(mass2[i2[j]]), trig2[j, 0], trig2[j, 1], trig2[j, 2]
            p[1] = pt[k] * cos_phi
            p[2] = pt[k] * sin_phi
            p[3] = pt[k] * sinh_eta
            p[0] = np.sqrt(p[1] * p[1] + p[2] * p[2] + p[3] * p[3] + m * m)
            for c in range(4):
                # non-finite values count as 0 so that they do not spoil later events
                v = p[c] if np.isfinite(p[c]) else 0.0
                if rank < 2:
                    acc[0, c] += v
                acc[1, c] += v
        for lead in range(2):
            if total >= lead + 2:
                # (E, px, py, pz) of this event's leading objects
                e, x = acc[lead, 0] - start[lead, 0], acc[lead, 1] - start[lead, 1]
                y, z = acc[lead, 2] - start[lead, 2], acc[lead, 3] - start[lead, 3]
                m2 = e * e - x * x - y * y - z * z
                # as np.maximum(m2, 0.0): NaN and -0.0 pass through
                masses[lead, i] = np.sqrt(m2 if (m2 >= 0.0 or m2 != m2) else 0.0)
    return masses[0], masses[1]


def _kept_objects(offsets, objects, rows):
    """Indices of the objects under ``objects`` in the events ``rows`` (in that order), and their
    counts per event of ``rows``. Only those events are visited: most of a chunk is rejected."""
    room = 0
    for i in rows:
        room += offsets[i + 1] - offsets[i]
    counts = np.zeros(len(rows), dtype=np.int64)
    index = np.empty(room, dtype=np.int64)
    k = 0
    for e in range(len(rows)):
        i = rows[e]
        first = k
        for j in range(offsets[i], offsets[i + 1]):
            index[k] = j
            k += objects[j]  # no branch: a rejected object is overwritten by the next
        counts[e] = k - first
    return counts, index[:k]
