"""Simulated ATLAS-style flat ntuples: 2-lepton + MET backgrounds and chargino-neutralino signals.

Each channel is generated at truth level with vectorised numpy code (``_processes``: resonances
with relativistic Breit-Wigner masses decayed isotropically and boosted, recoiling against
initial-state radiation jets), then a simple detector here turns truth objects into
reconstructed jets, leptons and MET (resolutions, efficiencies, acceptance, b-tagging,
identification, isolation and impact parameters). Files are written with uproot in
the default schema of ``megaset.config.SchemaConfig`` (tree ``mini``), one shared counter
branch per collection (``njet``, ``nlep``), as a real flat ntuple.

Generation is deterministic: every file draws from its own ``numpy.random.SeedSequence``
keyed by (seed, channel, file index), so files can be made independently and in any order.

>>> CHANNELS["ttbar"].signal, CHANNELS["c1n2_wz_800_50"].signal
(False, True)
>>> b = generate("zmmjets", 200, seed=7)
>>> len(b["met_Et"]), str(b["lepPt"].type)
(200, '200 * var * float32')
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from megaset.config import ChannelInput, SimulateConfig
from megaset.errors import ConfigError
from megaset.pipeline import _kinematics as kin
from megaset.pipeline import _processes as truth

if TYPE_CHECKING:
    import awkward as ak

__all__ = [
    "CHANNELS", "ChannelSpec", "simulate", "is_simulated", "simulate_record", "simulated_record", "demo_inputs",
    "generate", "write_ntuple", "event_counts",
]

# ---------------------------------------------------------------------------- detector constants
_M_ELECTRON, _M_MUON = 0.000511, 0.10566
# DL1r score per flavour: a core Gaussian plus a tail Gaussian (weight, mu, sigma, mu, sigma).
# Tuned to the working points of the selection: light jets ~4 % above 0.665 and ~0.5 % above
# 2.195, c-jets ~20 % above 2.195, b-jets ~75 % above 2.195 and ~90 % above 0.665.
_DL1R = np.zeros((16, 5))
_DL1R[truth.LIGHT] = 0.96, -1.0, 0.8, 0.8, 1.2
_DL1R[truth.CHARM] = 1.0, 0.8, 1.6, 0.0, 1.0
_DL1R[truth.BOTTOM] = 0.9, 4.0, 2.0, 0.5, 1.5
_DL1R[truth.TAU_JET] = 1.0, -0.3, 1.0, 0.0, 1.0
_BTAG_ETA = 2.5  # tracker acceptance: jets beyond cannot be tagged
# MC campaigns standing in for the 2015-16, 2017 and 2018 run periods, by luminosity share.
_RUNS, _RUN_LUMI = np.array([284500, 300000, 310000], np.int32), np.array([36.2, 44.3, 58.5])
_BACKGROUND_FLOOR = 0.03  # smallest share of the background events a channel gets
_MANIFEST = "simulate.json"


@dataclass(frozen=True)
class ChannelSpec:
    """A simulated sample: 13 TeV cross-section (pb, after its generator filter) and what it is."""

    xsec_pb: float
    signal: bool
    description: str
    negative_weight_fraction: float = 0.0
    zoo: bool = False  # a signal of the zoo: simulated when simulate.channels names it


#: Every simulated channel by name.
CHANNELS: Mapping[str, ChannelSpec] = MappingProxyType({
    name: ChannelSpec(sample.xsec_pb, sample.signal, sample.description, sample.negative_weight_fraction,
                      bool(sample.zoo))
    for name, sample in truth.SAMPLES.items()
})


# ---------------------------------------------------------------------------- detector


def _collect(parts: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def _sort(row: np.ndarray, pt: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Object order (by event, then pT descending) and the event offsets."""
    order = np.lexsort((-pt, row))
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=offsets[1:])
    return order, offsets


