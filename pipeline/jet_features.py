"""Features of boosted jets from their constituents: kinematics, images, constituent lists, N-subjettiness.

Every function takes a chunk of jets as flat constituent arrays (``pt, eta, phi, energy``) and
the ``offsets`` of each jet's constituents (:class:`megaset.pipeline.objects.Jagged`), and
returns one row per jet. Vectorised numpy, except the exclusive-kT clustering, which is a numba
loop per jet (pairwise merging has no vectorised form).

* :func:`jet_kinematics`: pT, eta, phi and mass of the sum of the constituents (E-scheme).
* :func:`jet_images`: Macaluso and Shih's preprocessing as Farina et al. used it: centre on the
  pT centroid (or the leading exclusive-kT subjet), rotate the principal axis of the pT-weighted
  (eta, phi) spread onto the vertical, flip so that the larger pT lies at positive x and y
  (the upper right quadrant), normalise to unit total pT, pixelise into ``pixels`` x ``pixels``
  over ``extent`` in eta and phi, zero-pad to ``padded`` x ``padded``. Returned flattened and
  sparse (about 95 % of the pixels are empty).
* :func:`leading_constituents`: the ``k`` hardest constituents, (pT, delta eta, delta phi, E)
  relative to the jet axis, zero padded: the input of the graph autoencoder.
* :func:`nsubjettiness`: tau_1 .. tau_N with beta = 1 and R0 = 1 on exclusive-kT axes (the
  kT clustering history stopped at N pseudojets, E-scheme, no beam distance: fastjet's
  ``exclusive_jets(N)`` with R = max allowable, as Thaler's ``ExclusiveJetAxes``), normalised
  by the jet's scalar pT sum: tau_N = sum_k pT_k min_a dR(a, k) / sum_k pT_k.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

__all__ = ["jet_kinematics", "jet_images", "leading_constituents", "nsubjettiness", "FEATURE_WIDTH"]

#: Fields of each constituent in :func:`leading_constituents`.
FEATURE_WIDTH = 4


def _segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-jet sums of a flat array (empty jets sum to 0)."""
    out = np.zeros(len(offsets) - 1, dtype=np.float64)
    counts = np.diff(offsets)
    alive = counts > 0
    if values.size:
        out[alive] = np.add.reduceat(values.astype(np.float64, copy=False), offsets[:-1][alive])
    return out


def _wrap(phi: np.ndarray) -> np.ndarray:
    return (phi + np.pi) % (2.0 * np.pi) - np.pi


def jet_kinematics(pt, eta, phi, energy, offsets) -> dict[str, np.ndarray]:
    """``pt, eta, phi, mass`` (float64) of each jet as the four-vector sum of its constituents.

    >>> k = jet_kinematics(np.array([100.0, 100.0]), np.zeros(2), np.array([0.1, -0.1]),
    ...                    np.array([100.0, 100.0]), np.array([0, 2]))
    >>> round(float(k["mass"][0]), 3), round(float(k["pt"][0]), 2)
    (19.967, 199.0)
    """
    pt, eta, phi, energy = (np.asarray(a, dtype=np.float64) for a in (pt, eta, phi, energy))
    px = _segment_sum(pt * np.cos(phi), offsets)
    py = _segment_sum(pt * np.sin(phi), offsets)
    pz = _segment_sum(pt * np.sinh(eta), offsets)
    e = _segment_sum(energy, offsets)
    jpt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        jeta = np.where(jpt > 0, np.arcsinh(pz / np.where(jpt > 0, jpt, 1.0)), 0.0)
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    return {"pt": jpt, "eta": jeta, "phi": np.arctan2(py, px), "mass": mass}


