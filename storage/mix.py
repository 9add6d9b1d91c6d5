"""The mix pass: staging area -> channel-mixed store, one Dask task per output chunk.

The driver makes the plan (:mod:`megaset.storage.plan`), creates every group and array of the
store with its final shape, then submits one task per chunk that is not finished yet. A task
gathers exactly its rows from the staging blocks, shuffles them, writes exactly one chunk of
every array of its group (chunk-aligned writes: no locks, no partial chunks), records the
chunk's weight sums and scaler partials, and marks the chunk done, last. Once every chunk is
done, the driver folds the partials, writes the metadata and marks the store complete.

Resumable: rerunning on an interrupted mix redoes only the chunks without a done mark; the
plan is deterministic, so a redone or retried chunk is rewritten with the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset import __version__
from megaset.config import CompressorConfig, Config
from megaset.errors import StoreError
from megaset.storage import stats
from megaset.storage.backend import open_group, writing
from megaset.storage.mix_chunk import build_chunk
from megaset.storage.plan import ChunkTask, GroupPlan, MixPlan, channel_roles, make_plan
from megaset.storage.store import MIX_PREFIX, SCHEMA_VERSION, channel_flags, column_dimensions
from megaset.storage.tasks import map_chunks

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["mix", "prepare_mix", "MixJob", "mix_record"]

_REQUIRED = ("weight", "channel", "event_id")
#: Train chunks whose scaler partials are read back at once when folding them.
_FOLD_BATCH = 64

ColumnSpecs = dict[str, tuple[str, tuple[int, ...]]]


def mix(cfg: Config, client: Client | None, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Mix the staging area ``cfg.store.staging`` into the store ``cfg.store.url``.

    Parameters
    ----------
    cfg
        The configuration; its ``store`` section sets chunk length, codec, splits, seed and
        contamination.
    client
        A Dask client; ``None`` builds the chunks one after the other in this process.
    progress
        Called as ``progress(done, total)`` in chunks, resumed chunks included.

    Returns
    -------
    dict
        ``groups`` (per group: ``n_events``, ``n_chunks``, events per channel name),
        ``chunks``, ``resumed`` (chunks already done), ``mb_written`` (uncompressed column
        data written by this run), ``seconds``. The store's size on disk is not among them:
        it would take a listing of every chunk of the store.

    Raises
    ------
    IncompleteStoreError
        If the ingest that wrote the staging area did not finish.
    StoreError
        If the store exists but was mixed from other staging data or other store settings, or
        its filesystem refuses the writes (full, read-only, no permission).
    ConfigError
        For a contamination that names no signal channel or needs more signal than staged.
    """
    t0 = time.perf_counter()
    url = cfg.store.url
    with writing(url, "megaset mix"):
        job = prepare_mix(cfg)
        todo = job.todo()
        total = sum(g.n_chunks for g in job.plan.groups)
        resumed = total - len(todo)
        advance = (lambda n: progress(resumed + n, total)) if progress else (lambda n: None)
        advance(0)
        nbytes = sum(map_chunks(client, build_chunk, todo, names=[f"{t.group}-{t.index}" for t in todo],
                                stage="megaset mix", retries=2, progress=advance, **job.chunk_kwargs()))
        if todo or not _complete(url):
            _finish(url, cfg, job.plan, job.staging_attrs)
    plan = job.plan
    return {
        "url": url,
        "groups": {
            g.name: {
                "n_events": g.n_events,
                "n_chunks": g.n_chunks,
                "channels": {plan.sequences[c].name: n for c, n in zip(g.channel_ids, g.counts, strict=True)},
            }
            for g in plan.groups
        },
        "chunks": total,
        "resumed": resumed,
        "mb_written": nbytes / 1e6,
        "seconds": time.perf_counter() - t0,
    }


