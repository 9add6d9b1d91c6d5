"""``score``: the reconstruction error of a trained model for every event of a store.

One Dask task per run of consecutive chunks of a group (``train``, ``val``, ``test``,
``signal/<name>``, ``data``), a few runs per worker thread. A task carries the checkpoint's
path and digest, never the model: a worker process loads the checkpoint once
(``torch.load(weights_only=True)``, no code) and keeps it for every chunk it scores, with one
torch thread per task on a CPU worker. One chunk of the score columns at a time (as many of
the group's chunks as hold 16,384 events: :data:`megaset.storage.store.ADDED_CHUNK_EVENTS`),
reading the next while the model runs, the task moves their RMM rows to the scoring device,
scales them there with the scaling saved in the checkpoint (built by the trainer from the
store's train statistics, so events are scaled exactly as in training), runs the model and
writes, chunk-aligned:

``score/<model>`` [N] float32
    per-event mean squared error over all features (``Autoencoder.reconstruction_error``);
``score/<model>.<block>`` [N] float32, with ``scoring.blocks``
    the mean squared error over one block of the n x n matrix (:func:`megaset.storage.layout.block_masks`);
    not for the models that reconstruct no rows (``deep-svdd``, ``ae-ensemble``, ``flow``): their summary
    says ``blocks: []``.

Where (``scoring.device``): a cluster whose workers declare the Dask resource ``GPU`` scores on
them, every task holding ``{"GPU": 1}`` (one chunk per GPU at a time, one model per worker and
GPU, ``scoring.gpu_batch_size`` events per forward pass); a cluster without scores on its CPU
workers, which never open a CUDA context. Without a cluster, the chunks are scored in this
process, on its GPU when torch sees one.

Exactly once: chunk ``i`` of every score column is written by the task of the run holding it
only (runs hold whole chunks of the columns), whole, with the same bytes on every attempt, so a
task retried after its worker died rewrites its own chunks. The total column is written last,
chunk by chunk: a chunk whose total is stored is finished, and a retry or a rerun skips it
(resumable scoring). The checkpoint's digest is recorded with the columns; a rerun with another
checkpoint (a retrained model) starts the columns afresh.

>>> summary = score(cfg, client)                 # doctest: +SKIP
>>> summary["column"], summary["resumed"]        # doctest: +SKIP
('score/ae-shallow', 0)
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.config import Config
from megaset.errors import CheckpointError, ConfigError
from megaset.storage.layout import BLOCKS, block_masks, matrix_side
from megaset.storage.scores import score_column
from megaset.storage.tasks import map_chunks

if TYPE_CHECKING:
    import torch
    from distributed import Client

    from megaset.storage.store import Store, StoreGroup
    from megaset.training.models import Autoencoder
    from megaset.training.scaling import DeviceScaling

__all__ = ["score", "reconstruction_errors", "checkpoint_path", "latent_column", "scoring_device", "score_record",
           "scored_record", "checkpoint_digest", "chunk_runs", "run_name"]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def checkpoint_path(cfg: Config, model: str) -> Path:
    """The best checkpoint the trainer writes for ``model``: ``<training.output>/<model>/best.pt``."""
    from megaset.training.loop import output_paths

    # output_paths only reads `output` and `model`; a label such as "ae-no-ttbar" is a folder too.
    return output_paths(cfg.training.model_copy(update={"model": model}))["best"]


def reconstruction_errors(
    model: Autoencoder, x: np.ndarray | torch.Tensor, *, blocks: bool = False, batch_size: int = 65_536,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Per-event errors of scaled inputs ``x [N, F]``: ``total`` and, with ``blocks``, each block.

    ``x`` is a numpy array or a tensor, on the host or already on ``device`` (the model's);
    ``total`` is the model's ``reconstruction_error`` (for the autoencoders of RMMs and jet
    images, the mean squared error over features of the deterministic reconstruction); a
    block's error is the mean over its cells.

    Raises
    ------
    ConfigError
        ``blocks`` for a model that reconstructs no rows (Deep SVDD, an ensemble, a flow).
    """
    import torch

    x = torch.as_tensor(x)
    masks = {}
    if blocks:
        masks = {name: torch.from_numpy(idx).to(device) for name, idx in block_masks(x.shape[1]).items()}
    out = {name: np.empty(len(x), dtype=np.float32) for name in ("total", *masks)}
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
            reconstruction = model.reconstruct(batch)
            if masks and reconstruction.shape != batch.shape:
                msg = (f"per-block errors need a reconstruction of the rows, but {type(model).__name__} returns "
                       f"{tuple(reconstruction.shape)} for rows {tuple(batch.shape)}; score it without blocks "
                       "(scoring.blocks: false)")
                raise ConfigError(msg)
            stop = start + len(batch)
            out["total"][start:stop] = model.anomaly_score(reconstruction, batch).cpu().numpy()
            squared = (reconstruction - batch) ** 2 if masks else None
            for name, idx in masks.items():
                out[name][start:stop] = torch.mean(squared[:, idx], dim=1).cpu().numpy()
    return out


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file's bytes: which weights made a score column."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_LOCK = threading.Lock()
#: Scoring tasks per worker thread on a cluster.
_RUNS_PER_THREAD = 4