def _relative(eta, phi, offsets, axis_eta, axis_phi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each constituent's (delta eta, delta phi) to its jet's axis, and its jet index."""
    jet = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return eta - axis_eta[jet], _wrap(phi - axis_phi[jet]), jet


def jet_images(pt, eta, phi, offsets, *, pixels: int = 37, padded: int = 40, extent: float = 3.2,
               center: str = "centroid", axes: np.ndarray | None = None) -> Any:
    """Preprocessed jet images, one flattened ``padded**2`` row per jet, as a ``scipy.sparse.csr_array``.

    Parameters
    ----------
    pt, eta, phi, offsets
        The constituents of the jets (flat arrays) and each jet's slice of them.
    pixels, padded, extent
        Image side in pixels, side after zero padding, and the width in eta (and phi) covered.
    center
        ``centroid`` (pT-weighted mean position) or ``leading_subjet``; the latter needs
        ``axes`` [n_jets, 2], the (eta, phi) of each jet's leading subjet.

    Examples
    --------
    Two constituents on a line at 45 degrees end up on the vertical axis, the harder one (at
    0.21 from the centroid) in the centre pixel, the softer one (0.64) below it:

    >>> img = jet_images(np.array([3.0, 1.0]), np.array([0.3, -0.3]), np.array([0.3, -0.3]),
    ...                  np.array([0, 2]), pixels=5, padded=5, extent=2.5).toarray().reshape(5, 5)
    >>> img[:, 2].tolist()
    [0.0, 0.0, 0.75, 0.25, 0.0]
    """
    from scipy.sparse import csr_array

    pt, eta, phi = (np.asarray(a, dtype=np.float64) for a in (pt, eta, phi))
    n = len(offsets) - 1
    total = _segment_sum(pt, offsets)
    safe = np.where(total > 0, total, 1.0)
    if center == "leading_subjet":
        if axes is None:
            msg = "jet_images(center='leading_subjet') needs the subjet axes"
            raise ValueError(msg)
        c_eta, c_phi = axes[:, 0], axes[:, 1]
    else:
        # Centroid in a frame around the hardest constituent, so that phi does not wrap across pi.
        lead = offsets[:-1].clip(max=max(len(pt) - 1, 0))
        ref_eta = eta[lead] if len(pt) else np.zeros(n)
        ref_phi = phi[lead] if len(pt) else np.zeros(n)
        d_eta, d_phi, _ = _relative(eta, phi, offsets, ref_eta, ref_phi)
        c_eta = ref_eta + _segment_sum(pt * d_eta, offsets) / safe
        c_phi = _wrap(ref_phi + _segment_sum(pt * d_phi, offsets) / safe)
    x, y, jet = _relative(eta, phi, offsets, c_eta, c_phi)
    # Principal axis of the pT-weighted spread; rotated onto +y.
    sxx, syy, sxy = (_segment_sum(pt * a * b, offsets) for a, b in ((x, x), (y, y), (x, y)))
    theta = 0.5 * np.arctan2(2.0 * sxy, sxx - syy)
    turn = (np.pi / 2 - theta)[jet]
    c, s = np.cos(turn), np.sin(turn)
    x, y = c * x - s * y, s * x + c * y
    # Flip so that the larger pT sits at x > 0 and y > 0 (the upper right quadrant).
    for coord in (x, y):
        sign = np.where(_segment_sum(pt * np.sign(coord), offsets) < 0, -1.0, 1.0)
        coord *= sign[jet]
    size = extent / pixels
    col = np.floor(x / size + pixels / 2).astype(np.int64)
    row = np.floor(pixels / 2 - y / size).astype(np.int64)  # row 0 is the top (largest y)
    inside = (col >= 0) & (col < pixels) & (row >= 0) & (row < pixels)
    low = (padded - pixels) // 2
    cell = (row + low) * padded + col + low
    flat = jet[inside] * padded * padded + cell[inside]
    values = (pt / safe[jet])[inside]
    image = np.bincount(flat, weights=values, minlength=n * padded * padded)
    dense_rows = image.reshape(n, padded * padded).astype(np.float32)
    return csr_array(dense_rows)


def leading_constituents(pt, eta, phi, energy, offsets, axis_eta, axis_phi, k: int) -> np.ndarray:
    """``[n_jets, k, 4]`` float32: (pT, delta eta, delta phi, E) of the ``k`` hardest constituents,
    zero padded; constituents are sorted by pT here (inputs need not be).

    >>> leading_constituents(np.array([5.0, 9.0]), np.zeros(2), np.array([0.1, 0.2]),
    ...                      np.array([5.0, 9.0]), np.array([0, 2]), np.zeros(1), np.zeros(1), 3)[0, :, 0].tolist()
    [9.0, 5.0, 0.0]
    """
    n = len(offsets) - 1
    d_eta, d_phi, jet = _relative(np.asarray(eta, np.float64), np.asarray(phi, np.float64), offsets,
                                  axis_eta, axis_phi)
    order = np.lexsort((-np.asarray(pt, np.float64), jet))
    rank = np.arange(len(jet)) - np.repeat(offsets[:-1], np.diff(offsets))
    keep = rank < k
    out = np.zeros((n, k, FEATURE_WIDTH), dtype=np.float32)
    src = order[keep]
    out[jet[src], rank[keep]] = np.stack([np.asarray(pt)[src], d_eta[src], d_phi[src], np.asarray(energy)[src]],
                                         axis=1)
    return out


@numba.njit(cache=True)
def _exclusive_kt(px, py, pz, e, n_max, taus, axes_out):
    """Cluster one jet with kT down to 1 pseudojet; at each N <= n_max, tau_N on the current axes."""
    n = len(px)
    jpx, jpy, jpz, je = px.copy(), py.copy(), pz.copy(), e.copy()
    alive = np.ones(n, dtype=np.bool_)
    pt = np.sqrt(px * px + py * py)
    total = pt.sum()
    rap = np.empty(n)
    phi = np.empty(n)
    kt2 = np.empty(n)
    for i in range(n):
        rap[i], phi[i], kt2[i] = _rap_phi(jpx[i], jpy[i], jpz[i], je[i])
    # The constituents' own positions: rap and phi become those of the merged pseudojets.
    c_rap, c_phi = rap.copy(), phi.copy()
    remaining = n
    while True:
        if remaining <= n_max:
            tau = 0.0
            for k in range(n):
                best = 1e300
                for a in range(n):
                    if alive[a]:
                        dphi = abs(c_phi[k] - phi[a])
                        if dphi > math.pi:
                            dphi = 2 * math.pi - dphi
                        d = math.sqrt((c_rap[k] - rap[a]) ** 2 + dphi * dphi)
                        if d < best:
                            best = d
                tau += pt[k] * best
            taus[remaining - 1] = tau / total if total > 0 else 0.0
            if remaining == min(n, 3):
                # The leading subjet of three (of all constituents, for a jet of fewer).
                lead, lead_pt = -1, -1.0
                for a in range(n):
                    if alive[a] and kt2[a] > lead_pt:
                        lead, lead_pt = a, kt2[a]
                axes_out[0], axes_out[1] = rap[lead], phi[lead]
        if remaining == 1:
            break
        best, bi, bj = 1e300, -1, -1
        for i in range(n):
            if not alive[i]:
                continue
            for j in range(i + 1, n):
                if not alive[j]:
                    continue
                dphi = abs(phi[i] - phi[j])
                if dphi > math.pi:
                    dphi = 2 * math.pi - dphi
                d = min(kt2[i], kt2[j]) * ((rap[i] - rap[j]) ** 2 + dphi * dphi)
                if d < best:
                    best, bi, bj = d, i, j
        jpx[bi] += jpx[bj]
        jpy[bi] += jpy[bj]
        jpz[bi] += jpz[bj]
        je[bi] += je[bj]
        alive[bj] = False
        rap[bi], phi[bi], kt2[bi] = _rap_phi(jpx[bi], jpy[bi], jpz[bi], je[bi])
        remaining -= 1
    return taus


@numba.njit(cache=True)
def _rap_phi(px, py, pz, e):
    pt2 = px * px + py * py
    e = max(e, abs(pz) + 1e-12)
    return 0.5 * math.log((e + pz) / (e - pz)), math.atan2(py, px), pt2


@numba.njit(cache=True)
def _all_jets(px, py, pz, e, offsets, n_max, taus, axes):
    for j in range(len(offsets) - 1):
        lo, hi = offsets[j], offsets[j + 1]
        if hi > lo:
            _exclusive_kt(px[lo:hi], py[lo:hi], pz[lo:hi], e[lo:hi], n_max, taus[j], axes[j])


def nsubjettiness(pt, eta, phi, energy, offsets, n_max: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``taus [n_jets, n_max]`` float32 (tau_N in column N - 1; 0 where a jet has at most N
    constituents) and the ``(rapidity, phi)`` of each jet's leading exclusive-kT subjet of three.

    >>> taus, _ = nsubjettiness(np.array([60.0, 40.0]), np.array([0.0, 0.0]), np.array([0.0, 0.5]),
    ...                         np.array([60.0, 40.0]), np.array([0, 2]), n_max=2)
    >>> taus.astype(float).round(3).tolist()
    [[0.24, 0.0]]
    """
    pt, eta, phi, energy = (np.asarray(a, dtype=np.float64) for a in (pt, eta, phi, energy))
    n = len(offsets) - 1
    taus = np.zeros((n, n_max), dtype=np.float64)
    axes = np.zeros((n, 2), dtype=np.float64)
    _all_jets(pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), energy, np.asarray(offsets, np.int64),
              n_max, taus, axes)
    return taus.astype(np.float32), axes
