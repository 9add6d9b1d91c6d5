"""Truth-level simulation of the channels: production, decays and radiation, vectorised.

A process function fills a `TruthEvent` for a batch of events: resonances get relativistic
Breit-Wigner masses, pairs a falling mass above threshold; the hard system recoils against
initial-state radiation jets (geometric multiplicity, power-law pT) and gets a rapidity; decays
are isotropic two-body decays boosted to the lab; taus decay (leptonically or to a tau jet);
jets may yield non-prompt leptons. Objects are stored as compact per-object arrays with their
event row, so no code loops over events. `SAMPLES` lists the channels with their 13 TeV
cross-sections after the generator filter.

>>> ev = generate_truth(np.random.default_rng(1), SAMPLES["zmmjets"], 1000)
>>> sorted(set(np.concatenate([kind for _, _, kind, _, origin in ev.leptons if (origin == PROMPT).all()]).tolist()))
[1]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from megaset.pipeline import _kinematics as kin

__all__ = [
    "TruthEvent", "Sample", "SAMPLES", "ZOO", "HELD_OUT", "generate_truth",
    "E", "MU", "TAU", "LIGHT", "CHARM", "BOTTOM", "TAU_JET", "PROMPT", "FROM_TAU", "NONPROMPT",
]

# ---------------------------------------------------------------------------- physics constants
# PDG masses and widths, GeV.
_MZ, _GZ = 91.1876, 2.4955
_MW, _GW = 80.3692, 2.085
_MT, _GT = 172.57, 1.42
_MH, _GH = 125.20, 0.0037
_M_TAU, _M_B = 1.77693, 4.18
_SQRT_S = 13000.0

# Charged-lepton kinds of the hard process; the index of a leptonic W or Z mode is its kind.
E, MU, TAU = 0, 1, 2
_W_BR = np.array([0.1071, 0.1063, 0.1138, 0.6741])  # e nu, mu nu, tau nu, q q'
_W_HADRONIC = 3
_Z_BR = np.array([0.033632, 0.033662, 0.033696, 0.2000, 0.6991])  # ee, mumu, tautau, nunu, q q
_Z_NEUTRINOS, _Z_HADRONIC = 3, 4
_TAU_BR = np.array([0.1782, 0.1739, 0.6479])  # e nu nu, mu nu nu, hadrons nu
_BOSON_LEPTONS = {"W": (_W_BR, np.array([1, 1, 1, 0])), "Z": (_Z_BR, np.array([2, 2, 2, 0, 0]))}

# Jet truth flavours (PDG-like codes); how often a jet of each flavour yields a non-prompt lepton.
LIGHT, CHARM, BOTTOM, TAU_JET = 0, 4, 5, 15
_Z_QUARKS, _Z_QUARK_BR = np.array([BOTTOM, CHARM, LIGHT]), np.array([0.216, 0.172, 0.612])
_ISR_FLAVOURS, _ISR_FLAVOUR_BR = np.array([LIGHT, CHARM, BOTTOM]), np.array([0.93, 0.05, 0.02])
_NONPROMPT_RATE = np.zeros(16)
# Semileptonic heavy-flavour decays, and pion/kaon decays in flight or mis-identification.
_NONPROMPT_RATE[[LIGHT, CHARM, BOTTOM]] = 0.02, 0.12, 0.20

# Origin of a charged lepton.
PROMPT, FROM_TAU, NONPROMPT = 0, 1, 2

# Initial-state radiation: geometric (Berends-like) multiplicity of emissions above 15 GeV.
_ISR_PT_MIN, _ISR_PT_MAX, _ISR_ETA_SIGMA, _MAX_ISR = 15.0, 3000.0, 2.2, 10
_SOFT_KICK = 4.0  # GeV per component: unresolved radiation and intrinsic kT


# ---------------------------------------------------------------------------- truth-level event


class TruthEvent:
    """Truth objects of a batch of ``n`` events, as compact per-object arrays with their event row."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.rng, self.n = rng, n
        self.leptons: list[tuple[np.ndarray, ...]] = []  # (row, p4, kind, charge, origin)
        self.jets: list[tuple[np.ndarray, ...]] = []  # (row, p4, flavour)
        self.invisible = np.zeros((n, 2))

    def escape(self, p4: np.ndarray, mask: np.ndarray) -> None:
        """Neutrinos or neutralinos: only their transverse momentum is kept (for MET)."""
        self.invisible[mask] += p4[mask, 1:3]

    def jet(self, p4: np.ndarray, flavour, mask: np.ndarray) -> None:
        """A quark or gluon jet; part of it may turn into a non-prompt lepton."""
        rows = np.flatnonzero(mask)
        p4, flavour = p4[rows], np.broadcast_to(flavour, (self.n,))[rows]
        fake = self.rng.random(rows.size) < _NONPROMPT_RATE[flavour]
        k = int(fake.sum())
        z = self.rng.beta(2.0, 4.0, k)
        lepton = p4[fake] * z[:, None]
        kind = self.rng.integers(E, MU + 1, k)
        charge = self.rng.choice(np.array([-1, 1]), k)
        self.leptons.append((rows[fake], lepton, kind, charge, np.full(k, NONPROMPT)))
        p4[fake] -= lepton
        self.jets.append((rows, p4, flavour))

    def charged(self, p4: np.ndarray, kind, charge, mask: np.ndarray) -> None:
        """A charged lepton of the hard process (kind e, mu or tau); taus are decayed here."""
        kind = np.broadcast_to(kind, (self.n,))
        charge = np.broadcast_to(charge, (self.n,))
        rows = np.flatnonzero(mask & (kind != TAU))
        self.leptons.append((rows, p4[rows], kind[rows], charge[rows], np.full(rows.size, PROMPT)))
        tau = mask & (kind == TAU)
        if not tau.any():
            return
        mode = kin.categorical(self.rng, _TAU_BR, self.n)
        leptonic = mode != 2
        # Boosted taus decay collinearly: the visible products keep the tau direction.
        visible = p4 * kin.tau_visible_fraction(self.rng, leptonic)[:, None]
        self.escape(p4 - visible, tau)
        rows = np.flatnonzero(tau & leptonic)
        self.leptons.append((rows, visible[rows], mode[rows], charge[rows], np.full(rows.size, FROM_TAU)))
        self.jet(visible, TAU_JET, tau & ~leptonic)

    def absorb(self, other: TruthEvent, rows: np.ndarray) -> None:
        """Take over the objects of a sub-batch whose event ``i`` is this batch's ``rows[i]``."""
        self.leptons += [(rows[r], *rest) for r, *rest in other.leptons]
        self.jets += [(rows[r], *rest) for r, *rest in other.jets]
        self.invisible[rows] += other.invisible