@dataclass(frozen=True)
class MixJob:
    """A mix ready to run: the plan, the staged columns, and the chunks already done."""

    staging: str
    url: str
    plan: MixPlan
    staging_attrs: Mapping[str, Any]
    #: Name -> (dtype, shape after the event axis) of every staged column.
    columns: ColumnSpecs
    #: How the staging pieces store each column (:mod:`megaset.storage.staging`).
    layout: dict[str, list]
    #: Per group, which chunks are written already.
    done: dict[str, np.ndarray]
    #: The store's codec and the form of its feature column (``store.compressor``, ``store.form``).
    compressor: CompressorConfig
    form: str

    def todo(self) -> list[ChunkTask]:
        """The tasks of the chunks not written yet, group after group."""
        return [task for g in self.plan.groups for task in self.plan.tasks(g.name, np.flatnonzero(~self.done[g.name]))]

    def chunk_kwargs(self) -> dict[str, Any]:
        """What :func:`megaset.storage.mix_chunk.build_chunk` takes besides its task."""
        feature = feature_column(self.staging_attrs)
        return {"staging": self.staging, "url": self.url, "columns": list(self.columns), "layout": self.layout,
                "feature_column": feature, "csr": [feature] if self.form == "csr" else [],
                "compressor": self.compressor.model_dump(mode="json")}


def prepare_mix(cfg: Config) -> MixJob:
    """Plan the mix of ``cfg.store.staging`` into ``cfg.store.url`` and create (or reopen) the
    store's layout; the chunk tasks are then run with
    ``build_chunk(task, **job.chunk_kwargs())`` for every ``task`` of ``job.todo()``.

    Raises
    ------
    IncompleteStoreError, StoreError, ConfigError
        As :func:`mix`.
    """
    from megaset.storage.staging import list_pieces, staging_attrs

    staging, url = cfg.store.staging, cfg.store.url
    sattrs = staging_attrs(staging)
    pieces = list_pieces(staging)
    plan = make_plan(cfg.store, sattrs["channels"], pieces, [s["file"] for s in sattrs.get("skipped", [])])
    columns, layout = _column_specs(staging, pieces, feature_column(sattrs))
    _check_features(sattrs, columns)
    done = _prepare(url, plan, columns, cfg.store.compressor, feature_column(sattrs), cfg.store.form,
                    mix_record(cfg, sattrs))
    return MixJob(staging, url, plan, sattrs, columns, layout, done, cfg.store.compressor, cfg.store.form)


def mix_record(cfg: Config, sattrs: Mapping[str, Any]) -> dict[str, Any]:
    """The stage record (:mod:`megaset.provenance`) of a mix of ``cfg`` from the staging area
    whose attributes are ``sattrs``: the store settings and the ingest's fingerprint."""
    from megaset.provenance import record

    return record("mix", cfg, upstream={"ingest": (sattrs.get("stage") or {}).get("fingerprint")})


def feature_column(sattrs: Mapping[str, Any]) -> str:
    """The staged column whose names and train statistics the store records (``rmm`` for events)."""
    return str(sattrs.get("feature_column", "rmm"))


def _width(tail: Sequence[int]) -> int:
    return int(np.prod(tail, dtype=np.int64))


def _check_features(sattrs: Mapping[str, Any], columns: ColumnSpecs) -> None:
    name = feature_column(sattrs)
    names, width = sattrs["feature_names"], _width(columns[name][1])
    if len(names) != width:
        msg = (f"staging area lists {len(names)} feature names but its {name} rows have {width} cells; "
               "rerun `megaset ingest`")
        raise StoreError(msg)


def _column_specs(staging: str, pieces: Mapping[str, list], feature: str) -> tuple[ColumnSpecs, dict[str, list]]:
    """Name -> (dtype, shape after the event axis) of every staged column, and the storage
    layout of the pieces, from their attributes; every piece must agree."""
    from megaset.storage.staging import piece_schema

    found = [(f"{channel}/{key}", attrs) for channel, entries in pieces.items() for key, attrs in entries
             if int(attrs["n_rows"])]
    if not found:
        msg = f"staging area {staging!r} holds no selected events: nothing to mix (check the selection and inputs)"
        raise StoreError(msg)
    first, attrs = found[0]
    if "layout" not in attrs:
        msg = f"staging piece {staging}/{first} was written by an older megaset; rerun `megaset ingest`"
        raise StoreError(msg)
    for where, other in found[1:]:
        if other.get("schema") != attrs["schema"] or other.get("layout") != attrs["layout"]:
            msg = (
                f"staging pieces {staging}/{first} and {staging}/{where} hold different columns; "
                "the staging area mixes two ingests: delete it and rerun `megaset ingest`"
            )
            raise StoreError(msg)
    specs = piece_schema(attrs)
    missing = [c for c in (feature, *_REQUIRED) if c not in specs]
    if missing:
        msg = f"staging piece {staging}/{first} lacks columns {missing}; rerun `megaset ingest`"
        raise StoreError(msg)
    return dict(sorted(specs.items())), attrs["layout"]


