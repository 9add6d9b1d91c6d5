"""Are the inputs in the units the schema declares? A check of the first entries of every file.

``schema.units`` (GeV or MeV) is applied once, where the branches are mapped
(:func:`megaset.pipeline.schema.read_events`): momenta, energies, masses and MET are divided by
1000 for MeV; eta, phi and the other fields are kept as stored. Declared wrongly, nothing
downstream would notice: MeV read as GeV lets every pT and mass cut pass (a mono-Z sample's
selection went from 66 % to 87 %, its median m_ll read 91,089), GeV read as MeV fails them all.
So before the ingest writes anything, the first entries of every input file are mapped (which
also checks its pass flags, see :mod:`megaset.pipeline.schema`) and a few medians are compared with
the range GeV data give. Each range leaves a factor of 1000 between a plausible median and
the same median read in the other unit: a lepton sample's median pT lies between about 5 GeV
and 2 TeV, so 2 GeV to 3 TeV takes every one of them and neither 1000 times more nor less.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.config import ChannelInput, Config
from megaset.errors import ConfigError
from megaset.pipeline.inputs import FileInfo
from megaset.pipeline.objects import EventArrays

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Statistic", "statistics", "check_first_chunks"]

#: Entries read of every file (fewer when its chunks are smaller): thousands of leptons, enough
#: for a median, for a read of a few milliseconds.
FIRST_ENTRIES = 10_000
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


def _first_entries(cfg: Config, info: FileInfo, options: Mapping[str, Any]) -> tuple[int, EventArrays] | None:
    """The first entries of one file, mapped; None if the file does not read (the processor
    reports or skips it, as ``inputs.on_bad_file`` says)."""
    from megaset.errors import BranchError, InputFileError
    from megaset.pipeline.open_files import OPEN_TREES
    from megaset.pipeline.retry import damaged
    from megaset.pipeline.schema import check_branches, read_events

    schema = cfg.input_schema
    branches = schema.branches()
    stop = min(info.entries, cfg.inputs.chunksize, FIRST_ENTRIES)
    try:
        tree = OPEN_TREES.tree(info.path, info.tree, options)
        check_branches(dict.fromkeys(tree.keys(), "") | tree.typenames(filter_name=branches), schema, info.path)
        source = tree.arrays(branches, entry_stop=stop, how=dict)
    except (BranchError, InputFileError, OSError, ValueError, KeyError):
        return None
    except Exception as err:
        if damaged(err) is None:
            raise
        return None  # a damaged basket: the processor names it with the entries it could not read
    return stop, read_events(source, schema, info.path)


def _check_file(info: FileInfo, cfg: Config, options: Mapping[str, Any]) -> ConfigError | None:
    """The error of the file's first entries, returned (a worker's exception would reach the driver
    re-raised from a traceback of the worker's; returned, it is raised there as it is)."""
    try:
        first = _first_entries(cfg, info, options)
    except ConfigError as err:  # a quality branch mapped as a flag that is none
        return err
    if first is None or not cfg.input_schema.check_units:
        return None
    entries, ev = first
    for stat in statistics(ev, cfg):
        if not stat.plausible:
            return ConfigError(_message(stat, info.channel, info.path, entries, cfg))
    return None


def check_first_chunks(cfg: Config, channels: Mapping[str, ChannelInput], files: list[FileInfo],
                       client: Client | None, options: Mapping[str, Any]) -> None:
    """Check the first entries of every input file, on the cluster when a client is given.

    Every file, not only each channel's first: one file in MeV among GeV files would otherwise
    pass its events through cuts that do not act. The read is of at most :data:`FIRST_ENTRIES`
    entries per file, a small fraction of the ingest's own.

    Parameters
    ----------
    cfg
        The configuration (its input schema, selection and ``inputs.kind``).
    channels
        The channels to check.
    files
        The good input files, in order.
    client
        A Dask client, or None to check in this process.
    options
        ``uproot.open`` options of the inputs (remote access).

    Raises
    ------
    ConfigError
        For the first file whose values do not look like ``schema.units`` says (naming the
        channel, the file, the statistic and the fix), or whose pass flags are not 0 or 1.
    """
    todo = [f for f in files if f.channel in channels]
    if client is None:
        results = [_check_file(info, cfg, options) for info in todo]
    else:
        n = len(todo)
        results = client.gather(client.map(_check_file, todo, [cfg] * n, [dict(options)] * n, pure=False))
    errors = [err for err in results if err is not None]
    if errors:
        raise errors[0]
