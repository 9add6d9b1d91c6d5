"""The coffea processor: one input chunk in, one staging piece out.

Stateless apart from its configuration (coffea: "a bundle of methods"): ``process`` reads the
chunk's branches, maps them onto physics objects, selects events, builds the RMM and the aux
columns, writes them as the chunk's staging piece, and returns the chunk's counts and cut
flow. The piece is keyed by (fileuuid, entrystart, entrystop), so a retried chunk overwrites
itself and a rerun returns the recorded counts of a finished piece without reading it again.

The branches are read in one call from the tree coffea opened for the chunk, kept by the
worker (:mod:`megaset.pipeline.open_files`), not through the NanoEvents coffea builds around
it: those copy every buffer they hand over, and the read was a third of the chunk's time. The
tree's branches are checked against the schema first, each chunk, on metadata already read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from coffea import processor

from megaset.config import Config, SchemaConfig
from megaset.errors import BranchError, ConfigError, MegasetError
from megaset.pipeline.open_files import OPEN_TREES
from megaset.pipeline.rmm import build_rmm, rmm_inputs
from megaset.pipeline.schema import check_branches, read_events
from megaset.pipeline.selection import Selection, select
from megaset.pipeline.units import check_units
from megaset.pipeline.weights import weight_stats
from megaset.storage.staging import piece_attrs, piece_key, write_piece

__all__ = ["RMMProcessor", "piece_columns", "base_columns"]

_AUX_FLOAT = ("met", "met_phi", "m_ll", "m_lll", "ht")


def base_columns(weight: np.ndarray, run: np.ndarray, event: np.ndarray, entry: np.ndarray, channel_id: int,
                 file_index: int, scale: float) -> dict[str, np.ndarray]:
    """The columns every staged row has: ``weight`` (scaled), ``channel`` and ``event_id``
    (run, event, file index, entry)."""
    n = len(weight)
    event_id = np.empty((n, 4), dtype=np.int64)
    event_id[:, 0] = run
    event_id[:, 1] = event
    event_id[:, 2] = file_index
    event_id[:, 3] = entry
    return {
        "weight": (np.asarray(weight) * scale).astype(np.float32),
        "channel": np.full(n, channel_id, dtype=np.int16),
        "event_id": event_id,
    }


def piece_columns(sel: Selection, rmm: Any, channel_id: int, file_index: int, scale: float) -> dict[str, Any]:
    """The staging columns of one chunk's selected events (``rmm`` dense or sparse, as
    :func:`~megaset.storage.staging.write_piece` takes it)."""
    columns = {"rmm": rmm, **base_columns(sel.weight, sel.run, sel.event, sel.entry, channel_id, file_index, scale)}
    for name, values in sel.aux.items():
        dtype = np.float32 if name in _AUX_FLOAT else np.int16
        columns[name] = values.astype(dtype, copy=False)
    return columns


def _output(channel: str, attrs: Mapping[str, Any], resumed: bool) -> dict[str, Any]:
    """The chunk's contribution to the ingest summary (a coffea accumulator: dicts add up)."""
    return {
        channel: {
            "n_read": int(attrs["n_read"]),
            "n_selected": int(attrs["n_rows"]),
            "chunks": 1,
            "resumed": int(resumed),
            "cutflow": {step: np.array([raw, weighted]) for step, raw, weighted in attrs["cutflow"]},
            "nonfinite": dict(attrs.get("nonfinite", {})),
            "weights": {attrs["filename"]: attrs.get("weights", {"beyond": 0, "hist": {}})},
        }
    }