def _reconstruct_jets(ev: truth.TruthEvent) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = ev.rng
    row, p4, flavour = _collect(ev.jets)
    pt, eta, phi = kin.pt_eta_phi(p4)
    # Noise, stochastic and constant terms of the jet energy resolution.
    resolution = np.sqrt((3.0 / np.maximum(pt, 1.0)) ** 2 + 0.75**2 / np.maximum(pt, 1.0) + 0.05**2)
    pt = pt * np.maximum(1.0 + resolution * rng.standard_normal(pt.size), 0.0)
    keep = (pt >= 15.0) & (np.abs(eta) <= 4.5)
    row, pt, eta, phi, flavour = row[keep], pt[keep], eta[keep], phi[keep], flavour[keep]
    mass = pt * rng.gamma(3.0, np.where(flavour == truth.BOTTOM, 0.04, 0.03))
    flavour = np.where(np.abs(eta) < _BTAG_ETA, flavour, truth.LIGHT)
    weight, mu, sigma, tail_mu, tail_sigma = _DL1R[flavour].T
    core = rng.random(pt.size) < weight
    score = np.where(core, mu, tail_mu) + np.where(core, sigma, tail_sigma) * rng.standard_normal(pt.size)
    order, offsets = _sort(row, pt, ev.n)
    columns = {"Pt": pt, "Eta": eta, "Phi": phi, "M": mass, "dl1r": score}
    return {name: col[order].astype(np.float32) for name, col in columns.items()}, offsets


def _reconstruct_leptons(ev: truth.TruthEvent) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = ev.rng
    row, p4, kind, charge, origin = _collect(ev.leptons)
    pt, eta, phi = kin.pt_eta_phi(p4)
    muon = kind == truth.MU
    energy = np.maximum(pt * np.cosh(eta), 1.0)
    resolution = np.where(muon, np.hypot(0.015, 1.0e-4 * pt), np.hypot(0.10 / np.sqrt(energy), 0.007))
    pt = pt * np.maximum(1.0 + resolution * rng.standard_normal(pt.size), 0.0)
    found = rng.random(pt.size) < np.where(muon, 0.98, 0.96)
    keep = found & (pt > 7.0) & (np.abs(eta) < 2.9)
    row, pt, eta, phi, muon, charge, origin = (
        a[keep] for a in (row, pt, eta, phi, muon, charge, origin)
    )
    size = pt.size
    prompt = origin != truth.NONPROMPT
    flip = ~muon & (rng.random(size) < 0.003)  # electron charge mis-identification (bremsstrahlung)
    # Transverse impact parameter significance: taus fly ~87 um, non-prompt leptons come from b/c decays.
    d0 = rng.standard_normal(size) * np.where(origin == truth.FROM_TAU, 1.8, 1.0)
    columns = {
        "Pt": pt,
        "Eta": eta,
        "Phi": phi,
        "M": np.where(muon, _M_MUON, _M_ELECTRON).astype(np.float32),
        "Flavor": np.where(muon, 2, 1).astype(np.int32),
        "Charge": np.where(flip, -charge, charge).astype(np.int32),
        "Tight": rng.random(size) < np.where(prompt, 0.92, 0.35),
        "IsoLoose_VarRad": rng.random(size) < np.where(prompt, 0.96, 0.20),
        "D0Sig": np.where(prompt, d0, rng.laplace(0.0, 3.0, size)),
    }
    order, offsets = _sort(row, pt, ev.n)
    out = {}
    for name, col in columns.items():
        col = col[order]
        out[name] = col.astype(np.float32) if col.dtype == np.float64 else col
    return out, offsets