def _here(kind: str) -> torch.device:
    """The device of this process that ``kind`` (``cpu`` or ``cuda``) names.

    Local GPU workers see every GPU of the machine and are named 0, 1, ...: worker i takes GPU
    i (modulo the count), so that they do not all load their models onto the first one. A
    worker of a batch system or a pod sees its own GPUs only, and takes the first.
    """
    import torch

    if kind == "cpu":
        return torch.device("cpu")
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not in a Dask worker
        name = 0
    index = name if isinstance(name, int) else 0
    return torch.device("cuda", index % max(torch.cuda.device_count(), 1))


@functools.lru_cache(maxsize=2)
def _cached_model(checkpoint: str, digest: str, kind: str) -> tuple[Autoencoder, DeviceScaling, torch.device]:
    """The model of a checkpoint and its scaling on this process's ``kind`` of device, loaded
    once per worker process (keyed by the checkpoint's digest)."""
    from megaset.training.checkpoint import load_model

    device = _here(kind)
    model, scaling, _ = load_model(checkpoint, map_location=device)
    return model, scaling.on(device), device


def _model(checkpoint: str, digest: str, kind: str) -> tuple[Autoencoder, DeviceScaling, torch.device]:
    # Threads of one worker share the cache; the lock keeps two of them from loading it twice.
    with _LOCK:
        return _cached_model(checkpoint, digest, kind)


def scoring_device(setting: str, client: Client | None, gpus_per_worker: int = 0) -> str:
    """``cpu`` or ``cuda``: where ``scoring.device`` = ``setting`` scores, with ``client`` or in this process.

    On a cluster, GPUs are the workers declaring the Dask resource ``GPU`` (or
    ``cluster.gpus_per_worker`` > 0, for an adaptive cluster with no worker yet); in one
    process, the devices torch sees.

    Raises
    ------
    ConfigError
        ``cuda`` is asked for where there is no GPU.
    """
    import torch

    if setting == "cpu":
        return "cpu"
    if client is None:
        found = torch.cuda.is_available()
        where = "torch sees no CUDA device in this process (torch.cuda.is_available() is False)"
    else:
        from megaset.training.ddp import worker_resources

        workers = worker_resources(client)
        found = gpus_per_worker > 0 or any(r.get("GPU", 0) >= 1 for r in workers.values())
        where = (f"none of the cluster's {len(workers)} workers declares the Dask resource GPU "
                 "(cluster.gpus_per_worker: 0)")
    if setting == "auto":
        return "cuda" if found else "cpu"
    if not found:
        msg = (
            f"scoring.device='cuda', but {where}; set scoring.device: auto or cpu, or run where "
            "there are GPUs (cluster.gpus_per_worker > 0 on a cluster)"
        )
        raise ConfigError(msg)
    return "cuda"


def latent_column(model: str) -> str:
    """Where scoring writes a jet model's latent representation: ``latent/<model>``."""
    return f"latent/{model}"