# ---------------------------------------------------------------------------- production & decays


@dataclass(frozen=True)
class _Modes:
    """Joint decay modes of several bosons that pass a charged-lepton (e, mu, tau) filter."""

    modes: np.ndarray  # (combinations, bosons)
    probabilities: np.ndarray
    efficiency: float  # branching fraction of the filter

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.modes[kin.categorical(rng, self.probabilities, n)]


def _filtered(*bosons: str, min_leptons: int) -> _Modes:
    grids = np.meshgrid(*[np.arange(len(_BOSON_LEPTONS[b][0])) for b in bosons], indexing="ij")
    modes = np.stack([g.ravel() for g in grids], axis=1)
    prob = np.prod([_BOSON_LEPTONS[b][0][modes[:, i]] for i, b in enumerate(bosons)], axis=0)
    leptons = np.sum([_BOSON_LEPTONS[b][1][modes[:, i]] for i, b in enumerate(bosons)], axis=0)
    keep = leptons >= min_leptons
    efficiency = float(prob[keep].sum())
    return _Modes(modes[keep], prob[keep] / efficiency, efficiency)


_ONE_LEPTON_WW = _filtered("W", "W", min_leptons=1)
_ONE_LEPTON_ZZ = _filtered("Z", "Z", min_leptons=1)
_TWO_LEPTON_WW = _filtered("W", "W", min_leptons=2)
_TWO_LEPTON_WZ = _filtered("W", "Z", min_leptons=2)
_TWO_LEPTON_ZZ = _filtered("Z", "Z", min_leptons=2)
_TWO_LEPTON_WWWW = _filtered("W", "W", "W", "W", min_leptons=2)


