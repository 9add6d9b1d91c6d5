"""The Rapidity-Mass Matrix (RMM) of each event: the feature vector of the whole analysis.

Row and column 0 belong to the missing transverse energy, every other row / column to one
object slot: the types of ``cfg.objects`` in order, each with ``count`` slots filled by its
objects sorted by pT, descending. With C = ``cfg.C`` and y the rapidity (not pseudorapidity),
the ``chekanov`` convention (S. Chekanov's Map2RMM) fills

==========  ================================================================================
(0, 0)      E_T^miss
(0, k)      m_T of object k with the MET vector (0 when MET is 0)
(k, 0)      h_L = C (cosh y_k - 1)
(k, k)      E_T = sqrt(m^2 + pT^2) for the first object of a type; for the n-th (n >= 2)
            dE_T = (E_T(n-1) - E_T(n)) / (E_T(n-1) + E_T(n))
(i, j)      i < j: invariant mass of objects i and j
(i, j)      i > j: h = C (cosh((y_i - y_j) / 2) - 1)
==========  ================================================================================

and the ``thesis`` convention differs in two cells: (0, k) is the single-object transverse
mass sqrt(E^2 - pz^2) = sqrt(m^2 + pT^2) without MET, and dE_T is computed from pT. Empty
slots leave zeros in their row and column. ``normalize: sqrt_s`` divides the energy and mass
cells ((0, 0), (0, k), the first E_T of a type, the upper triangle) by sqrt(s).

Charge is opt-in, and the convention stays Chekanov's: an object type with ``charge: positive``
(or ``negative``) takes only the objects of that sign of its source (:func:`rmm_inputs`), so that
with e+, e-, mu+, mu- as four types an opposite-sign pair fills the cells between two types and
a same-sign pair the block of one.

The matrix is built by one compiled numba kernel (the hot path of ingest): numba is imported
on the first call, so importing this module for :func:`feature_names` stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from megaset.config import RMMConfig
from megaset.pipeline.objects import Jagged

__all__ = ["feature_names", "rmm_inputs", "build_rmm"]

_KINEMATICS = ("pt", "eta", "phi", "mass")


def feature_names(cfg: RMMConfig) -> list[str]:
    """Names of the ``size * size`` RMM cells, row-major, as stored with the features.

    Objects are named ``<type name>_<rank>`` (rank 0 = leading pT).

    >>> from megaset.config import RMMConfig, RMMObject
    >>> cfg = RMMConfig(objects=[RMMObject(name="jet", source="jets", count=2),
    ...                          RMMObject(name="muo", source="muons", count=1)])
    >>> names = feature_names(cfg)
    >>> names[:4]
    ['e_T_miss', 'm_T_jet_0', 'm_T_jet_1', 'm_T_muo_0']
    >>> names[5:8], names[10], names[14]
    (['e_T_jet_0', 'm_jet_0_jet_1', 'm_jet_0_muo_0'], 'delta_e_T_jet_1', 'h_muo_0_jet_1')
    """
    slots = [(f"{o.name}_{rank}", rank) for o in cfg.objects for rank in range(o.count)]
    names = ["e_T_miss"] + [f"m_T_{name}" for name, _ in slots]
    for row, (name_i, rank_i) in enumerate(slots):
        names.append(f"h_L_{name_i}")
        for col, (name_j, _) in enumerate(slots):
            if col < row:
                names.append(f"h_{name_i}_{name_j}")
            elif col == row:
                names.append(f"e_T_{name_i}" if rank_i == 0 else f"delta_e_T_{name_i}")
            else:
                names.append(f"m_{name_i}_{name_j}")
    return names


def rmm_inputs(objects: Mapping[str, Jagged], cfg: RMMConfig) -> list[Jagged]:
    """The collection of every type of ``cfg.objects``, in order, from the selected objects by
    source: the whole source, or its objects of one charge sign (charge 0 belongs to neither).

    >>> from megaset.config import RMMConfig, RMMObject
    >>> cfg = RMMConfig(objects=[RMMObject(name="lp", source="muons", count=2, charge="positive")])
    >>> muons = Jagged.from_counts(np.array([2]), {"pt": np.array([30.0, 20.0]), "charge": np.array([-1, 1])})
    >>> rmm_inputs({"muons": muons}, cfg)[0]["pt"].tolist()
    [20.0]

    Raises
    ------
    ValueError
        A type asks for a charge sign but its source has no ``charge`` field.
    """
    out = []
    for spec in cfg.objects:
        source = objects[spec.source]
        if spec.charge != "any":
            if "charge" not in source.columns:
                msg = (f"rmm object {spec.name!r} takes the {spec.charge} {spec.source} only, but they have no "
                       f"'charge' field (fields: {sorted(source.columns)}); map it in "
                       "schema.collections.<collection>.fields.charge, or set charge: any")
                raise ValueError(msg)
            charge = source["charge"]
            source = source.select_objects(charge > 0 if spec.charge == "positive" else charge < 0)
        out.append(source)
    return out


def build_rmm(
    objects: Sequence[Jagged],
    met_et: np.ndarray,
    met_phi: np.ndarray,
    cfg: RMMConfig,
    *,
    sparse: bool = False,
):
    """Build the flattened RMM of every event.

    Parameters
    ----------
    objects
        One :class:`~megaset.pipeline.objects.Jagged` per entry of ``cfg.objects``, in the
        same order, with columns ``pt``, ``eta``, ``phi``, ``mass`` (GeV, rad). Objects may be
        in any order within an event: each type is sorted by pT (descending) here and only
        the leading ``count`` are kept.
    met_et, met_phi
        Missing transverse energy (GeV) and its azimuth, one entry per event.
    cfg
        The ``rmm`` section of the configuration.
    sparse
        Return only the cells an event's objects reach, as a ``scipy.sparse.csr_array``: an
        event with n objects in its slots has (n + 1)^2 of them, a few percent of the matrix
        for a 2-lepton event, and a dense row is mostly zeros that cost memory traffic and
        compression to store.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_array
        ``float32`` of shape ``(n_events, cfg.size ** 2)``: each event's matrix, row-major,
        cells named by :func:`feature_names`. Computed in float64. The sparse form may hold
        explicit zeros (m_T with no MET, a pair of massless collinear objects) and its cells
        are in the kernel's order, not sorted.

    Raises
    ------
    ValueError
        If the number of collections differs from ``cfg.objects``, a kinematic column is
        missing, or the event counts disagree.

    Examples
    --------
    >>> from megaset.config import RMMConfig, RMMObject
    >>> cfg = RMMConfig(objects=[RMMObject(name="muo", source="muons", count=2)])
    >>> muons = Jagged.from_counts(np.array([1]), {"pt": np.array([32.0]), "eta": np.array([0.0]),
    ...                                            "phi": np.array([0.0]), "mass": np.array([0.0])})
    >>> build_rmm([muons], np.array([50.0]), np.array([np.pi]), cfg).reshape(3, 3)
    array([[50., 80.,  0.],
           [ 0., 32.,  0.],
           [ 0.,  0.,  0.]], dtype=float32)
    """
    from scipy.sparse import csr_array

    met_et = np.ascontiguousarray(met_et, dtype=np.float64)
    met_phi = np.ascontiguousarray(met_phi, dtype=np.float64)
    offsets, pt, eta, phi, mass = _flatten(objects, len(met_et), len(met_phi), cfg)
    counts = np.array([o.count for o in cfg.objects], dtype=np.int64)
    present = np.minimum(np.diff(offsets, axis=1), counts[:, None]).sum(axis=0)
    indptr = np.zeros(len(met_et) + 1, dtype=np.int64)
    np.cumsum((present + 1) ** 2, out=indptr[1:])
    cells = np.empty(indptr[-1], dtype=np.int32)
    values = np.empty(indptr[-1], dtype=np.float32)
    scale = cfg.sqrt_s_gev if cfg.normalize == "sqrt_s" else 1.0
    _kernel()(
        offsets, pt, eta, phi, mass, met_et, met_phi, counts,
        cfg.convention == "chekanov", float(cfg.C), float(scale), indptr, cells, values,
    )
    rmm = csr_array((values, cells, indptr), shape=(len(met_et), cfg.size * cfg.size))
    return rmm if sparse else rmm.toarray()


def _flatten(
    objects: Sequence[Jagged], n_met: int, n_phi: int, cfg: RMMConfig
) -> tuple[np.ndarray, ...]:
    """All types' kinematics in four flat float64 arrays, plus per-type offsets into them."""
    if len(objects) != len(cfg.objects):
        names = [o.name for o in cfg.objects]
        msg = (
            f"build_rmm got {len(objects)} object collections but rmm.objects lists "
            f"{len(cfg.objects)} types {names}: pass one collection per type, in that order"
        )
        raise ValueError(msg)
    if n_phi != n_met:
        msg = f"met_et has {n_met} events but met_phi has {n_phi}: pass both for the same events"
        raise ValueError(msg)
    offsets = np.empty((len(objects), n_met + 1), dtype=np.int64)
    base = 0
    for t, (jagged, spec) in enumerate(zip(objects, cfg.objects, strict=True)):
        missing = [c for c in _KINEMATICS if c not in jagged.columns]
        if missing:
            msg = (
                f"rmm object {spec.name!r} (source {spec.source!r}) lacks column(s) {missing}; "
                f"it has {sorted(jagged.columns)}. The RMM needs {list(_KINEMATICS)} in GeV"
            )
            raise ValueError(msg)
        if jagged.n_events != n_met:
            msg = (
                f"rmm object {spec.name!r} (source {spec.source!r}) has {jagged.n_events} events "
                f"but met_et has {n_met}: pass the objects and MET of the same selected events"
            )
            raise ValueError(msg)
        offsets[t] = jagged.offsets + base
        base += len(jagged["pt"])
    columns = tuple(
        np.concatenate([np.asarray(j[c], dtype=np.float64) for j in objects]) for c in _KINEMATICS
    )
    return (offsets, *columns)


@functools.cache
def _kernel() -> Callable[..., None]:
    """The compiled kernel (compiled once per process, cached on disk by numba)."""
    import numba

    # numba's on-disk cache records the name of the module that compiled it; this file imported
    # as ``pipeline.rmm`` (repository root on sys.path) would leave a cache that the installed
    # ``megaset.pipeline.rmm`` cannot load, so always compile the installed module's function.
    from megaset.pipeline import rmm

    # fastmath stays off: the cells must be reproducible and exact to float64 rounding.
    return numba.njit(cache=True, nogil=True, error_model="numpy")(rmm._fill)


def _fill(offsets, pt, eta, phi, mass, met_et, met_phi, counts, chekanov,
          C, scale, indptr, cells, values):  # noqa: N803 - C as the RMM papers name it
    """Write the cells of every event's RMM that its present objects reach, as (cell, value)
    pairs from ``indptr[i]`` on: (n + 1)^2 of them for an event with n objects in its slots.

    Per object the kernel keeps E_T = mT = sqrt(m^2 + pT^2), px, py and q = exp(y / 4), with
    exp(y) = (E + pz) / mT. Pair cells then need no transcendental function:
    u = q_i / q_j - q_j / q_i = 2 sinh(dy / 4) gives h = C (cosh(dy / 2) - 1) = C u^2 / 2
    and cosh(dy) - 1 = u^2 (u^2 + 4) / 2, and m^2 = m_i^2 + m_j^2
    + 2 (mT_i mT_j cosh(dy) - px_i px_j - py_i py_j). These forms avoid the cancellation of
    cosh(x) - 1 at small x and of E_i E_j - pz_i pz_j for forward pairs.
    """
    n_types = counts.shape[0]
    n_slots = 0
    for t in range(n_types):
        n_slots += counts[t]
    size = n_slots + 1
    first = np.empty(n_types, dtype=np.int64)
    s = 1
    for t in range(n_types):
        first[t] = s
        s += counts[t]
    # Per event: the kept objects of each type (slot order) and the present slots' kinematics.
    kept = np.empty(n_slots, dtype=np.int64)
    kept_pt = np.empty(n_slots)
    slot = np.empty(n_slots, dtype=np.int64)
    is_first = np.empty(n_slots, dtype=np.bool_)
    e_t = np.empty(n_slots)
    ptv = np.empty(n_slots)
    px = np.empty(n_slots)
    py = np.empty(n_slots)
    m2 = np.empty(n_slots)
    q = np.empty(n_slots)
    q_inv = np.empty(n_slots)
    h_l = np.empty(n_slots)

    for i in range(met_et.shape[0]):
        at = indptr[i]
        met = met_et[i]
        mpx = met * np.cos(met_phi[i])
        mpy = met * np.sin(met_phi[i])
        cells[at] = 0
        values[at] = met / scale
        at += 1

        n = 0
        for t in range(n_types):
            # Bounded insertion sort: the leading `count` objects by pT, ties in input order.
            base = first[t] - 1
            n_kept = 0
            for o in range(offsets[t, i], offsets[t, i + 1]):
                p = pt[o]
                pos = n_kept
                while pos > 0 and kept_pt[base + pos - 1] < p:
                    pos -= 1
                if pos >= counts[t]:
                    continue
                last = n_kept if n_kept < counts[t] else counts[t] - 1
                for r in range(last, pos, -1):
                    kept[base + r] = kept[base + r - 1]
                    kept_pt[base + r] = kept_pt[base + r - 1]
                kept[base + pos] = o
                kept_pt[base + pos] = p
                if n_kept < counts[t]:
                    n_kept += 1
            for r in range(n_kept):
                o = kept[base + r]
                p = pt[o]
                m = mass[o]
                mt = np.sqrt(m * m + p * p)
                pz = p * np.sinh(eta[o])
                energy = np.sqrt(mt * mt + pz * pz)
                slot[n] = first[t] + r
                is_first[n] = r == 0
                e_t[n] = mt
                ptv[n] = p
                px[n] = p * np.cos(phi[o])
                py[n] = p * np.sin(phi[o])
                m2[n] = m * m
                if mt > 0.0:
                    # exp(y) = (E + pz) / mT, taken on the side where E and pz do not cancel.
                    exp_y = (energy + pz) / mt if pz >= 0.0 else mt / (energy - pz)
                    q[n] = np.sqrt(np.sqrt(exp_y))
                    # cosh(y) - 1 = (E - mT) / mT = pz^2 / (mT (E + mT)), exact at small y.
                    h_l[n] = C * pz * pz / (mt * (energy + mt))
                else:
                    q[n] = 1.0
                    h_l[n] = 0.0
                q_inv[n] = 1.0 / q[n]
                n += 1

        for a in range(n):
            k = slot[a]
            cells[at] = k
            if not chekanov:
                values[at] = e_t[a] / scale
            elif met > 0.0:
                # (E_T + MET)^2 - |pT + MET|^2 with |MET vector| = MET, expanded.
                mt2 = m2[a] + 2.0 * (e_t[a] * met - px[a] * mpx - py[a] * mpy)
                values[at] = np.sqrt(mt2) / scale if mt2 > 0.0 else 0.0
            else:
                values[at] = 0.0
            cells[at + 1] = k * size
            values[at + 1] = h_l[a]
            cells[at + 2] = k * size + k
            if is_first[a]:
                values[at + 2] = e_t[a] / scale
            elif chekanov:
                values[at + 2] = (e_t[a - 1] - e_t[a]) / (e_t[a - 1] + e_t[a])
            else:
                values[at + 2] = (ptv[a - 1] - ptv[a]) / (ptv[a - 1] + ptv[a])
            at += 3
            for b in range(a + 1, n):
                j = slot[b]
                u = q[a] * q_inv[b] - q_inv[a] * q[b]
                u2 = u * u
                cosh_dy = 1.0 + 0.5 * u2 * (u2 + 4.0)
                mij2 = m2[a] + m2[b] + 2.0 * (e_t[a] * e_t[b] * cosh_dy - px[a] * px[b] - py[a] * py[b])
                cells[at] = k * size + j
                values[at] = np.sqrt(mij2) / scale if mij2 > 0.0 else 0.0
                cells[at + 1] = j * size + k
                values[at + 1] = 0.5 * C * u2
                at += 2