def _torch_threads(device: torch.device) -> None:
    """One torch thread per task on a CPU Dask worker: the worker runs as many tasks at once as
    it has threads, which are the cores it was given. Dask's nanny sets ``OMP_NUM_THREADS=1``
    for the same reason; a worker started without one would otherwise give every task a thread
    per core of the machine, and the tasks would take the cores from each other."""
    import torch

    if device.type != "cpu":
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):  # not in a Dask worker: torch's own default
        return
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _score_chunks(group: StoreGroup, chunks: range, values: np.ndarray, *, model: str, net: Autoencoder,
                  scaling: DeviceScaling, here: torch.device, blocks: bool, events_per_pass: int,
                  latent: bool) -> int:
    """Score the chunks ``chunks`` of ``group`` (one chunk of its score columns) whose input
    column holds ``values``; their events."""
    import torch

    rows = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    if not rows.flags.writeable or not rows.flags.c_contiguous:
        rows = np.array(rows, order="C")
    x = torch.from_numpy(rows)
    if here.type == "cuda":
        x = x.pin_memory()
    # The raw rows cross to the device once, a whole chunk, and are scaled there (on the CPU, in
    # place in the chunk as decoded).
    x = scaling(x.to(here, non_blocking=True))
    errors = reconstruction_errors(net, x, blocks=blocks, batch_size=events_per_pass, device=here)
    for name in BLOCKS if blocks else ():
        group.write_chunks(score_column(model, name), chunks, errors[name])
    if latent:
        with torch.no_grad():
            group.write_chunks(latent_column(model), chunks, net.encode(x).cpu().numpy())
    # Last: a stored total marks the chunks finished.
    group.write_chunks(score_column(model), chunks, errors["total"])
    return len(rows)


def _score_run(task: tuple[StoreGroup, range], *, model: str, checkpoint: str, digest: str, device: str,
               blocks: bool, events_per_pass: int, column: str = "rmm", latent: bool = False) -> tuple[int, int]:
    """Score the chunks ``indices`` of ``group`` (``task``) on this process's ``device`` (``cpu``
    or ``cuda``), one chunk of the score columns at a time, each one's read overlapping the
    forward pass of the one before; ``(events scored, chunks of the group already done)``."""
    from concurrent.futures import ThreadPoolExecutor

    group, indices = task
    total = score_column(model)
    todo = [chunks for chunks in group.column_chunks(total, indices) if not group.chunk_written(total, chunks[0])]
    if not todo:
        return 0, len(indices)
    net, scaling, here = _model(checkpoint, digest, device)
    _torch_threads(here)
    settings = {"model": model, "net": net, "scaling": scaling, "here": here, "blocks": blocks,
                "events_per_pass": events_per_pass, "latent": latent}
    events = 0
    # One read ahead: zarr's reads and decodes, and torch's forward pass, leave the GIL.
    with ThreadPoolExecutor(1, thread_name_prefix="megaset-score-read") as reader:
        ahead = reader.submit(group.read_chunks, todo[0], (column,))
        for k, chunks in enumerate(todo):
            values = ahead.result()[column]
            if k + 1 < len(todo):
                ahead = reader.submit(group.read_chunks, todo[k + 1], (column,))
            events += _score_chunks(group, chunks, values, **settings)
    return events, len(indices) - sum(map(len, todo))


def run_name(group: StoreGroup, run: range) -> str:
    """``test-3`` for one chunk, ``test-3..9`` for a run."""
    return f"{group.name}-{run[0]}" + (f"..{run[-1]}" if len(run) > 1 else "")