def _recoil(ev: TruthEvent, isr_mean: float, isr_index: float) -> tuple[np.ndarray, np.ndarray]:
    """Add initial-state radiation jets; return the transverse momentum the hard system recoils with."""
    rng, n = ev.rng, ev.n
    count = np.minimum(rng.geometric(1.0 / (1.0 + isr_mean), n) - 1, _MAX_ISR)
    px, py = rng.normal(0.0, _SOFT_KICK, (2, n))
    for k in range(int(count.max(initial=0))):
        pt = kin.pareto(rng, _ISR_PT_MIN, isr_index, _ISR_PT_MAX, n)
        p4 = kin.from_pt_eta_phi(pt, rng.normal(0.0, _ISR_ETA_SIGMA, n), rng.uniform(0, 2 * np.pi, n))
        emitted = count > k
        ev.jet(p4, _ISR_FLAVOURS[kin.categorical(rng, _ISR_FLAVOUR_BR, n)], emitted)
        px -= np.where(emitted, p4[:, 1], 0.0)
        py -= np.where(emitted, p4[:, 2], 0.0)
    return px, py


def _produce(
    ev: TruthEvent, masses: list[np.ndarray], *, y_sigma: float, isr_mean: float, isr_index: float,
    excess: tuple[float, float] = (1.5, 80.0), forward: float = 0.0,
) -> list[np.ndarray]:
    """Lab four-momenta of a produced resonance, or of a pair with a falling mass above threshold.

    ``excess`` is the (shape, scale) of the Gamma-distributed pair mass above threshold; the pair
    decays isotropically in its rest frame. The system recoils against the radiation jets and gets
    a Gaussian rapidity, clipped to the kinematic limit; with ``forward > 0`` the rapidity is
    ``±(forward + |N(0, y_sigma)|)`` instead (an asymmetric initial state: a valence quark
    against a sea antiquark).
    """
    rng, n = ev.rng, ev.n
    px, py = _recoil(ev, isr_mean, isr_index)
    m = masses[0] if len(masses) == 1 else masses[0] + masses[1] + rng.gamma(*excess, n)
    mt = np.sqrt(m * m + px * px + py * py)
    y_max = np.arccosh(np.maximum(_SQRT_S / (2 * mt), 1.0))
    y = rng.normal(0.0, y_sigma, n)
    if forward > 0:
        y = np.where(rng.random(n) < 0.5, 1.0, -1.0) * (forward + np.abs(y))
    system = kin.from_pxpy_y_m(px, py, np.clip(y, -y_max, y_max), m)
    if len(masses) == 1:
        return [system]
    return list(kin.two_body(rng, system, m, masses[0], masses[1]))


def _decay_w(ev: TruthEvent, w: np.ndarray, m: np.ndarray, charge, mode: np.ndarray) -> None:
    leptonic = mode != _W_HADRONIC
    a, b = kin.two_body(ev.rng, w, m, np.where(mode == TAU, _M_TAU, 0.0), 0.0)
    ev.charged(a, mode, charge, leptonic)
    ev.escape(b, leptonic)
    # W -> c s in about half of the hadronic decays (|V_cs| ~ |V_ud|).
    ev.jet(a, np.where(ev.rng.random(ev.n) < 0.5, CHARM, LIGHT), ~leptonic)
    ev.jet(b, LIGHT, ~leptonic)


def _decay_z(ev: TruthEvent, z: np.ndarray, m: np.ndarray, mode: np.ndarray) -> None:
    m_lepton = np.where(mode == TAU, _M_TAU, 0.0)
    a, b = kin.two_body(ev.rng, z, m, m_lepton, m_lepton)
    charged = mode < _Z_NEUTRINOS
    ev.charged(a, mode, -1, charged)
    ev.charged(b, mode, 1, charged)
    ev.escape(z, mode == _Z_NEUTRINOS)
    quarks = _Z_QUARKS[kin.categorical(ev.rng, _Z_QUARK_BR, ev.n)]
    ev.jet(a, quarks, mode == _Z_HADRONIC)
    ev.jet(b, quarks, mode == _Z_HADRONIC)


def _decay_top(ev: TruthEvent, top: np.ndarray, m: np.ndarray, charge, w_mode: np.ndarray) -> None:
    m_w = kin.breit_wigner(ev.rng, _MW, _GW, 10.0, m - _M_B - 0.5)
    w, b = kin.two_body(ev.rng, top, m, m_w, _M_B)
    ev.jet(b, BOTTOM, np.ones(ev.n, bool))
    _decay_w(ev, w, m_w, charge, w_mode)


def _bw(ev: TruthEvent, m0: float, width: float, low: float, high: float) -> np.ndarray:
    return kin.breit_wigner(ev.rng, m0, width, low, high, ev.n)


def _sign(ev: TruthEvent, plus_fraction: float) -> np.ndarray:
    return np.where(ev.rng.random(ev.n) < plus_fraction, 1, -1)