class RMMProcessor(processor.ProcessorABC):
    """Turns chunks of ntuples into staging pieces of RMMs and aux columns.

    Parameters
    ----------
    cfg
        The resolved configuration (schema, selection, rmm and staging settings are used).
    channel_ids
        Channel name -> integer id stored in the ``channel`` column.
    file_index
        Input path -> index stored in ``event_id`` (unique over the whole ingest).
    weight_scale
        Input path -> factor applied to the weight branch (cross-section normalisation).
    skip_bad
        With ``on_bad_file: skip``: a chunk whose branches cannot be read is reported in the
        output under ``"skipped"`` instead of failing the run.
    uproot_options
        How to open the inputs (``uproot.open`` options: remote access), as coffea opens them.
    """

    def __init__(
        self,
        cfg: Config,
        channel_ids: Mapping[str, int],
        file_index: Mapping[str, int],
        weight_scale: Mapping[str, float],
        skip_bad: bool = False,
        uproot_options: Mapping[str, Any] | None = None,
    ):
        self.cfg = cfg
        self.uproot_options = dict(uproot_options or {})
        self.channel_ids = dict(channel_ids)
        self.file_index = dict(file_index)
        self.weight_scale = dict(weight_scale)
        self.skip_bad = skip_bad

    def process(self, events) -> dict[str, Any]:
        meta = events.metadata
        channel, filename = meta["dataset"], meta["filename"]
        start, stop = int(meta["entrystart"]), int(meta["entrystop"])
        staging = self.cfg.store.staging
        key = piece_key(meta["fileuuid"], start, stop)
        done = piece_attrs(staging, channel, key)
        if done is not None:
            return _output(channel, done, resumed=True)

        try:
            source = self.read(filename, meta["treename"], start, stop)
            columns, cutflow, nonfinite = self.build(source, channel, filename, start)
        except BranchError as err:
            if self.skip_bad:
                return {"skipped": {filename: [err.reason]}}
            return {"errors": {key: err}}
        except ConfigError:
            # Units or flags the configuration gets wrong hold for every file: raised, the
            # ingest stops at once (pipeline.retry hands the error to the driver as it is).
            raise
        except MegasetError as err:
            # Returned, not raised: the executor would wrap it in a bare Exception and the
            # driver would lose its type and message. Ingest raises it after the run.
            return {"errors": {key: err}}

        scale = self.weight_scale[filename]
        attrs = {
            "filename": filename,
            "file_index": self.file_index[filename],
            "fileuuid": meta["fileuuid"],
            "entrystart": start,
            "entrystop": stop,
            "n_read": stop - start,
            "cutflow": [[step, int(raw), float(w) * scale] for step, raw, w in cutflow],
            "nonfinite": nonfinite,
            "weights": weight_stats(columns["weight"], self.cfg.inputs.weights),
        }
        write_piece(staging, channel, key, columns, attrs, self.cfg.store.staging_compressor)
        return _output(channel, {**attrs, "n_rows": len(columns["weight"])}, resumed=False)

    def read(self, filename: str, treename: str, start: int, stop: int) -> dict[str, Any]:
        """The schema's branches of entries ``start:stop``, by name, after checking the tree has
        them with usable types."""
        schema = self.cfg.input_schema
        branches = schema.branches()
        tree = OPEN_TREES.tree(filename, treename, self.uproot_options)
        check_branches(dict.fromkeys(tree.keys(), "") | tree.typenames(filter_name=branches), schema, filename)
        return tree.arrays(branches, entry_start=start, entry_stop=stop, how=dict)

    @property
    def schema(self) -> SchemaConfig:
        """The schema of the processor's inputs."""
        return self.cfg.schema

    def events(self, source: Mapping[str, Any], channel: str, filename: str, start: int):
        """The chunk's branches mapped onto physics objects (which checks its pass flags); a
        file's first chunk is also checked against ``schema.units`` (:mod:`megaset.pipeline.units`)
        before anything of it is written."""
        ev = read_events(source, self.schema, filename, entry_start=start)
        if start == 0:
            check_units(ev, self.cfg, channel, filename, len(ev.entry))
        return ev

    def build(self, source: Mapping[str, Any], channel: str, filename: str,
              start: int) -> tuple[dict[str, Any], list, dict[str, int]]:
        """The staging columns of one chunk's selected events (``source``: its branches by
        name), its cut flow (step, raw, weighted before the cross-section scale) and its
        non-finite counts per branch."""
        ev = self.events(source, channel, filename, start)
        sel = select(ev, self.cfg.selection, filename)
        objects = rmm_inputs(sel.objects, self.cfg.rmm)
        rmm = build_rmm(objects, sel.aux["met"], sel.aux["met_phi"], self.cfg.rmm, sparse=True)
        columns = piece_columns(sel, rmm, self.channel_ids[channel], self.file_index[filename],
                                self.weight_scale[filename])
        return columns, sel.cutflow, sel.nonfinite

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator
