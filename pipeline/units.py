"""Are the inputs in the units the schema declares? A check of the first chunk of every file.

``schema.units`` (GeV or MeV) is applied once, where the branches are mapped
(:func:`megaset.pipeline.schema.read_events`): momenta, energies, masses and MET are divided by
1000 for MeV; eta, phi and the other fields are kept as stored. Declared wrongly, nothing
downstream would notice: MeV read as GeV lets every pT and mass cut pass (a mono-Z sample's
selection went from 66 % to 87 %, its median m_ll read 91,089), GeV read as MeV fails them all.
So the ingest's processor compares a few medians of every input file's first chunk, as it maps
it (which also checks its pass flags, see :mod:`megaset.pipeline.schema`), with the range GeV
data give, before it writes that chunk: a refused chunk stops the ingest at once, and the ingest
removes what it had staged (:func:`megaset.pipeline.ingest.ingest`). Checked there, the check
reads nothing of its own: a check before the ingest read every file's tree and first basket a
second time, a third of the ingest's time on files of one basket per branch.

Each range leaves a factor of 1000 between a plausible median and the same median read in the
other unit: a lepton sample's median pT lies between about 5 GeV and 2 TeV, so 2 GeV to 3 TeV
takes every one of them and neither 1000 times more nor less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megaset.config import Config
from megaset.errors import ConfigError
from megaset.pipeline.objects import EventArrays

__all__ = ["Statistic", "statistics", "check_units"]

#: Fewer values than this tell nothing: the statistic is left out.
MIN_VALUES = 20


@dataclass(frozen=True)
class Statistic:
    """A median of momenta in GeV (after the declared units' conversion) and the range of GeV data."""

    name: str
    median: float
    count: int
    low: float
    high: float

    @property
    def plausible(self) -> bool:
        return self.low <= self.median <= self.high


def _median(name: str, values: np.ndarray, low: float, high: float) -> Statistic | None:
    values = values[np.isfinite(values)]
    if len(values) < MIN_VALUES:
        return None
    return Statistic(name, float(np.median(values)), len(values), low, high)


def statistics(ev: EventArrays, cfg: Config) -> list[Statistic]:
    """The medians that tell GeV from MeV in one mapped chunk, those with enough values.

    Events: the pT of the lepton candidates (the objects of ``selection.electrons`` and
    ``selection.muons`` with their flavour and |eta| cuts, which do not depend on units) and the
    MET of events with MET > 0. Jets: the scalar pT sum of a jet's constituents.
    """
    if cfg.inputs.kind == "jets":
        const = ev.collections[cfg.jets.collection]
        counts = const.counts()
        sums = np.bincount(const.event_index(), weights=const["pt"], minlength=const.n_events)[counts > 0]
        found = [_median("median scalar pT sum of a jet's constituents", sums, 10.0, 20_000.0)]
    else:
        leptons = []
        for sel in (cfg.selection.electrons, cfg.selection.muons):
            coll = ev.collections.get(sel.collection)
            if coll is None:
                continue  # the selection names the missing collection
            mask = np.abs(coll["eta"]) <= sel.abs_eta_max
            if sel.flavor is not None and "flavor" in coll.columns:
                mask &= coll["flavor"] == sel.flavor
            leptons.append(np.asarray(coll["pt"][mask], dtype=np.float64))
        found = [_median("median pT of the lepton candidates", np.concatenate(leptons), 2.0, 3000.0)] if leptons else []
        if cfg.schema.met is not None:
            met = np.asarray(ev.met_et, dtype=np.float64)
            found.append(_median("median MET of the events with MET > 0", met[met > 0], 2.0, 3000.0))
    return [s for s in found if s is not None]


def _gev(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _message(stat: Statistic, channel: str, path: str, entries: int, cfg: Config) -> str:
    key = "jets.schema" if cfg.inputs.kind == "jets" else "schema"
    declared = cfg.input_schema.units
    looks = "MeV" if stat.median > stat.high else "GeV"
    side = "above" if stat.median > stat.high else "below"
    if looks != declared:
        verdict = f"the file looks like {looks} read as {declared}: set {key}.units: {looks}"
    else:
        verdict = f"the values look 1000 times too small for {declared}: check the branches {key} maps"
    return (
        f"channel {channel!r}, file {path}: the {stat.name} is {_gev(stat.median)} GeV ({stat.count} values "
        f"of its first {entries} entries, read with {key}.units: {declared}) is far {side} what GeV data give "
        f"({stat.low:g} to {stat.high:g} GeV); {verdict} (or {key}.check_units: false if these values are right)"
    )


def check_units(ev: EventArrays, cfg: Config, channel: str, path: str, entries: int) -> None:
    """Stop at the first ``entries`` of a file (its first chunk, mapped as ``ev``) when their values
    do not look like ``schema.units`` says.

    Raises
    ------
    ConfigError
        Naming the channel, the file, the statistic and the fix.
    """
    if not cfg.input_schema.check_units:
        return
    for stat in statistics(ev, cfg):
        if not stat.plausible:
            raise ConfigError(_message(stat, channel, path, entries, cfg))