def _z_jets(ev: TruthEvent, kind: int) -> None:
    m = _bw(ev, _MZ, _GZ, 40.0, 250.0)
    (z,) = _produce(ev, [m], y_sigma=2.0, isr_mean=0.7, isr_index=3.0)
    _decay_z(ev, z, m, np.full(ev.n, kind))


def _w_jets(ev: TruthEvent) -> None:
    m = _bw(ev, _MW, _GW, 40.0, 250.0)
    (w,) = _produce(ev, [m], y_sigma=2.0, isr_mean=0.8, isr_index=3.0)
    # W+ / W- = 11.6 nb / 8.6 nb at 13 TeV; the sample is W -> l nu with l = e, mu, tau.
    _decay_w(ev, w, m, _sign(ev, 0.574), kin.categorical(ev.rng, _W_BR[:3], ev.n))


def _ttbar(ev: TruthEvent) -> None:
    m1, m2 = _bw(ev, _MT, _GT, 150.0, 195.0), _bw(ev, _MT, _GT, 150.0, 195.0)
    t, tbar = _produce(ev, [m1, m2], y_sigma=1.1, isr_mean=1.2, isr_index=2.7, excess=(1.6, 90.0))
    modes = _ONE_LEPTON_WW.sample(ev.rng, ev.n)
    _decay_top(ev, t, m1, 1, modes[:, 0])
    _decay_top(ev, tbar, m2, -1, modes[:, 1])


def _single_top(ev: TruthEvent) -> None:
    m_t, m_w = _bw(ev, _MT, _GT, 150.0, 195.0), _bw(ev, _MW, _GW, 40.0, 250.0)
    top, w = _produce(ev, [m_t, m_w], y_sigma=1.3, isr_mean=1.0, isr_index=2.8, excess=(1.5, 80.0))
    charge = _sign(ev, 0.5)  # t W- and tbar W+ in equal parts
    modes = _ONE_LEPTON_WW.sample(ev.rng, ev.n)
    _decay_top(ev, top, m_t, charge, modes[:, 0])
    _decay_w(ev, w, m_w, -charge, modes[:, 1])


def _diboson(ev: TruthEvent, pair: str) -> None:
    masses = [_bw(ev, *((_MW, _GW) if b == "W" else (_MZ, _GZ)), 40.0, 250.0) for b in pair]
    a, b = _produce(ev, masses, y_sigma=1.6, isr_mean=0.9, isr_index=2.9, excess=(1.5, 80.0))
    if pair == "WW":
        modes = _TWO_LEPTON_WW.sample(ev.rng, ev.n)
        _decay_w(ev, a, masses[0], 1, modes[:, 0])
        _decay_w(ev, b, masses[1], -1, modes[:, 1])
    elif pair == "WZ":
        modes = _TWO_LEPTON_WZ.sample(ev.rng, ev.n)
        _decay_w(ev, a, masses[0], _sign(ev, 0.61), modes[:, 0])  # W+Z / W-Z ~ 1.6
        _decay_z(ev, b, masses[1], modes[:, 1])
    else:
        modes = _TWO_LEPTON_ZZ.sample(ev.rng, ev.n)
        _decay_z(ev, a, masses[0], modes[:, 0])
        _decay_z(ev, b, masses[1], modes[:, 1])


def _higgs(ev: TruthEvent, decay: str) -> None:
    """Gluon-fusion Higgs to WW*, ZZ* (one boson off shell) or tau tau."""
    m = _bw(ev, _MH, _GH, _MH - 0.1, _MH + 0.1)
    (h,) = _produce(ev, [m], y_sigma=1.8, isr_mean=1.0, isr_index=2.8)
    if decay == "tautau":
        _decay_z(ev, h, m, np.full(ev.n, TAU))
        return
    m0, width, table = (_MW, _GW, _ONE_LEPTON_WW) if decay == "WW" else (_MZ, _GZ, _ONE_LEPTON_ZZ)
    m1, m2 = kin.off_shell_pair(ev.rng, m, m0, width, low=4.0)
    a, b = kin.two_body(ev.rng, h, m, m1, m2)
    modes = table.sample(ev.rng, ev.n)
    if decay == "WW":
        charge = _sign(ev, 0.5)  # which of W+ and W- is the off-shell one
        _decay_w(ev, a, m1, charge, modes[:, 0])
        _decay_w(ev, b, m2, -charge, modes[:, 1])
    else:
        _decay_z(ev, a, m1, modes[:, 0])
        _decay_z(ev, b, m2, modes[:, 1])


