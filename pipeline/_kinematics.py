"""Vectorised relativistic kinematics for the event simulation.

Four-momenta are numpy arrays of shape ``(n, 4)`` holding ``(E, px, py, pz)`` in GeV; every
function works on a whole batch of events at once. The helpers are generic (no process or
detector knowledge): Breit-Wigner masses, isotropic two-body decays, boosts, falling spectra.

>>> rng = np.random.default_rng(0)
>>> parent = from_pxpy_y_m(np.array([30.0]), np.array([0.0]), np.array([1.2]), np.array([91.2]))
>>> a, b = two_body(rng, parent, np.array([91.2]), 0.0, 0.0)
>>> bool(np.allclose(a + b, parent))
True
>>> bool(np.isclose(mass(a + b)[0], 91.2))
True
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "breit_wigner",
    "breit_wigner_weight",
    "off_shell_pair",
    "two_body",
    "boost",
    "from_pxpy_y_m",
    "from_pt_eta_phi",
    "pt_eta_phi",
    "mass",
    "pareto",
    "categorical",
    "tau_visible_fraction",
]


def breit_wigner(
    rng: np.random.Generator, m0: float, width: float, low, high, size: int | None = None
) -> np.ndarray:
    """Masses from a relativistic Breit-Wigner truncated to ``[low, high]``.

    The density in ``s = m^2`` is ``1 / ((s - m0^2)^2 + m0^2 width^2)``, sampled exactly by
    inverting its arctangent cumulative distribution. ``low`` and ``high`` may be arrays
    (one window per event, e.g. an off-shell W below ``m_top - m_b``).

    Parameters
    ----------
    rng : numpy.random.Generator
    m0, width : float
        Pole mass and width in GeV.
    low, high : float or numpy.ndarray
        Mass window in GeV, ``0 <= low < high``.
    size : int, optional
        Number of masses when ``low`` and ``high`` are scalars.

    Returns
    -------
    numpy.ndarray
        Masses in GeV.
    """
    lo, hi = _atan_bounds(m0, width, low, high)
    shape = np.broadcast(lo, hi).shape or (size,)
    t = lo + (hi - lo) * rng.random(shape)
    return np.sqrt(m0 * m0 + m0 * width * np.tan(t))


def breit_wigner_weight(m0: float, width: float, low, high) -> np.ndarray:
    """Probability content (up to a constant) of the Breit-Wigner of `breit_wigner` in a window."""
    lo, hi = _atan_bounds(m0, width, low, high)
    return hi - lo


def _atan_bounds(m0: float, width: float, low, high) -> tuple[np.ndarray, np.ndarray]:
    mg = m0 * width
    lo = np.arctan((np.square(low) - m0 * m0) / mg)
    hi = np.arctan((np.square(high) - m0 * m0) / mg)
    return lo, hi


def off_shell_pair(
    rng: np.random.Generator, parent_mass: np.ndarray, m0: float, width: float, low: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Masses ``(m1, m2)`` of two identical bosons from a parent below their pair threshold.

    For H -> WW* and H -> ZZ*: the joint density is ``BW(m1) BW(m2) p*(M; m1, m2)`` on
    ``m1 + m2 < M``. The heavier boson is drawn above ``M / 2`` and the lighter one below
    ``M - m1``; accept-reject on the two-body momentum ``p*`` and on the Breit-Wigner content
    of the lighter boson's window restores the joint density (the doubly off-shell corner with
    both masses below ``M / 2`` is left out: it is suppressed by two Breit-Wigner tails).

    Returns
    -------
    tuple of numpy.ndarray
        ``m1 >= m2`` for every event.
    """
    parent_mass = np.asarray(parent_mass, dtype=float)
    m1 = np.empty_like(parent_mass)
    m2 = np.empty_like(parent_mass)
    todo = np.arange(len(parent_mass))
    while todo.size:
        big = parent_mass[todo]
        a = breit_wigner(rng, m0, width, big / 2, big - low)
        b = breit_wigner(rng, m0, width, low, big - a)
        window = breit_wigner_weight(m0, width, low, big - a) / breit_wigner_weight(m0, width, low, big / 2)
        accept = rng.random(todo.size) < _momentum(big, a, b) / (big / 2) * window
        m1[todo[accept]] = a[accept]
        m2[todo[accept]] = b[accept]
        todo = todo[~accept]
    return m1, m2


def _momentum(big: np.ndarray, m1, m2) -> np.ndarray:
    """Momentum of either daughter in the rest frame of a two-body decay."""
    arg = (big * big - np.square(m1 + m2)) * (big * big - np.square(m1 - m2))
    return np.sqrt(np.maximum(arg, 0.0)) / (2 * big)