def chunk_runs(groups: list[StoreGroup], client: Client | None, column: str) -> list[tuple[StoreGroup, range]]:
    """Every group's chunks in runs of consecutive chunks, one task each: a few runs per worker
    thread of ``client`` (more where groups are small: a run stays in one group), one run per
    group without a client. A task's fixed costs (its key on the scheduler, the group's arrays
    opened on the worker) are paid per run, and the runs still balance the workers. A run holds
    whole chunks of ``column``, the column its task writes (:meth:`StoreGroup.column_chunks`).

    The runs come largest first: Dask starts tasks in the order they are submitted, so the
    short ones (a small group's single chunk, a group's last run) fill in at the end, and the
    workers finish together instead of one waiting on a large run started last."""
    threads = sum(client.nthreads().values()) if client is not None else 0
    parts = _RUNS_PER_THREAD * threads if threads else 1
    per = max(1, -(-sum(g.n_chunks for g in groups) // parts))
    runs = []
    for g in groups:
        span = g.column_span(column)
        step = max(1, round(per / span)) * span
        runs += [(g, range(first, min(first + step, g.n_chunks))) for first in range(0, g.n_chunks, step)]
    return sorted(runs, key=lambda task: -_events(*task))


def _events(group: StoreGroup, run: range) -> int:
    return group.chunk_slice(run[-1]).stop - group.chunk_slice(run[0]).start


def _check_settings(path: Path, ckpt: Mapping[str, Any], store: Store) -> None:
    """Refuse a checkpoint trained on a store of another kind or under other RMM settings (the
    same number of features can then mean other quantities)."""
    for key, theirs, ours in (("kind", ckpt.get("kind"), store.kind), ("rmm", ckpt.get("rmm"), store.attrs.get("rmm"))):
        if theirs is None or theirs == ours:
            continue  # a checkpoint of an older megaset records neither: the feature names decide
        if isinstance(theirs, dict) and isinstance(ours, dict):
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            found = "; ".join(f"rmm.{k}: {theirs.get(k)!r} there, {ours.get(k)!r} in the store" for k in differ[:3])
        else:
            found = f"{key}: {theirs!r} there, {ours!r} in the store"
        msg = (
            f"checkpoint {str(path)!r} was trained under other settings than store {store.url!r} was built "
            f"with ({found}); score a store built with the checkpoint's settings, or train on this one"
        )
        raise CheckpointError(msg)


def _check_checkpoint(path: Path, store: Store) -> tuple[str, int | None, str | None, str]:
    """The column the checkpoint's model reads, its latent size if it has an encoder, its
    stage fingerprint (:mod:`megaset.provenance`) if it records one, and the model's name."""
    from megaset.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    _check_settings(path, ckpt, store)
    trained = (ckpt.get("stage") or {}).get("fingerprint")
    column = ckpt.get("input_column", "rmm")
    saved = list(ckpt["feature_names"])
    if column == store.feature_column:
        features = store.feature_names
    else:
        shape = store.group(store.group_names()[0]).column_info(column)["shape"][1:]
        features = [f"{column}_{k}" for k in range(int(np.prod(shape, dtype=np.int64)))]
    latent = ckpt["architecture"].get("latent") if ckpt["model"] in ("jet-dense", "jet-cnn", "graph-ae") else None
    if saved == features:
        return column, latent, trained, ckpt["model"]
    if len(saved) != len(features):
        found = f"{len(saved)} features there, {len(features)} in the store"
    else:
        k = next(i for i, (a, b) in enumerate(zip(saved, features, strict=True)) if a != b)
        found = f"feature {k} is {saved[k]!r} there, {features[k]!r} in the store"
    msg = (
        f"checkpoint {str(path)!r} was not trained on the features of store {store.url!r}: found {found}; "
        "score a store built with the same rmm settings, or train on this one"
    )
    raise CheckpointError(msg)


def score_record(cfg: Config, trained: str | None, digest: str | None) -> dict[str, Any]:
    """The stage record (:mod:`megaset.provenance`) of scoring with the checkpoint whose own
    record has the fingerprint ``trained`` and whose bytes the ``digest``: the training's
    fingerprint is the same for its every epoch, the digest tells the weights apart."""
    from megaset.provenance import record

    return record("score", cfg, upstream={"train": trained}, inputs={"checkpoint": digest})


def scored_record(store: Store, model: str) -> tuple[dict[str, Any] | None, bool]:
    """The stage record of the ``score/<model>`` columns of ``store`` and whether every group's
    are finished with that record; ``(None, False)`` when no group has them, ``{}`` for a record
    when they were scored by an older megaset."""
    column = score_column(model)
    entries = []
    for name in store.group_names():
        group = store.group(name)
        entries.append(group.column_attrs(column) if group.has_column(column) else {})
    if not any(entries):
        return None, False
    found: dict[str, Any] = next((e["stage"] for e in entries if e.get("stage")), {})  # {}: scored by an older megaset
    done = bool(found) and all(e.get("complete") and (e.get("stage") or {}).get("fingerprint") == found["fingerprint"]
               for e in entries)
    return found, done


def _prepare(group: StoreGroup, model: str, entry: Mapping[str, Any], overwrite: bool) -> bool:
    """Create the score columns of ``group``; whether they start empty (new checkpoint)."""
    total = score_column(model)
    old = group.column_attrs(total) if group.has_column(total) else None
    # The same file under another path is the same model: compare content and layout only.
    fresh = overwrite or old is None or any(old.get(k) != entry[k] for k in ("digest", "blocks"))
    names = [score_column(model, b) for b in BLOCKS] if entry["blocks"] else []
    for name in [*names, total]:
        group.create_column(name, np.float32, overwrite=fresh)
    group.set_column_attrs(total, entry)
    return fresh and old is not None


def score(
    cfg: Config, client: Client | None = None, *, model: str | None = None, checkpoint: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
) -> dict[str, Any]:
    """Write the reconstruction error of a trained model for every event of ``cfg.store.url``.

    Parameters
    ----------
    cfg
        The configuration: store URL, ``training.output`` (where the checkpoint is found),
        ``scoring`` (per-block errors, batch size, retries).
    client
        A Dask client: one task per chunk. ``None``: the chunks one after the other here.
    model
        The name of the score columns, ``score/<model>``; default ``training.model``. Letters,
        digits, ``-`` and ``_``.
    checkpoint
        The checkpoint to score with; default ``<training.output>/<model>/best.pt``. It must be
        readable at the same path on every worker (a shared filesystem on a cluster).
    progress
        Called as ``progress(done, total)`` in chunks, finished chunks included.
    overwrite
        Score every chunk again even if the columns hold scores of the same checkpoint.

    Returns
    -------
    dict
        ``model, column, device`` (``cpu`` or ``cuda``), ``checkpoint, blocks`` (block names or
        ``[]``), ``groups`` (per group: ``events``, ``chunks``), ``chunks``, ``resumed`` (chunks already scored),
        ``rescored`` (columns emptied because the checkpoint changed), ``events_scored``,
        ``seconds``, ``events_per_s``.

    Raises
    ------
    CheckpointError
        The checkpoint is missing, holds more than data, or was trained on other features.
    ConfigError
        ``scoring.device: cuda`` where there is no GPU (see :func:`scoring_device`).
    StoreError
        The store is missing or incomplete, or its filesystem refuses the writes (full,
        read-only, no permission); scored chunks are kept for a rerun.
    """
    from megaset.storage.backend import writing
    from megaset.storage.store import open_store

    label = model or cfg.training.model
    if not _LABEL.match(label):
        msg = f"model name {label!r} cannot name a score column: use letters, digits, '-' and '_'"
        raise ConfigError(msg)
    path = Path(checkpoint) if checkpoint is not None else checkpoint_path(cfg, label)
    device = scoring_device(cfg.scoring.device, client, cfg.cluster.gpus_per_worker)
    t0 = time.perf_counter()
    store = open_store(cfg.store.url)
    from megaset.training.registry import NOT_RECONSTRUCTING

    column, latent, trained, trained_model = _check_checkpoint(path, store)
    n_features = len(store.feature_names)
    blocks = (cfg.scoring.blocks and store.kind == "events" and matrix_side(n_features) is not None
              and trained_model not in NOT_RECONSTRUCTING)
    digest = checkpoint_digest(path)
    entry = {"checkpoint": str(path), "digest": digest, "blocks": blocks,
             "stage": score_record(cfg, trained, digest), "config": cfg.resolved(), "complete": False}
    groups = [store.group(name) for name in store.group_names()]
    n_chunks = sum(g.n_chunks for g in groups)
    advance = (lambda n: progress(n, n_chunks)) if progress else (lambda n: None)
    kwargs = {"model": label, "checkpoint": str(path), "digest": digest, "blocks": blocks, "device": device,
              # Not "batch_size": client.map has a keyword of that name.
              "events_per_pass": cfg.scoring.gpu_batch_size if device == "cuda" else cfg.scoring.batch_size,
              "column": column, "latent": latent is not None}
    with writing(store.url, "megaset score"):
        rescored = [g.name for g in groups if _prepare(g, label, entry, overwrite)]
        for g in groups if latent is not None else ():
            g.create_column(latent_column(label), np.float32, (latent,), overwrite=overwrite)
        tasks = chunk_runs(groups, client, score_column(label))
        advance(0)
        results = map_chunks(client, _score_run, tasks, names=[run_name(g, run) for g, run in tasks],
                             stage="megaset score", retries=cfg.scoring.retries, progress=advance,
                             sizes=[len(run) for _, run in tasks],
                             resources={"GPU": 1} if device == "cuda" else None, **kwargs)
        for g in groups:
            g.set_column_attrs(score_column(label), {**entry, "complete": True})
    seconds = time.perf_counter() - t0
    scored = sum(n for n, _ in results)
    return {
        "model": label,
        "column": score_column(label),
        "device": device,
        "checkpoint": str(path),
        "blocks": list(BLOCKS) if blocks else [],
        "groups": {g.name: {"events": g.n_events, "chunks": g.n_chunks} for g in groups},
        "chunks": n_chunks,
        "resumed": sum(done for _, done in results),
        "rescored": rescored,
        "events_scored": scored,
        "seconds": seconds,
        "events_per_s": scored / seconds if seconds > 0 else None,
    }