def _c1n2(ev: TruthEvent, heavy: float, lsp: float) -> None:
    """Chargino-neutralino pair: chi1+- -> W chi1^0, chi2^0 -> Z chi1^0, wino-like, degenerate."""
    mass = np.full(ev.n, heavy)
    c1, n2 = _produce(ev, [mass, mass], y_sigma=1.0, isr_mean=1.0, isr_index=2.6, excess=(1.5, 0.2 * heavy))
    modes = _TWO_LEPTON_WZ.sample(ev.rng, ev.n)
    for boson, parent, (m0, width) in (("W", c1, (_MW, _GW)), ("Z", n2, (_MZ, _GZ))):
        m = _bw(ev, m0, width, 10.0, heavy - lsp - 0.5)
        v, neutralino = kin.two_body(ev.rng, parent, mass, m, lsp)
        ev.escape(neutralino, np.ones(ev.n, bool))
        if boson == "W":
            _decay_w(ev, v, m, _sign(ev, 0.68), modes[:, 0])  # chi1+ chi2^0 / chi1- chi2^0 ~ 2
        else:
            _decay_z(ev, v, m, modes[:, 1])


# ---------------------------------------------------------------------------- the signal zoo


def _light_lepton(ev: TruthEvent) -> np.ndarray:
    """e or mu in equal parts (a flavour-universal signal)."""
    return ev.rng.integers(E, MU + 1, ev.n)


def _compressed_sleptons(ev: TruthEvent, slepton: float, lsp: float) -> None:
    """Selectron or smuon pairs ~l+ ~l- -> l+ chi1^0 l- chi1^0 with a small mass splitting: two
    soft opposite-sign same-flavour leptons; the pair recoils against hard initial-state
    radiation, which turns the neutralinos into modest MET (the monojet-like topology of
    compressed searches)."""
    mass = np.full(ev.n, slepton)
    a, b = _produce(ev, [mass, mass], y_sigma=1.0, isr_mean=2.0, isr_index=2.2, excess=(1.5, 0.2 * slepton))
    kind = _light_lepton(ev)
    for parent, charge in ((a, 1), (b, -1)):
        lepton, neutralino = kin.two_body(ev.rng, parent, mass, 0.0, lsp)
        ev.charged(lepton, kind, charge, np.ones(ev.n, bool))
        ev.escape(neutralino, np.ones(ev.n, bool))


def _vbf_doubly_charged(ev: TruthEvent, mass: float, width: float) -> None:
    """A doubly charged scalar (Georgi-Machacek H5++) from W+-W+- fusion, H++ -> W+ W+ -> l+ nu l+ nu
    (H-- alike): two same-sign leptons, MET and two forward tagging jets in opposite hemispheres
    that the scalar recoils against."""
    rng, n = ev.rng, ev.n
    side = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    px, py = rng.normal(0.0, _SOFT_KICK, (2, n))
    for sign in (1.0, -1.0):
        tag = kin.from_pt_eta_phi(kin.pareto(rng, 25.0, 2.6, 800.0, n), sign * side * rng.normal(3.0, 0.8, n),
                                  rng.uniform(0, 2 * np.pi, n))
        ev.jet(tag, LIGHT, np.ones(n, bool))
        px -= tag[:, 1]
        py -= tag[:, 2]
    m = _bw(ev, mass, width, mass - 10 * width, mass + 10 * width)
    h = kin.from_pxpy_y_m(px, py, rng.normal(0.0, 1.0, n), m)
    m1, m2 = (_bw(ev, _MW, _GW, 40.0, 250.0) for _ in range(2))
    w1, w2 = kin.two_body(rng, h, m, m1, m2)
    charge = _sign(ev, 0.66)  # W+W+ fusion outweighs W-W- at the LHC (u-quark valence)
    for w, m_w in ((w1, m1), (w2, m2)):
        _decay_w(ev, w, m_w, charge, kin.categorical(rng, _W_BR[:3], n))


def _heavy_higgs_llvv(ev: TruthEvent, mass: float, width: float) -> None:
    """A heavy scalar from gluon fusion, H -> ZZ -> l+ l- nu nu: a Z peak in m_ll, large MET."""
    m = _bw(ev, mass, width, mass - 8 * width, mass + 8 * width)
    (h,) = _produce(ev, [m], y_sigma=1.6, isr_mean=1.0, isr_index=2.7)
    m1, m2 = (_bw(ev, _MZ, _GZ, 60.0, 120.0) for _ in range(2))
    a, b = kin.two_body(ev.rng, h, m, m1, m2)
    _decay_z(ev, a, m1, _light_lepton(ev))
    _decay_z(ev, b, m2, np.full(ev.n, _Z_NEUTRINOS))


