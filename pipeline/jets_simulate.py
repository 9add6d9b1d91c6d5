"""Simulated boosted jets: fat jets as lists of calorimeter constituents in ROOT files.

No event generator can be installed here, so this module is a small, physically motivated
stand-in for PYTHIA + DELPHES as Farina et al. used them (anti-kT R = 1 jets, pT 800-900 GeV,
|eta| < 1). What it approximates, step by step:

* **Hard process**: a parton (QCD) or a boosted resonance with a pT drawn from a falling
  spectrum (pT^-5) in the window, |eta| < 1, decayed with isotropic two- and three-body phase
  space and boosted (Breit-Wigner masses for t, W, H, Z'): t -> b W -> b q q', W -> q q',
  H -> b b, a narrow 40 GeV Z' -> q q, an RPV gluino (400 GeV) -> q q q with flat three-body
  phase space, and a dark-shower-like cascade (a 250 GeV state decaying through two levels of
  dark hadrons into eight quarks: a wide, many-prong jet). As in Farina et al., the partonic
  daughters must lie within Delta R < 0.6 of the resonance (decays are redrawn until they do).
* **Parton shower**: every quark and gluon showers in the collinear (small-angle) limit in the
  (eta, phi) plane with leading-order splitting functions (q -> q g, g -> g g, g -> q qbar),
  angular ordering (each daughter's emissions stay inside the angle of the splitting that made
  it), a Sudakov veto algorithm with a running one-loop alpha_s(kT) and a cutoff kT > 1 GeV.
  Decay products of colour singlets start from the angle to their partner (coherence).
* **Hadronisation**: each final parton becomes 1 + Poisson(log(pT / GeV)) hadrons sharing its
  pT (flat Dirichlet fractions), each kicked sideways by a Gaussian kT of 0.3 GeV.
* **Detector**: hadrons within Delta R < 1 of the jet axis deposit pT in calorimeter cells of
  0.05 x 0.05 in (eta, phi); each cell's pT is smeared (50 %/sqrt(E) plus 5 %) and kept above
  1 GeV. Each kept cell is a massless constituent (pT, eta, phi, E).

So QCD jet masses fall smoothly from a Sudakov peak, top and W jets peak near their masses,
N-subjettiness ratios separate 2- and 3-prong jets from QCD, and gluon jets have more
constituents than quark jets (C_A > C_F). Deterministic given the seed (numba's generator is
seeded per file). Not a tune: absolute rates and fine shapes differ from PYTHIA.

>>> jets = generate("w", 20, seed=3)                  # doctest: +SKIP
>>> jets["constPt"].type                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numba
import numpy as np

from megaset.config import ChannelInput, JetSimulateConfig
from megaset.errors import ConfigError

if TYPE_CHECKING:
    import awkward as ak

__all__ = ["SAMPLES", "generate", "simulate_jets", "is_simulated_jets", "jet_inputs", "TREE",
           "simulate_jets_record", "simulated_jets_record"]

#: Tree of the jet ntuples.
TREE = "jets"

#: Sample -> (code of the hard process, description).
SAMPLES: dict[str, tuple[int, str]] = {
    "qcd": (0, "QCD light-quark and gluon jets (40 % gluons)"),
    "gluon": (1, "QCD gluon jets"),
    "top": (2, "hadronic top, t -> b W -> b q q'"),
    "w": (3, "W -> q q' (2-prong, 80.4 GeV)"),
    "gluino": (4, "RPV gluino -> q q q (400 GeV)"),
    "hbb": (5, "H -> b b (125 GeV)"),
    "dark": (6, "dark-shower-like cascade of a 250 GeV state into 8 quarks"),
    "zprime40": (7, "narrow Z' -> q q (2-prong, 40 GeV)"),
}

_MANIFEST = ".megaset-jets.json"
_MAX_CONSTITUENTS = 400
_R = 1.0
_CELL = 0.05

# Colour factors, flavours and the shower cutoff.
_CA, _CF, _TR, _NF = 3.0, 4.0 / 3.0, 0.5, 5.0
_Q0 = 1.0
_B0 = (33.0 - 2.0 * _NF) / (12.0 * math.pi)
_LAMBDA = 0.2
_GLUON, _QUARK = 0, 1


@numba.njit(cache=True)
def _seed(seed: int) -> None:
    np.random.seed(seed)


@numba.njit(cache=True)
def _alpha_s(kt: float) -> float:
    return 1.0 / (_B0 * math.log(max(kt, 2.0 * _LAMBDA) ** 2 / _LAMBDA**2))


@numba.njit(cache=True)
def _wrap(phi: float) -> float:
    return (phi + math.pi) % (2.0 * math.pi) - math.pi


@numba.njit(cache=True)
def _shower(pt0, eta0, phi0, flavour0, theta0, out_pt, out_eta, out_phi, n_out):
    """Angular-ordered collinear shower of one parton; final partons appended at ``n_out``."""
    stack_pt = np.empty(512)
    stack_eta = np.empty(512)
    stack_phi = np.empty(512)
    stack_fl = np.empty(512, dtype=np.int64)
    stack_th = np.empty(512)
    top = 0
    stack_pt[0], stack_eta[0], stack_phi[0], stack_fl[0], stack_th[0] = pt0, eta0, phi0, flavour0, theta0
    top = 1
    alpha_max = _alpha_s(_Q0)
    while top > 0:
        top -= 1
        pt, eta, phi, fl, theta = stack_pt[top], stack_eta[top], stack_phi[top], stack_fl[top], stack_th[top]
        split = False
        eps = _Q0 / pt
        while eps < 0.5 and theta * pt > 4.0 * _Q0 and top < 510:
            # Overestimate A (1/z + 1/(1-z)) on [eps, 1 - eps]: the Sudakov factor is (theta / theta_max)^a.
            big_a = (_CA + _TR * _NF) if fl == _GLUON else 2.0 * _CF
            a = alpha_max / math.pi * big_a * 2.0 * math.log((1.0 - eps) / eps)
            theta = theta * np.random.random() ** (1.0 / a)
            if theta * pt < 4.0 * _Q0:
                break
            z = eps * ((1.0 - eps) / eps) ** np.random.random()
            if np.random.random() < 0.5:
                z = 1.0 - z
            kt = z * (1.0 - z) * pt * theta
            if kt < _Q0:
                continue
            over = big_a * (1.0 / z + 1.0 / (1.0 - z))
            u = np.random.random() * over * alpha_max / _alpha_s(kt)
            if fl == _GLUON:
                gg = _CA * (z / (1.0 - z) + (1.0 - z) / z + z * (1.0 - z))
                qq = _TR * _NF * (z * z + (1.0 - z) * (1.0 - z))
                if u < gg:
                    fl1, fl2 = _GLUON, _GLUON
                elif u < gg + qq:
                    fl1, fl2 = _QUARK, _QUARK
                else:
                    continue
            else:
                if u < _CF * (1.0 + z * z) / (1.0 - z):
                    fl1, fl2 = _QUARK, _GLUON  # the quark keeps z
                else:
                    continue
            psi = 2.0 * math.pi * np.random.random()
            c, s = math.cos(psi), math.sin(psi)
            # pT-weighted centre stays on the parent: daughter 1 at (1 - z) theta, daughter 2 at z theta.
            d1, d2 = (1.0 - z) * theta, z * theta
            for pt_d, deta, dphi, fl_d in ((z * pt, d1 * c, d1 * s, fl1), ((1.0 - z) * pt, -d2 * c, -d2 * s, fl2)):
                stack_pt[top], stack_eta[top], stack_phi[top] = pt_d, eta + deta, _wrap(phi + dphi)
                stack_fl[top], stack_th[top] = fl_d, theta
                top += 1
            split = True
            break
        if not split:
            out_pt[n_out], out_eta[n_out], out_phi[n_out] = pt, eta, phi
            n_out += 1
    return n_out


@numba.njit(cache=True)
def _four(pt, eta, phi, m):
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return np.array([math.sqrt(px * px + py * py + pz * pz + m * m), px, py, pz])


@numba.njit(cache=True)
def _polar(p):
    pt = math.hypot(p[1], p[2])
    return pt, math.asinh(p[3] / max(pt, 1e-9)), math.atan2(p[2], p[1])


@numba.njit(cache=True)
def _boost(p, parent):
    """``p`` (rest frame of ``parent``) boosted into the frame where ``parent`` has its momentum."""
    m = math.sqrt(max(parent[0] ** 2 - parent[1] ** 2 - parent[2] ** 2 - parent[3] ** 2, 1e-12))
    b = parent[1:] / parent[0]
    b2 = b @ b
    gamma = parent[0] / m
    bp = b @ p[1:]
    g2 = (gamma - 1.0) / b2 if b2 > 0 else 0.0
    out = np.empty(4)
    out[0] = gamma * (p[0] + bp)
    out[1:] = p[1:] + g2 * bp * b + gamma * b * p[0]
    return out


@numba.njit(cache=True)
def _two_body(parent, m1, m2):
    """Isotropic two-body decay of the four-vector ``parent`` into masses m1, m2."""
    big_m = math.sqrt(max(parent[0] ** 2 - parent[1] ** 2 - parent[2] ** 2 - parent[3] ** 2, 1e-12))
    p = math.sqrt(max((big_m**2 - (m1 + m2) ** 2) * (big_m**2 - (m1 - m2) ** 2), 0.0)) / (2.0 * big_m)
    cos_t = 2.0 * np.random.random() - 1.0
    sin_t = math.sqrt(1.0 - cos_t * cos_t)
    ph = 2.0 * math.pi * np.random.random()
    k = np.array([p * sin_t * math.cos(ph), p * sin_t * math.sin(ph), p * cos_t])
    a = np.array([math.sqrt(p * p + m1 * m1), k[0], k[1], k[2]])
    b = np.array([math.sqrt(p * p + m2 * m2), -k[0], -k[1], -k[2]])
    return _boost(a, parent), _boost(b, parent)


@numba.njit(cache=True)
def _bw(mass, width):
    return max(mass + 0.5 * width * math.tan(math.pi * (np.random.random() - 0.5)), 0.5 * mass)


@numba.njit(cache=True)
def _decay(code, parent, quarks, flavours):
    """Partonic daughters of the resonance ``parent``; returns how many were written."""
    if code == 2:  # t -> b W -> b q q'
        b, w = _two_body(parent, 4.8, _bw(80.4, 2.1))
        q1, q2 = _two_body(w, 0.0, 0.0)
        quarks[0], quarks[1], quarks[2] = b, q1, q2
        n = 3
    elif code == 4:  # gluino -> q q q, flat three-body phase space (massless)
        big_m2 = parent[0] ** 2 - parent[1] ** 2 - parent[2] ** 2 - parent[3] ** 2
        m12 = math.sqrt(big_m2 * (1.0 - math.sqrt(np.random.random())))
        pair, q3 = _two_body(parent, m12, 0.0)
        q1, q2 = _two_body(pair, 0.0, 0.0)
        quarks[0], quarks[1], quarks[2] = q1, q2, q3
        n = 3
    elif code == 6:  # dark cascade: 250 -> 2 x 80 -> 4 x 25 -> 8 quarks
        level = [parent]
        for mass in (80.0, 25.0):
            nxt = []
            for p in level:
                a, b = _two_body(p, _bw(mass, 0.05 * mass), _bw(mass, 0.05 * mass))
                nxt.append(a)
                nxt.append(b)
            level = nxt
        n = 0
        for p in level:
            q1, q2 = _two_body(p, 0.0, 0.0)
            quarks[n], quarks[n + 1] = q1, q2
            n += 2
    else:  # W, H -> b b, Z' -> q q
        m_q = 4.8 if code == 5 else 0.0
        q1, q2 = _two_body(parent, m_q, m_q)
        quarks[0], quarks[1] = q1, q2
        n = 2
    for i in range(n):
        flavours[i] = _QUARK
    return n


_MASS = np.array([0.0, 0.0, 172.5, 80.4, 400.0, 125.0, 250.0, 40.0])
_WIDTH = np.array([0.0, 0.0, 1.4, 2.1, 0.0, 0.004, 5.0, 0.4])


@numba.njit(cache=True)
def _spectrum(lo, hi):
    """pT from a pT^-5 spectrum between lo and hi."""
    u = np.random.random()
    return (lo**-4 + u * (hi**-4 - lo**-4)) ** -0.25


@numba.njit(cache=True)
def _hadronise_and_detect(pt, eta, phi, n, axis_eta, axis_phi, cells, out_pt, out_eta, out_phi):
    """Hadrons from the final partons, then calorimeter cells; returns the number of constituents."""
    n_eta = cells.shape[0]
    cells[:, :] = 0.0
    for i in range(n):
        n_had = 1 + np.random.poisson(max(math.log(max(pt[i], 1.0)), 0.0))
        fractions = -np.log(np.random.random(n_had))
        fractions /= fractions.sum()
        for f in fractions:
            p = f * pt[i]
            if p < 0.1:
                continue
            sigma = min(0.3 / p, 0.2)
            h_eta = eta[i] + sigma * np.random.standard_normal()
            h_phi = _wrap(phi[i] + sigma * np.random.standard_normal())
            d_eta, d_phi = h_eta - axis_eta, _wrap(h_phi - axis_phi)
            if d_eta * d_eta + d_phi * d_phi > _R * _R:
                continue
            ie = int((d_eta + _R) / _CELL)
            ip = int((d_phi + _R) / _CELL)
            if 0 <= ie < n_eta and 0 <= ip < n_eta:
                cells[ie, ip] += p
    k = 0
    for ie in range(n_eta):
        for ip in range(n_eta):
            p = cells[ie, ip]
            if p <= 0.0:
                continue
            c_eta = axis_eta - _R + (ie + 0.5) * _CELL
            energy = p * math.cosh(c_eta)
            p *= 1.0 + math.sqrt(0.25 / energy + 0.0025) * np.random.standard_normal()
            if p < 1.0 or k >= out_pt.shape[0]:
                continue
            out_pt[k], out_eta[k], out_phi[k] = p, c_eta, _wrap(axis_phi - _R + (ip + 0.5) * _CELL)
            k += 1
    return k


@numba.njit(cache=True)
def _generate(code, n_jets, gluon_fraction, pt_lo, pt_hi, seed, max_per_jet):
    """``n_jets`` jets of one sample: flat constituent arrays and per-jet counts."""
    _seed(seed)
    counts = np.zeros(n_jets, dtype=np.int64)
    c_pt = np.empty(n_jets * max_per_jet, dtype=np.float32)
    c_eta = np.empty(n_jets * max_per_jet, dtype=np.float32)
    c_phi = np.empty(n_jets * max_per_jet, dtype=np.float32)
    parton_pt = np.empty(8192)
    parton_eta = np.empty(8192)
    parton_phi = np.empty(8192)
    quarks = [np.zeros(4) for _ in range(8)]
    flavours = np.zeros(8, dtype=np.int64)
    n_side = int(2 * _R / _CELL) + 1
    cells = np.zeros((n_side, n_side))
    out_pt = np.empty(max_per_jet)
    out_eta = np.empty(max_per_jet)
    out_phi = np.empty(max_per_jet)
    at = 0
    for j in range(n_jets):
        pt = _spectrum(pt_lo, pt_hi)
        eta = 2.0 * np.random.random() - 1.0
        phi = math.pi * (2.0 * np.random.random() - 1.0)
        n_partons = 0
        if code <= 1:
            flavour = _GLUON if (code == 1 or np.random.random() < gluon_fraction) else _QUARK
            n_partons = _shower(pt, eta, phi, flavour, _R, parton_pt, parton_eta, parton_phi, 0)
        else:
            mass = _bw(_MASS[code], _WIDTH[code]) if _WIDTH[code] > 0 else _MASS[code]
            parent = _four(pt, eta, phi, mass)
            n_q = 0
            for _attempt in range(2000):
                n_q = _decay(code, parent, quarks, flavours)
                inside = True
                for i in range(n_q):
                    qpt, qeta, qphi = _polar(quarks[i])
                    if (qeta - eta) ** 2 + _wrap(qphi - phi) ** 2 > 0.36:
                        inside = False
                        break
                if inside:
                    break
            for i in range(n_q):
                qpt, qeta, qphi = _polar(quarks[i])
                # Coherence: a daughter radiates inside the angle to its nearest partner.
                theta = _R
                for k in range(n_q):
                    if k != i:
                        _, keta, kphi = _polar(quarks[k])
                        theta = min(theta, math.sqrt((qeta - keta) ** 2 + _wrap(qphi - kphi) ** 2))
                n_partons = _shower(qpt, qeta, qphi, flavours[i], max(theta, 0.05), parton_pt, parton_eta,
                                    parton_phi, n_partons)
        k = _hadronise_and_detect(parton_pt, parton_eta, parton_phi, n_partons, eta, phi, cells,
                                  out_pt, out_eta, out_phi)
        order = np.argsort(-out_pt[:k])
        for i in range(k):
            c_pt[at + i] = out_pt[order[i]]
            c_eta[at + i] = out_eta[order[i]]
            c_phi[at + i] = out_phi[order[i]]
        counts[j] = k
        at += k
    return c_pt[:at], c_eta[:at], c_phi[:at], counts


def generate(sample: str, n: int, seed: int, *, first_event: int = 0, pt_range: tuple[float, float] = (790.0, 960.0),
             gluon_fraction: float = 0.4) -> dict[str, np.ndarray | ak.Array]:
    """``n`` jets of ``sample`` as ntuple branches: jagged ``constPt, constEta, constPhi, constE``
    (GeV, sorted by pT) and ``eventNumber``.

    ``pt_range`` is that of the parton or resonance; the jet's own pT, after out-of-cone
    losses and the detector, is selected at ingest (``jets.selection``).
    """
    import awkward as ak

    if sample not in SAMPLES:
        msg = f"unknown jet sample {sample!r}; choose from {', '.join(SAMPLES)}"
        raise ConfigError(msg)
    code = SAMPLES[sample][0]
    pt, eta, phi, counts = _generate(code, n, gluon_fraction, *pt_range, seed, _MAX_CONSTITUENTS)
    energy = (pt * np.cosh(eta)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])

    def jagged(values: np.ndarray) -> ak.Array:
        return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), ak.contents.NumpyArray(values)))

    return {"constPt": jagged(pt), "constEta": jagged(eta), "constPhi": jagged(phi), "constE": jagged(energy),
            "eventNumber": np.arange(first_event, first_event + n, dtype=np.int64)}


def _counts(cfg: JetSimulateConfig) -> dict[str, int]:
    names = cfg.samples or list(SAMPLES)
    return {name: cfg.jets if name == cfg.background else cfg.signal_jets for name in names}


def _file_seed(seed: int, sample: str, index: int) -> int:
    return int(np.random.SeedSequence(seed, spawn_key=(SAMPLES[sample][0], index)).generate_state(1)[0])


def simulate_jets(cfg: JetSimulateConfig, *, progress: Callable[[int], None] | None = None) -> dict[str, list[str]]:
    """Write ``<output>/<sample>/<sample>_<i>.root`` (tree ``jets``) for every sample.

    Raises
    ------
    ConfigError
        For an output that is not a local folder.
    """
    from megaset.pipeline.simulate import remove_stale, write_ntuple

    if "://" in cfg.output and not cfg.output.startswith("file://"):
        msg = f"jets.simulate.output: {cfg.output!r} is not a local folder; simulate locally and copy the files"
        raise ConfigError(msg)
    root = Path(cfg.output.removeprefix("file://"))
    (root / _MANIFEST).unlink(missing_ok=True)
    written: dict[str, list[str]] = {}
    for sample, total in _counts(cfg).items():
        folder = root / sample
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, first in enumerate(range(0, total, cfg.jets_per_file)):
            n = min(cfg.jets_per_file, total - first)
            path = folder / f"{sample}_{index}.root"
            write_ntuple(path, generate(sample, n, _file_seed(cfg.seed, sample, index), first_event=first),
                         TREE, collections=("const",))
            paths.append(str(path))
            if progress is not None:
                progress(n)
        remove_stale(folder, sample, len(paths))
        written[sample] = paths
    manifest = {**cfg.model_dump(mode="json"), "stage": simulate_jets_record(cfg)}
    (root / _MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
    return written


def _manifest(cfg: JetSimulateConfig) -> dict | None:
    try:
        return dict(json.loads((Path(cfg.output.removeprefix("file://")) / _MANIFEST).read_text()))
    except (OSError, ValueError):
        return None


def is_simulated_jets(cfg: JetSimulateConfig) -> bool:
    """Whether ``cfg.output`` holds a finished jet simulation with exactly these settings."""
    manifest = _manifest(cfg)
    return manifest is not None and {k: v for k, v in manifest.items() if k != "stage"} == cfg.model_dump(mode="json")


def simulate_jets_record(cfg: JetSimulateConfig) -> dict:
    """The stage record (:mod:`megaset.provenance`) of a jet simulation with these settings."""
    from megaset.config import Config
    from megaset.provenance import record

    return record("simulate", Config.model_validate({"inputs": {"kind": "jets"},
                                                     "jets": {"simulate": cfg.model_dump(mode="json")}}))


def simulated_jets_record(cfg: JetSimulateConfig) -> dict | None:
    """The stage record of the finished jet simulation in ``cfg.output``, if there is one."""
    manifest = _manifest(cfg)
    return None if manifest is None else manifest.get("stage", {})


def jet_inputs(cfg: JetSimulateConfig) -> dict[str, ChannelInput]:
    """The samples :func:`simulate_jets` writes, as ``inputs.channels`` entries (tree ``jets``).

    >>> sorted(n for n, c in jet_inputs(JetSimulateConfig()).items() if not c.signal)
    ['qcd']
    """
    base = Path(cfg.output.removeprefix("file://"))
    return {name: ChannelInput(files=[str(base / name / f"{name}_*.root")], tree=TREE, signal=name != cfg.background)
            for name in _counts(cfg)}


def describe() -> Mapping[str, str]:
    """Sample -> what it approximates (for reports)."""
    return {name: text for name, (_, text) in SAMPLES.items()}
