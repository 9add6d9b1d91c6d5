"""Streaming ingest: input files -> coffea processor per chunk on Dask -> staging pieces.

Resumable by construction: finished pieces are kept and their chunks are not read again, a
failed chunk is retried by the executor, and the staging area is marked complete only after
every chunk has a piece and the summary is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from megaset import __version__
from megaset.config import Config
from megaset.errors import ConfigError, InputFileError
from megaset.pipeline.inputs import FileInfo, file_identities, inspect_files, resolve_channels
from megaset.pipeline.open_files import OPEN_TREES
from megaset.pipeline.remote import uproot_options
from megaset.pipeline.weights import absurd_message, absurd_weights
from megaset.storage.backend import writing
from megaset.storage.staging import LAYOUT_VERSION

if TYPE_CHECKING:
    from distributed import Client

    from megaset.progress import Progress

__all__ = ["ingest", "IngestSummary", "ingest_record"]


@dataclass
class IngestSummary:
    """Events read and selected per channel, cut flows, skipped files and timing."""

    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    files: int = 0
    seconds: float = 0.0
    seconds_inspect: float = 0.0

    @property
    def n_read(self) -> int:
        return sum(c["n_read"] for c in self.channels.values())

    @property
    def n_selected(self) -> int:
        return sum(c["n_selected"] for c in self.channels.values())

    @property
    def rate(self) -> float:
        """Input events per second of wall time."""
        return self.n_read / self.seconds if self.seconds else 0.0


def _channel_table(channels) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": name, "signal": ch.signal, "data": ch.data}
        for i, (name, ch) in enumerate(channels.items())
    ]


def _weight_scales(cfg: Config, channels, infos: list[FileInfo]) -> dict[str, float]:
    """Per-file weight factor: xsec * lumi / (sum of weights of the channel), or 1."""
    scales = {}
    for name, ch in channels.items():
        mine = [i for i in infos if i.channel == name]
        factor = 1.0
        if ch.xsec_pb is not None:
            total = sum(i.sum_weights for i in mine) if cfg.input_schema.weight else sum(i.entries for i in mine)
            factor = ch.xsec_pb * 1000.0 * cfg.inputs.lumi_ifb / total if total else 0.0
        scales.update({i.path: factor for i in mine})
    return scales


def _fingerprint(cfg: Config, table: list[dict[str, Any]], files: list[FileInfo]) -> str:
    """Hash of everything that decides the content and the keys of the staging pieces."""
    relevant = {
        "layout": LAYOUT_VERSION,
        "channels": table,
        "files": [(f.path, f.index, f.checksum) for f in files],
        "chunksize": cfg.inputs.chunksize,
        "lumi_ifb": cfg.inputs.lumi_ifb,
        "xsec": {name: ch.xsec_pb for name, ch in cfg.inputs.channels.items()},
        "kind": cfg.inputs.kind,
        "schema": cfg.input_schema.model_dump(mode="json"),
    }
    if cfg.inputs.kind == "jets":
        relevant["jets"] = cfg.jets.model_dump(mode="json", include={"collection", "selection", "image",
                                                                     "constituents", "subjettiness", "feature"})
    else:
        relevant |= {"selection": cfg.selection.model_dump(mode="json"), "rmm": cfg.rmm.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def ingest_record(cfg: Config) -> dict[str, Any]:
    """The stage record (:mod:`megaset.provenance`) an ingest of ``cfg`` gives now: its sections
    of the configuration, the input files' identities and, for the simulated demo sample, the
    fingerprint of the simulation it reads."""
    from megaset.provenance import record

    upstream = None
    if not cfg.inputs.channels:
        if cfg.inputs.kind == "jets":
            from megaset.pipeline.jets_simulate import simulated_jets_record

            simulated = simulated_jets_record(cfg.jets.simulate)
        else:
            from megaset.pipeline.simulate import simulated_record

            simulated = simulated_record(cfg.simulate)
        upstream = {"simulate": (simulated or {}).get("fingerprint")}
    files = file_identities(resolve_channels(cfg), cfg.inputs.remote)
    return record("ingest", cfg, upstream=upstream, inputs={"files": files})


def _check_resumable(staging: str, fingerprint: str) -> None:
    """Refuse to add pieces to a staging area written from other inputs or settings."""
    from megaset.errors import StoreError
    from megaset.storage.staging import staging_attrs

    try:
        previous = staging_attrs(staging, require_complete=False).get("fingerprint")
    except StoreError:
        return  # nothing there yet
    if previous is not None and previous != fingerprint:
        msg = (
            f"staging area {staging!r} was written from other inputs or settings (channels, files, "
            "chunksize, schema, selection or rmm differ), so its pieces cannot be reused; delete it "
            "or set store.staging_url to a new location"
        )
        raise StoreError(msg)


def _refuse_copies(files: list[FileInfo]) -> None:
    """Two inputs with one ROOT file UUID are copies of one file: in one channel their staging
    pieces would share keys and one would replace the other's events; in two channels the
    events would be stored twice, under two labels."""
    seen: dict[str, FileInfo] = {}
    for info in files:
        first = seen.setdefault(info.uuid, info)
        if first.path == info.path:
            continue
        where = (f"in channel {info.channel!r}" if first.channel == info.channel
                 else f"listed under channel {first.channel!r} while this one is under {info.channel!r}")
        msg = f"is a copy of {first.path} (same ROOT file UUID {info.uuid}) {where}; list each file once"
        raise InputFileError(info.path, msg)


def _kind(cfg: Config) -> tuple[type, dict[str, Any]]:
    """The processor of the input kind, and what the staging area records about its features:
    their names, the feature column (the one the mix keeps train statistics of) and its settings."""
    if cfg.inputs.kind == "jets":
        from megaset.pipeline.jet_processor import JetProcessor
        from megaset.pipeline.jet_processor import feature_names as jet_feature_names

        return JetProcessor, {"kind": "jets", "feature_column": cfg.jets.feature,
                              "feature_names": jet_feature_names(cfg.jets),
                              "jets": cfg.jets.model_dump(mode="json", by_alias=True)}
    from megaset.pipeline.processor import RMMProcessor
    from megaset.pipeline.rmm import feature_names

    return RMMProcessor, {"kind": "events", "feature_column": "rmm", "feature_names": feature_names(cfg.rmm),
                          "rmm": cfg.rmm.model_dump(mode="json")}


def _runner(client: Client | None, cfg: Config, files: list[FileInfo], progress: Progress | None):
    import uuid

    from coffea import processor
    from coffea.nanoevents import BaseSchema
    from coffea.processor.executor import FileMeta

    from megaset.pipeline.retry import retrying_executor

    remote = cfg.inputs.remote
    executor = retrying_executor(client, remote, skip=cfg.inputs.on_bad_file == "skip", progress=progress)
    # The file check already read each tree's entry count and the file's UUID: handed to
    # coffea as its metadata cache, they spare the Runner a pass that opens every file again.
    known = {FileMeta(i.channel, i.path, i.tree): {"numentries": i.entries, "uuid": uuid.UUID(i.uuid).bytes}
             for i in files}
    return processor.Runner(executor=executor, schema=BaseSchema, chunksize=cfg.inputs.chunksize,
                            metadata_cache=known, xrootdtimeout=remote.timeout)


def ingest(cfg: Config, client: Client | None = None, *, progress: Progress | None = None,
           log: Callable[[str], None] | None = None) -> IngestSummary:
    """Run the ingest of ``cfg`` and return its summary.

    Parameters
    ----------
    cfg
        The configuration; ``cfg.store.staging`` receives the pieces.
    client
        A Dask client (``megaset.deploy.cluster.open_client``); ``None`` runs in this process.
    progress
        Called as ``progress(done, total)`` in chunks of input files, resumed chunks included.
    log
        Called with one-line messages (bad files skipped, chunks resumed).

    Raises
    ------
    InputFileError
        For a bad input file when ``inputs.on_bad_file`` is ``fail`` (names file and reason).
    """
    log = log or (lambda message: None)
    t0 = time.perf_counter()
    channels = resolve_channels(cfg)
    infos = inspect_files(cfg, channels, client)
    t_inspect = time.perf_counter() - t0
    bad = [i for i in infos if i.error]
    if bad and cfg.inputs.on_bad_file == "fail":
        first = bad[0]
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        msg = f"{first.error}{more}; set inputs.on_bad_file: skip to continue without such files"
        raise InputFileError(first.path, msg)
    skipped = [{"file": i.path, "reason": i.error} for i in bad]
    for entry in skipped:
        log(f"skipping {entry['file']}: {entry['reason']}")
    good = [i for i in infos if not i.error]
    _refuse_copies(good)

    staging = cfg.store.staging
    fingerprint = _fingerprint(cfg, _channel_table(channels), good)
    _check_resumable(staging, fingerprint)
    # A staging area on a full, read-only or foreign filesystem: one line, not a traceback.
    with writing(staging, "megaset ingest", what="staging area", key="store.staging_url"):
        return _stage(cfg, client, channels, infos, good, skipped, fingerprint, log, progress,
                      (t0, t_inspect))


def _stop_chunks(client: Client | None, timeout: float = 60.0) -> None:
    """Cancel the chunks the cluster has not begun and wait (at most ``timeout`` seconds) for
    those it is running, so that none writes a piece after the staging area is removed. In this
    process the executor stops with the chunk that raised."""
    if client is None:
        return
    from distributed import Future

    client.cancel([Future(key, client) for key in list(client.futures)], force=True)
    deadline = time.monotonic() + timeout
    while any(client.run(_chunks_running).values()) and time.monotonic() < deadline:
        time.sleep(0.05)


def _chunks_running(dask_worker) -> int:
    return len(dask_worker.state.all_running_tasks)


def _stage(cfg: Config, client: Client | None, channels, infos: list[FileInfo], good: list[FileInfo],
           skipped: list[dict[str, str]], fingerprint: str, log: Callable[[str], None], progress: Progress | None,
           times: tuple[float, float]) -> IngestSummary:
    """The ingest once its files are checked: every chunk staged, then the summary."""
    from megaset.storage.staging import finish_staging, init_staging, remove_staging

    t0, t_inspect = times
    staging = cfg.store.staging
    table = _channel_table(channels)
    processor_class, described = _kind(cfg)
    init_staging(staging, list(channels), {
        "fingerprint": fingerprint,
        "stage": ingest_record(cfg),
        "schema_version": LAYOUT_VERSION,
        **described,
        "channels": table,
        "config": cfg.persisted(),
        "code_version": __version__,
    })

    # Nothing preloaded: the processor reads the branches itself, from the same tree.
    fileset = {name: {"files": {i.path: i.tree for i in good if i.channel == name}} for name in channels}
    fileset = {name: spec for name, spec in fileset.items() if spec["files"]}
    # treename=None below: coffea then reads each file's own tree (a channel's ``tree``)
    # instead of forcing inputs.tree onto every file.
    options = uproot_options(cfg.inputs.remote, tuple(i.path for i in good if i.whole_file))
    proc = processor_class(
        cfg,
        channel_ids={c["name"]: c["id"] for c in table},
        file_index={i.path: i.index for i in infos},
        weight_scale=_weight_scales(cfg, channels, good),
        skip_bad=cfg.inputs.on_bad_file == "skip",
        uproot_options=options,
    )
    try:
        out = _runner(client, cfg, good, progress)(
            # The processor reads the chunk's branches itself and looks at nothing of coffea's
            # NanoEvents but their metadata: their form holds no branch, so that coffea does not
            # work out the branches' types and build virtual arrays of them for every chunk.
            fileset, proc, treename=None, iteritems_options={"filter_name": []},
            # The tree coffea reads for a chunk is the one the processor reads the chunk from. The
            # timeout reaches uproot as the Runner's xrootdtimeout: coffea before 2026.9 passes that
            # beside the uproot options, and uproot.open refuses a second timeout.
            uproot_options={**{k: v for k, v in options.items() if k != "timeout"}, "object_cache": OPEN_TREES},
        ) if fileset else {}
    except ConfigError:
        # Wrong units or a continuous variable mapped as a pass flag (pipeline.units, checked on
        # every file's first chunk before it is written) hold for the whole run, whose pieces no
        # corrected configuration could reuse: nothing of it is left.
        _stop_chunks(client)
        remove_staging(staging)
        raise

    errors = out.pop("errors", {})
    if errors:
        raise errors[min(errors)]
    for filename, reasons in sorted(out.pop("skipped", {}).items()):
        # One line per file: its first failed chunk, and how many more failed.
        reasons = sorted(reasons)
        reason = reasons[0] + (f" (and {len(reasons) - 1} more chunks)" if len(reasons) > 1 else "")
        log(f"skipping {filename}: {reason}")
        skipped.append({"file": filename, "reason": reason})
    # Files found bad by the processor (their branches) are skipped like those of the check.
    left_out = {entry["file"] for entry in skipped}
    summary = IngestSummary(skipped=skipped, files=len([i for i in good if i.path not in left_out]),
                            seconds_inspect=t_inspect)
    checks = cfg.inputs.weights
    for name in channels:
        acc = out.get(name, {"n_read": 0, "n_selected": 0, "chunks": 0, "resumed": 0, "cutflow": {}, "nonfinite": {},
                             "weights": {}})
        summary.channels[name] = {
            "n_read": int(acc["n_read"]),
            "n_selected": int(acc["n_selected"]),
            "chunks": int(acc["chunks"]),
            "resumed": int(acc["resumed"]),
            "cutflow": [[step, int(v[0]), float(v[1])] for step, v in acc["cutflow"].items()],
            "nonfinite": {k: int(v) for k, v in acc["nonfinite"].items()},
            "absurd_weights": absurd_weights(acc["weights"], checks),
        }
    absurd = {name: c["absurd_weights"] for name, c in summary.channels.items() if c["absurd_weights"]["files"]}
    if absurd:
        message = absurd_message(absurd, checks, cfg.input_schema.weight)
        if checks.on_absurd == "fail":
            first = next(iter(next(iter(absurd.values()))["files"]))
            raise InputFileError(first, f"{message}; check the weight branch of these files (or the channel's "
                                        "xsec_pb), or set inputs.weights.on_absurd: warn to keep them")
        log(f"{message}; kept (inputs.weights.on_absurd: warn)")
    summary.seconds = time.perf_counter() - t0
    finish_staging(staging, {
        "files": [i.to_dict() for i in good if i.path not in left_out],
        "skipped": skipped,
        "cutflow": {name: c["cutflow"] for name, c in summary.channels.items()},
        "summary": {name: {k: c[k] for k in ("n_read", "n_selected", "nonfinite", "absurd_weights")}
                    for name, c in summary.channels.items()},
    })
    return summary