def _forward_resonance(ev: TruthEvent, mass: float, width: float) -> None:
    """A narrow dilepton resonance produced at large rapidity (|y| > 2): leptons near the edge
    of the tracker."""
    m = _bw(ev, mass, width, mass - 10 * width, mass + 10 * width)
    (z,) = _produce(ev, [m], y_sigma=0.4, isr_mean=0.7, isr_index=3.0, forward=2.0)
    _decay_z(ev, z, m, _light_lepton(ev))


def _four_tops(ev: TruthEvent) -> None:
    """t tbar t tbar as two t tbar systems, at least two leptonic Ws: many jets, four b-jets,
    same-sign leptons in part."""
    # Tops within +-5 widths, systems above their sum: every decay is open.
    tops = [[_bw(ev, _MT, _GT, 165.0, 180.0) for _ in range(2)] for _ in range(2)]
    masses = [a + b + ev.rng.gamma(1.5, 120.0, ev.n) for a, b in tops]
    systems = _produce(ev, masses, y_sigma=0.9, isr_mean=1.5, isr_index=2.5, excess=(1.5, 150.0))
    modes = _TWO_LEPTON_WWWW.sample(ev.rng, ev.n)
    for k, (system, m, (m1, m2)) in enumerate(zip(systems, masses, tops, strict=True)):
        t, tbar = kin.two_body(ev.rng, system, m, m1, m2)
        _decay_top(ev, t, m1, 1, modes[:, 2 * k])
        _decay_top(ev, tbar, m2, -1, modes[:, 2 * k + 1])


def _chargino_pair(ev: TruthEvent, heavy: float, lsp: float) -> None:
    """Wino-like chargino pairs chi1+ chi1- -> W+ chi1^0 W- chi1^0, both Ws leptonic in part:
    opposite-sign leptons of any flavours, MET from the neutralinos and the neutrinos."""
    mass = np.full(ev.n, heavy)
    pair = _produce(ev, [mass, mass], y_sigma=1.0, isr_mean=1.0, isr_index=2.6, excess=(1.5, 0.2 * heavy))
    modes = _TWO_LEPTON_WW.sample(ev.rng, ev.n)
    for k, (parent, charge) in enumerate(zip(pair, (1, -1), strict=True)):
        m = _bw(ev, _MW, _GW, 10.0, heavy - lsp - 0.5)
        w, neutralino = kin.two_body(ev.rng, parent, mass, m, lsp)
        ev.escape(neutralino, np.ones(ev.n, bool))
        _decay_w(ev, w, m, charge, modes[:, k])


def _wprime_wz(ev: TruthEvent, mass: float, width: float) -> None:
    """A heavy charged vector (W', HVT-like) from q q' annihilation, W' -> W Z, at least two
    leptons: a Z peak in m_ll with a third lepton and MET in part, all at high pT."""
    m = _bw(ev, mass, width, mass - 10 * width, mass + 10 * width)
    (wp,) = _produce(ev, [m], y_sigma=1.2, isr_mean=0.8, isr_index=2.8)
    m_w, m_z = _bw(ev, _MW, _GW, 40.0, 250.0), _bw(ev, _MZ, _GZ, 40.0, 250.0)
    w, z = kin.two_body(ev.rng, wp, m, m_w, m_z)
    modes = _TWO_LEPTON_WZ.sample(ev.rng, ev.n)
    _decay_w(ev, w, m_w, _sign(ev, 0.7), modes[:, 0])  # W'+ / W'- ~ 2 (u d-bar against d u-bar)
    _decay_z(ev, z, m_z, modes[:, 1])