def two_body(
    rng: np.random.Generator, parent: np.ndarray, parent_mass: np.ndarray, m1, m2
) -> tuple[np.ndarray, np.ndarray]:
    """Decay ``parent`` isotropically in its rest frame into masses ``m1`` and ``m2``; lab frame.

    Parameters
    ----------
    parent : numpy.ndarray
        Lab four-momenta ``(n, 4)``.
    parent_mass : numpy.ndarray
        Their masses (passed rather than recomputed: ``E^2 - p^2`` loses precision at high boost).
    m1, m2 : float or numpy.ndarray
        Daughter masses, at most ``parent_mass`` together.
    """
    n = len(parent)
    p = _momentum(parent_mass, m1, m2)
    cos = rng.uniform(-1.0, 1.0, n)
    sin = np.sqrt(1.0 - cos * cos)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    direction = np.stack([sin * np.cos(phi), sin * np.sin(phi), cos], axis=1) * p[:, None]
    first = np.concatenate([np.sqrt(p * p + np.square(m1))[:, None], direction], axis=1)
    second = np.concatenate([np.sqrt(p * p + np.square(m2))[:, None], -direction], axis=1)
    return boost(first, parent, parent_mass), boost(second, parent, parent_mass)


def boost(rest: np.ndarray, parent: np.ndarray, parent_mass: np.ndarray) -> np.ndarray:
    """Four-momenta given in the rest frame of ``parent`` (mass ``parent_mass``), in the lab.

    Uses ``E = (E_P E* + P.p*) / M`` and ``p = p* + P (P.p* / (M (E_P + M)) + E* / M)``,
    which stays accurate for large boosts.
    """
    energy, p = rest[:, 0], rest[:, 1:]
    parent_energy, parent_p = parent[:, 0], parent[:, 1:]
    dot = np.einsum("ij,ij->i", parent_p, p)
    lab_energy = (parent_energy * energy + dot) / parent_mass
    k = (dot / (parent_energy + parent_mass) + energy) / parent_mass
    return np.concatenate([lab_energy[:, None], p + parent_p * k[:, None]], axis=1)


def from_pxpy_y_m(px: np.ndarray, py: np.ndarray, y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Four-momenta from transverse momentum components, rapidity and mass."""
    mt = np.sqrt(m * m + px * px + py * py)
    return np.stack([mt * np.cosh(y), px, py, mt * np.sinh(y)], axis=-1)


def from_pt_eta_phi(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Massless four-momenta from (pT, pseudorapidity, azimuth); any leading shape."""
    pz = pt * np.sinh(eta)
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pz], axis=-1)


def pt_eta_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transverse momentum, pseudorapidity and azimuth of four-momenta ``(..., 4)``.

    A zero four-momentum (an empty slot) gives ``(0, 0, 0)``.
    """
    px, py, pz = p4[..., 1], p4[..., 2], p4[..., 3]
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(pt > 0, np.arcsinh(pz / pt), 0.0)
    return pt, eta, np.arctan2(py, px)


def mass(p4: np.ndarray) -> np.ndarray:
    """Invariant masses of four-momenta ``(..., 4)``; 0 where rounding makes ``m^2 < 0``."""
    m2 = p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1)
    return np.sqrt(np.maximum(m2, 0.0))


def pareto(rng: np.random.Generator, xmin: float, index: float, xmax: float, size) -> np.ndarray:
    """Values from the power law ``x^-index`` on ``[xmin, xmax]`` (a falling pT spectrum)."""
    k = index - 1.0
    cut = 1.0 - (xmin / xmax) ** k
    return xmin * (1.0 - rng.random(size) * cut) ** (-1.0 / k)


def categorical(rng: np.random.Generator, probabilities, size: int) -> np.ndarray:
    """Indices drawn with the given probabilities (faster than ``Generator.choice`` with ``p``)."""
    cdf = np.cumsum(probabilities, dtype=float)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(size), side="right"), len(cdf) - 1)


# Fraction x of an unpolarised tau's energy carried by the charged lepton of tau -> l nu nu,
# in the collinear limit: f(x) = (5 - 9x^2 + 4x^3) / 3, cumulative F(x) = (5x - 3x^3 + x^4) / 3.
_X_GRID = np.linspace(0.0, 1.0, 2049)
_LEPTONIC_CDF = (5 * _X_GRID - 3 * _X_GRID**3 + _X_GRID**4) / 3


def tau_visible_fraction(rng: np.random.Generator, leptonic: np.ndarray) -> np.ndarray:
    """Visible energy fraction of boosted tau decays: leptonic as above, hadronic flat (tau -> pi nu)."""
    u = rng.random(len(leptonic))
    return np.where(leptonic, np.interp(u, _LEPTONIC_CDF, _X_GRID), u)