def _missing_et(ev: truth.TruthEvent, scalar_et: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invisible transverse momentum plus a Gaussian resolution growing with the scalar ET."""
    sigma = np.sqrt(6.0**2 + 0.55**2 * scalar_et)
    met = ev.invisible + sigma[:, None] * ev.rng.standard_normal((ev.n, 2))
    return np.hypot(met[:, 0], met[:, 1]), np.arctan2(met[:, 1], met[:, 0])


def _per_event_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    total = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return total[offsets[1:]] - total[offsets[:-1]]


def _jagged(columns: dict[str, np.ndarray], offsets: np.ndarray, prefix: str) -> dict[str, ak.Array]:
    import awkward as ak

    index = ak.index.Index64(offsets)
    return {
        prefix + name: ak.Array(ak.contents.ListOffsetArray(index, ak.contents.NumpyArray(col)))
        for name, col in columns.items()
    }


# ---------------------------------------------------------------------------- public API


def _check_channels(names, where: str) -> None:
    unknown = [name for name in names if name not in CHANNELS]
    if unknown:
        msg = f"{where}: unknown channel(s) {', '.join(map(repr, unknown))}; valid channels: {', '.join(CHANNELS)}"
        raise ConfigError(msg)


def _channel_key(channel: str) -> int:
    return zlib.crc32(channel.encode())


def generate(
    channel: str,
    n: int,
    seed: int | np.random.SeedSequence,
    *,
    first_event: int = 0,
    lumi_ifb: float = 139.0,
    n_generated: int | None = None,
) -> dict[str, np.ndarray | ak.Array]:
    """One batch of simulated events in memory, as the branches of the flat ntuple.

    Parameters
    ----------
    channel : str
        A name of `CHANNELS`.
    n : int
        Number of events.
    seed : int or numpy.random.SeedSequence
        An integer is combined with the channel name, so that channels draw independent
        streams from the same seed; a ``SeedSequence`` is used as given.
    first_event : int
        ``eventNumber`` of the first event (the numbers run on from it).
    lumi_ifb : float
        Integrated luminosity the weights are normalised to, in fb^-1.
    n_generated : int, optional
        Events of the whole sample this batch belongs to (default ``n``): ``wgt`` is
        ``xsec_pb * 1000 * lumi_ifb / n_generated``, with the sign flipped for the negative-weight
        fraction of the channel and the magnitudes scaled so the batch sums to its share.

    Returns
    -------
    dict
        Jagged ``awkward`` arrays ``jetPt, jetEta, jetPhi, jetM, jetdl1r, lepPt, lepEta, lepPhi,
        lepM, lepFlavor, lepCharge, lepTight, lepIsoLoose_VarRad, lepD0Sig`` and numpy arrays
        ``met_Et, met_phi, wgt, eventNumber, runNumber``.

    Examples
    --------
    >>> b = generate("ttbar", 1000, seed=1)
    >>> total = float(b["wgt"].astype(float).sum())
    >>> bool((b["wgt"] < 0).any()), abs(total / (CHANNELS["ttbar"].xsec_pb * 139e3) - 1) < 1e-6
    (True, True)
    """
    _check_channels([channel], "generate")
    if isinstance(seed, np.random.SeedSequence):
        sequence = seed
    else:
        sequence = np.random.SeedSequence(seed, spawn_key=(_channel_key(channel),))
    rng = np.random.default_rng(sequence)
    ev = truth.generate_truth(rng, truth.SAMPLES[channel], n)
    jets, jet_offsets = _reconstruct_jets(ev)
    leptons, lepton_offsets = _reconstruct_leptons(ev)
    # ~20 GeV of unclustered soft energy on top of the reconstructed objects.
    scalar_et = 20.0 + _per_event_sum(jets["Pt"], jet_offsets) + _per_event_sum(leptons["Pt"], lepton_offsets)
    met_et, met_phi = _missing_et(ev, scalar_et)
    return {
        **_jagged(jets, jet_offsets, "jet"),
        **_jagged(leptons, lepton_offsets, "lep"),
        "met_Et": met_et.astype(np.float32),
        "met_phi": met_phi.astype(np.float32),
        "wgt": _weights(rng, channel, n, n_generated or n, lumi_ifb),
        "eventNumber": first_event + np.arange(n, dtype=np.int64),
        "runNumber": _RUNS[kin.categorical(rng, _RUN_LUMI, n)],
    }


def _weights(rng: np.random.Generator, channel: str, n: int, n_generated: int, lumi_ifb: float) -> np.ndarray:
    spec = CHANNELS[channel]
    nominal = spec.xsec_pb * 1000.0 * lumi_ifb / n_generated
    negative = rng.random(n) < spec.negative_weight_fraction
    net = n - 2 * int(negative.sum())
    # NLO-like samples: scale the magnitudes so that the batch still sums to n * nominal.
    scale = n / net if net > 0 else 1.0 / (1.0 - 2.0 * spec.negative_weight_fraction)
    return np.where(negative, -1.0, 1.0).astype(np.float32) * np.float32(nominal * scale)


def event_counts(cfg: SimulateConfig) -> dict[str, int]:
    """Events per channel: backgrounds share ``cfg.events`` by cross-section with a floor."""
    default = [name for name, spec in CHANNELS.items() if not spec.zoo]
    selected = list(dict.fromkeys(cfg.channels if cfg.channels is not None else default))
    _check_channels(selected, "simulate.channels")
    backgrounds = [c for c in selected if not CHANNELS[c].signal]
    shares = _floored_shares(np.array([CHANNELS[c].xsec_pb for c in backgrounds]), _BACKGROUND_FLOOR)
    # Largest-remainder rounding keeps the total exactly cfg.events.
    exact = shares * cfg.events
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: cfg.events - counts.sum()]] += 1
    planned = dict(zip(backgrounds, counts.tolist(), strict=True))
    planned |= {c: cfg.signal_events for c in selected if CHANNELS[c].signal}
    return {c: planned[c] for c in selected if planned[c] > 0}


def _floored_shares(xsec: np.ndarray, floor: float) -> np.ndarray:
    floor = min(floor, 1.0 / max(len(xsec), 1))
    fixed = np.zeros(len(xsec), bool)
    while True:
        free = xsec * ~fixed
        shares = np.where(fixed, floor, (1.0 - floor * fixed.sum()) * free / max(free.sum(), 1e-300))
        low = ~fixed & (shares < floor)
        if not low.any():
            return shares
        fixed |= low


def _file_seed(seed: int, channel: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(_channel_key(channel), index))


def write_ntuple(path: Path, branches: Mapping[str, np.ndarray | ak.Array], tree: str = "mini",
                 collections: tuple[str, ...] = ("jet", "lep")) -> None:
    """Write one ntuple, the jagged branches of each collection prefix sharing one counter
    (``njet``, ``nlep``)."""
    import awkward as ak
    import uproot

    data: dict[str, np.ndarray | ak.Array] = {}
    for prefix in collections:
        data[prefix] = ak.zip({k[len(prefix):]: v for k, v in branches.items() if k.startswith(prefix)})
    data |= {k: v for k, v in branches.items() if not k.startswith(collections)}
    partial_path = path.with_name(path.name + ".part")
    with uproot.recreate(partial_path) as f:
        f.mktree(tree, data, field_name=lambda outer, inner: outer + inner)
    os.replace(partial_path, path)  # a file under its final name is always complete


def simulate(
    cfg: SimulateConfig,
    *,
    tree: str = "mini",
    lumi_ifb: float = 139.0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[str]]:
    """Write the simulated ntuples ``<output>/<channel>/<channel>_<i>.root``.

    Background channels share ``cfg.events`` in proportion to their cross-sections, each
    getting at least 3 %; every signal gets ``cfg.signal_events``. Files of ``cfg.events_per_file``
    entries are written one after the other (files left over from an earlier, larger run of a
    channel are removed so that the channel's glob matches this run only).

    Parameters
    ----------
    cfg : SimulateConfig
        The ``simulate`` section of the configuration.
    tree : str
        Tree name (``inputs.tree``).
    lumi_ifb : float
        Luminosity the weights are normalised to (``inputs.lumi_ifb``).
    progress : callable, optional
        Called with the number of events after each file.

    Returns
    -------
    dict
        Channel name -> paths of its files.

    Raises
    ------
    ConfigError
        An unknown channel in ``simulate.channels`` (the valid ones are listed), a negative seed
        or an output that is not a local folder.
    """
    counts = event_counts(cfg)
    if cfg.seed < 0:
        msg = f"simulate.seed: must be a non-negative integer, got {cfg.seed}"
        raise ConfigError(msg)
    if "://" in cfg.output and not cfg.output.startswith("file://"):
        msg = f"simulate.output: {cfg.output!r} is not a local folder; simulate locally and copy the files"
        raise ConfigError(msg)
    root = Path(cfg.output.removeprefix("file://"))
    (root / _MANIFEST).unlink(missing_ok=True)
    written: dict[str, list[str]] = {}
    for channel, total in counts.items():
        folder = root / channel
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, first in enumerate(range(0, total, cfg.events_per_file)):
            n = min(cfg.events_per_file, total - first)
            branches = generate(
                channel, n, _file_seed(cfg.seed, channel, index),
                first_event=first, lumi_ifb=lumi_ifb, n_generated=total,
            )
            path = folder / f"{channel}_{index}.root"
            write_ntuple(path, branches, tree)
            paths.append(str(path))
            if progress is not None:
                progress(n)
        remove_stale(folder, channel, len(paths))
        written[channel] = paths
    # Written last: its presence says every file of these settings is there.
    manifest = {**_settings(cfg, tree, lumi_ifb), "stage": simulate_record(cfg, tree=tree, lumi_ifb=lumi_ifb)}
    (root / _MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
    return written


def is_simulated(cfg: SimulateConfig, *, tree: str = "mini", lumi_ifb: float = 139.0) -> bool:
    """Whether ``cfg.output`` holds a finished simulation with exactly these settings."""
    manifest = _manifest(cfg.output)
    return manifest is not None and {k: v for k, v in manifest.items() if k != "stage"} == _settings(
        cfg, tree, lumi_ifb)


def _manifest(output: str) -> dict | None:
    try:
        return dict(json.loads((Path(output.removeprefix("file://")) / _MANIFEST).read_text()))
    except (OSError, ValueError):
        return None


def simulate_record(cfg: SimulateConfig, *, tree: str = "mini", lumi_ifb: float = 139.0) -> dict:
    """The stage record (:mod:`megaset.provenance`) of a simulation with these settings."""
    from megaset.config import Config
    from megaset.provenance import record

    return record("simulate", Config.model_validate({"simulate": cfg.model_dump(mode="json"),
                                                     "inputs": {"tree": tree, "lumi_ifb": lumi_ifb}}))


def simulated_record(cfg: SimulateConfig) -> dict | None:
    """The stage record of the finished simulation in ``cfg.output``, if there is one."""
    manifest = _manifest(cfg.output)
    return None if manifest is None else manifest.get("stage", {})


def _settings(cfg: SimulateConfig, tree: str, lumi_ifb: float) -> dict:
    return {**cfg.model_dump(mode="json"), "tree": tree, "lumi_ifb": lumi_ifb}


def remove_stale(folder: Path, channel: str, n_files: int) -> None:
    pattern = re.compile(rf"{re.escape(channel)}_(\d+)\.root")
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= n_files:
            path.unlink()


def demo_inputs(cfg: SimulateConfig) -> dict[str, ChannelInput]:
    """The channels `simulate` writes for ``cfg``, as ``inputs.channels`` entries (one glob each).

    >>> sorted(demo_inputs(SimulateConfig(channels=["ttbar", "c1n2_wz_800_50"])).items())[0][1].signal
    True
    """
    return {
        channel: ChannelInput(
            files=[str(Path(cfg.output.removeprefix("file://")) / channel / f"{channel}_*.root")],
            signal=CHANNELS[channel].signal,
        )
        for channel in event_counts(cfg)
    }