def _higgsino_n2c1(ev: TruthEvent, heavy: float, lsp: float) -> None:
    """Higgsino-like chi2^0 chi1+- with a small splitting, against hard initial-state radiation:
    chi2^0 -> Z* chi1^0 -> l+ l- chi1^0 gives a soft same-flavour pair with m_ll below the
    splitting; the chargino's decay products are too soft to be seen and count as MET."""
    mass = np.full(ev.n, heavy)
    n2, c1 = _produce(ev, [mass, mass], y_sigma=1.0, isr_mean=2.0, isr_index=2.2, excess=(1.5, 0.2 * heavy))
    ev.escape(c1, np.ones(ev.n, bool))
    # m(Z*) of the three-body decay: below the splitting, falling to zero at both ends.
    m = (heavy - lsp - 0.5) * ev.rng.beta(2.0, 1.5, ev.n) + 0.2
    z, neutralino = kin.two_body(ev.rng, n2, mass, m, lsp)
    ev.escape(neutralino, np.ones(ev.n, bool))
    _decay_z(ev, z, m, _light_lepton(ev))


def _same_sign_tops(ev: TruthEvent) -> None:
    """Same-sign top pairs t t (t-bar t-bar alike) from a flavour-violating heavy vector in the
    t channel, both Ws leptonic in part: two same-sign leptons, two b-jets, MET, hard tops."""
    m1, m2 = _bw(ev, _MT, _GT, 150.0, 195.0), _bw(ev, _MT, _GT, 150.0, 195.0)
    a, b = _produce(ev, [m1, m2], y_sigma=1.0, isr_mean=1.0, isr_index=2.7, excess=(1.5, 250.0))
    charge = _sign(ev, 0.85)  # u u -> t t outweighs u-bar u-bar -> t-bar t-bar
    modes = _TWO_LEPTON_WW.sample(ev.rng, ev.n)
    _decay_top(ev, a, m1, charge, modes[:, 0])
    _decay_top(ev, b, m2, charge, modes[:, 1])


# ---------------------------------------------------------------------------- channels

Process = Callable[[TruthEvent], None]


@dataclass(frozen=True)
class Sample:
    """A channel at truth level: sub-processes with their cross-sections (pb, after the filter)."""

    description: str
    processes: tuple[tuple[float, Process], ...]
    signal: bool = False
    negative_weight_fraction: float = 0.0
    # A signal of the zoo, simulated when named, not by default: "development" (the signals the
    # zoo's choices were made on) or "held-out" (kept out of every choice, to judge them).
    zoo: Literal["", "development", "held-out"] = ""

    @property
    def xsec_pb(self) -> float:
        return sum(xsec for xsec, _ in self.processes)


def _signal(heavy: float, lsp: float, xsec_pb: float) -> Sample:
    return Sample(
        f"chi1+- chi2^0 -> W chi1^0 Z chi1^0 at ({heavy:g}, {lsp:g}) GeV, >= 2 leptons",
        ((xsec_pb * _TWO_LEPTON_WZ.efficiency, partial(_c1n2, heavy=heavy, lsp=lsp)),),
        signal=True,
    )