def _complete(url: str) -> bool:
    return bool(open_group(url).attrs.get("complete"))


def _prepare(url: str, plan: MixPlan, columns: ColumnSpecs, codec: CompressorConfig,
             feature: str, form: str, stage: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Create the store layout, or reopen an interrupted one; the done mask of every group."""
    import zarr

    try:
        root = open_group(url, mode="r+")
    except StoreError:
        root = None
    if root is not None:
        mix_attrs = root.attrs.get("mix", {})
        if mix_attrs.get("fingerprint") != plan.fingerprint:
            msg = (
                f"store {url!r} was mixed from another staging area or with other store settings "
                "(chunk_len, compressor, form, splits, seed, contamination); delete it or set store.url to a new "
                "location"
                if "schema_version" in root.attrs
                else f"{url!r} already holds a Zarr group that is not a megaset store; set store.url to a new location"
            )
            raise StoreError(msg)
        if mix_attrs.get("layout"):
            return {g.name: root[f"{MIX_PREFIX}/{g.name}/done"][:] for g in plan.groups}
    # A fresh store, or our own whose layout creation was cut short (no chunk written yet):
    # start from an empty root.
    mix_attrs = {"fingerprint": plan.fingerprint, "layout": False}
    root = zarr.create_group(store=url, overwrite=root is not None, zarr_format=3,
                             attributes={"schema_version": SCHEMA_VERSION, "complete": False, "mix": mix_attrs,
                                         "stage": dict(stage)})
    _create_layout(root, plan, columns, codec, feature, form)
    root.attrs["mix"] = {**mix_attrs, "layout": True}
    return {g.name: np.zeros(g.n_chunks, dtype=bool) for g in plan.groups}


def _new_metadata(chunks: tuple[int, ...], dtype: str, codecs: list, fill: Any, dimensions: tuple[str, ...] | None):
    """Zarr v3 metadata of an array of one chunk, without touching the store."""
    import zarr

    template = zarr.create_array(store={}, shape=chunks, chunks=chunks, dtype=dtype, compressors=codecs,
                                 fill_value=fill, dimension_names=dimensions)
    return template.metadata


def _create_layout(root, plan: MixPlan, columns: ColumnSpecs, codec: CompressorConfig, feature: str,
                   form: str) -> None:
    """Every group and array with its final shape, plus the bookkeeping arrays (one chunk per
    output chunk), created concurrently: on an object store that is one round of requests.
    In the CSR ``form`` the feature column is its subgroup, whose arrays of cells each chunk's
    task creates (:mod:`megaset.storage.csr`)."""
    from zarr.core.group import GroupMetadata

    from megaset.storage.codecs import compressors
    from megaset.storage.csr import csr_attrs, csr_path, index_dtype

    codecs = compressors(codec)
    width = _width(columns[feature][1])
    nodes: dict[str, Any] = {}
    templates: dict[tuple, Any] = {}

    def _array_metadata(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, codecs: list, fill: Any,
                        dimensions: tuple[str, ...] | None = None):
        # One template per kind of array, given each shape: building zarr's metadata is the
        # costly part of planning, once per array of every group.
        key = (chunks, dtype, bool(codecs), repr(fill), dimensions)
        if key not in templates:
            templates[key] = _new_metadata(chunks, dtype, codecs, fill, dimensions)
        return templates[key].update_shape(shape)

    flags = channel_flags({s.id: s.name for s in plan.sequences.values()})
    for g in plan.groups:
        nodes[g.name] = GroupMetadata(zarr_format=3, attributes={
            "kind": g.kind, "n_events": g.n_events, "chunk_len": g.chunk_len,
            "channel_ids": g.channel_ids, "counts": g.counts,
            "base_columns": list(columns), "compressor": codec.model_dump(mode="json"),
            **({"forms": {feature: form}} if form != "dense" else {}),
        })
        for name, (dtype, tail) in columns.items():
            if name == feature and form == "csr":
                sub = f"{g.name}/{csr_path(name)}"
                nodes[sub] = GroupMetadata(zarr_format=3, attributes=csr_attrs(name, dtype, tail))
                nodes[f"{sub}/cell"] = nodes[f"{sub}/value"] = GroupMetadata(zarr_format=3)
                nodes[f"{sub}/nnz"] = _array_metadata((g.n_events,), (g.chunk_len,), index_dtype(width).str, codecs,
                                                      0, ("event",))
                continue
            array = _array_metadata((g.n_events, *tail), (g.chunk_len, *tail), dtype, codecs, 0,
                                    column_dimensions(name, len(tail)))
            nodes[f"{g.name}/{name}"] = array.update_attributes(flags) if name == "channel" else array
        book = f"{MIX_PREFIX}/{g.name}"
        nodes[f"{book}/done"] = _array_metadata((g.n_chunks,), (1,), "bool", [], False, ("chunk",))
        k = len(g.channel_ids)
        nodes[f"{book}/weights"] = _array_metadata((g.n_chunks, k), (1, max(k, 1)), "f8", [], 0.0,
                                                   ("chunk", "channel_index"))
        if g.name == "train":
            nodes[f"{book}/stats"] = _array_metadata(
                (g.n_chunks, stats.N_ROWS, width), (1, stats.N_ROWS, width), "f8", [], 0.0,
                ("chunk", "statistic", "feature"))
    for _ in root.create_hierarchy(nodes):
        pass
    root.attrs["groups"] = [g.name for g in plan.groups]


def _fold_scaler(book, n_chunks: int) -> dict[str, Any] | None:
    """The train scaler from the per-chunk partials, folded in chunk order."""
    summary = None
    for first in range(0, n_chunks, _FOLD_BATCH):
        for part in book["stats"][first:first + _FOLD_BATCH]:
            summary = stats.combine(summary, part)
    if summary is None:
        return None
    return {"n": int(summary[0][0]), **{k: v.tolist() for k, v in stats.finalize(summary).items()}}


def _finish(url: str, cfg: Config, plan: MixPlan, sattrs: Mapping[str, Any]) -> None:
    """Fold the per-chunk partials, write the metadata, and mark the store complete (last)."""
    root = open_group(url, mode="r+")
    weights: dict[str, np.ndarray] = {}
    for g in plan.groups:
        weights[g.name] = (root[f"{MIX_PREFIX}/{g.name}/weights"][:].sum(axis=0) if g.n_chunks
                           else np.zeros(len(g.channel_ids)))
        root[g.name].attrs["sum_weights"] = weights[g.name].tolist()
    scaler = _fold_scaler(root[f"{MIX_PREFIX}/train"], plan.group("train").n_chunks)
    root.update_attributes({
        "feature_names": list(sattrs["feature_names"]),
        "feature_column": feature_column(sattrs),
        "kind": sattrs.get("kind", "events"),
        "rmm": sattrs.get("rmm"),
        "jets": sattrs.get("jets"),
        "channels": _channel_table(channel_roles(cfg.store, sattrs["channels"]), plan.groups, weights),
        "cutflow": sattrs.get("cutflow", {}),
        "scaler": scaler,
        "inputs": sattrs.get("files", []),
        "skipped": sattrs.get("skipped", []),
        "contamination": plan.contamination,
        "ingest": {k: sattrs.get(k) for k in ("config", "code_version", "summary", "stage")},
        "stage": mix_record(cfg, sattrs),
        "config": cfg.persisted(),
        "code_version": __version__,
        "mix": {
            "fingerprint": plan.fingerprint, "layout": True, "seed": cfg.store.seed,
            "chunk_len": cfg.store.chunk_len, "compressor": cfg.store.compressor.model_dump(mode="json"),
            "form": cfg.store.form,
            "quota_rule": "megaset.storage.quotas.chunk_quotas",
        },
        "complete": True,
    })


def _channel_table(channels: list[dict], groups: list[GroupPlan], weights: Mapping[str, np.ndarray]) -> list[dict]:
    out = []
    for c in channels:
        events, sums = {}, {}
        for g in groups:
            if c["id"] in g.channel_ids:
                j = g.channel_ids.index(c["id"])
                events[g.name] = g.counts[j]
                sums[g.name] = float(weights[g.name][j])
        out.append({"id": c["id"], "name": c["name"], "is_signal": bool(c.get("signal")),
                    "is_data": bool(c.get("data")), "events": events, "sum_weights": sums})
    return out