# Inclusive 13 TeV cross-sections (NNLO or NNLO+NNLL for the SM, NLO+NLL wino-like C1N2) times
# the branching fraction of each sample's filter.
SAMPLES: dict[str, Sample] = {
    "zeejets": Sample("Z/gamma* -> ee + jets", ((1950.0, partial(_z_jets, kind=E)),)),
    "zmmjets": Sample("Z/gamma* -> mumu + jets", ((1950.0, partial(_z_jets, kind=MU)),)),
    "zttjets": Sample("Z/gamma* -> tautau + jets", ((1950.0, partial(_z_jets, kind=TAU)),)),
    "ttbar": Sample(
        "ttbar (834 pb), at least one leptonic W", ((833.9 * _ONE_LEPTON_WW.efficiency, _ttbar),),
        negative_weight_fraction=0.07,
    ),
    "singletop": Sample(
        "single top tW (71.7 pb), at least one leptonic W",
        ((71.7 * _ONE_LEPTON_WW.efficiency, _single_top),), negative_weight_fraction=0.05,
    ),
    "wjets": Sample("W -> l nu + jets, l = e, mu, tau", ((3 * 20240.0, _w_jets),)),
    "diboson": Sample("WW, WZ, ZZ with at least two charged leptons", (
        (118.7 * _TWO_LEPTON_WW.efficiency, partial(_diboson, pair="WW")),
        (51.0 * _TWO_LEPTON_WZ.efficiency, partial(_diboson, pair="WZ")),
        (17.2 * _TWO_LEPTON_ZZ.efficiency, partial(_diboson, pair="ZZ")),
    )),
    "higgs": Sample("gluon-fusion H -> WW*, ZZ* (at least one lepton), tautau", (
        (48.6 * 0.2152 * _ONE_LEPTON_WW.efficiency, partial(_higgs, decay="WW")),
        (48.6 * 0.0264 * _ONE_LEPTON_ZZ.efficiency, partial(_higgs, decay="ZZ")),
        (48.6 * 0.0626, partial(_higgs, decay="tautau")),
    )),
    "c1n2_wz_450_300": _signal(450.0, 300.0, 0.0754),
    "c1n2_wz_800_50": _signal(800.0, 50.0, 0.00485),
    # The signal zoo: well-known scenarios with plausible kinematics and rough 13 TeV rates.
    "sleptons_200_180": Sample(
        "compressed selectron / smuon pairs (200, 180) GeV, ~l -> l chi1^0: two soft OS leptons",
        ((0.025, partial(_compressed_sleptons, slepton=200.0, lsp=180.0)),), signal=True, zoo="development"),
    "hpp_vbf_500": Sample(
        "doubly charged scalar H5++ (500 GeV) from VBF -> W+-W+- -> same-sign l nu l nu, two tag jets",
        ((0.010 * _W_BR[:3].sum() ** 2, partial(_vbf_doubly_charged, mass=500.0, width=5.0)),),
        signal=True, zoo="development"),
    "heavy_higgs_llvv_700": Sample(
        "heavy scalar (700 GeV) from gluon fusion -> ZZ -> ll nu nu",
        ((0.30 * 0.29 * 2 * 2 * 0.0336 * 0.20, partial(_heavy_higgs_llvv, mass=700.0, width=30.0)),),
        signal=True, zoo="development"),
    "zprime_forward_300": Sample(
        "narrow dilepton resonance (300 GeV) at |y| > 2",
        ((0.010, partial(_forward_resonance, mass=300.0, width=3.0)),), signal=True, zoo="development"),
    "four_tops": Sample(
        "t tbar t tbar (12 fb), at least two leptonic Ws",
        ((0.012 * _TWO_LEPTON_WWWW.efficiency, _four_tops),), signal=True, zoo="development"),
    # The held-out zoo: written after every choice made on the signals above, to judge them.
    "chargino_ww_400_100": Sample(
        "wino-like chi1+ chi1- (400, 100) GeV -> W chi1^0 W chi1^0, >= 2 leptons",
        ((0.080 * _TWO_LEPTON_WW.efficiency, partial(_chargino_pair, heavy=400.0, lsp=100.0)),),
        signal=True, zoo="held-out"),
    "wprime_wz_1200": Sample(
        "heavy charged vector W' (1200 GeV) -> W Z, >= 2 leptons",
        ((0.010 * _TWO_LEPTON_WZ.efficiency, partial(_wprime_wz, mass=1200.0, width=40.0)),),
        signal=True, zoo="held-out"),
    "higgsino_150_130": Sample(
        "higgsino-like chi2^0 chi1+- (150, 130) GeV, chi2^0 -> l+ l- chi1^0 (l = e, mu): a soft pair",
        ((1.8 * _Z_BR[:2].sum(), partial(_higgsino_n2c1, heavy=150.0, lsp=130.0)),), signal=True, zoo="held-out"),
    "same_sign_tops": Sample(
        "same-sign top pairs t t / t-bar t-bar from a flavour-violating vector (50 fb), >= 2 leptons",
        ((0.050 * _TWO_LEPTON_WW.efficiency, _same_sign_tops),), signal=True, zoo="held-out"),
}

#: The signals of the zoo, simulated when ``simulate.channels`` names them: those the zoo's choices
#: were made on, and those held out to judge them.
ZOO = tuple(name for name, sample in SAMPLES.items() if sample.zoo == "development")
HELD_OUT = tuple(name for name, sample in SAMPLES.items() if sample.zoo == "held-out")


def generate_truth(rng: np.random.Generator, sample: Sample, n: int) -> TruthEvent:
    """Truth objects of ``n`` events of a sample, its sub-processes mixed by cross-section.

    Parameters
    ----------
    rng : numpy.random.Generator
    sample : Sample
    n : int

    Returns
    -------
    TruthEvent
    """
    ev = TruthEvent(rng, n)
    if len(sample.processes) == 1:
        sample.processes[0][1](ev)
        return ev
    which = kin.categorical(rng, [xsec for xsec, _ in sample.processes], n)
    for i, (_, process) in enumerate(sample.processes):
        rows = np.flatnonzero(which == i)
        sub = TruthEvent(rng, rows.size)
        process(sub)
        ev.absorb(sub, rows)
    return ev
