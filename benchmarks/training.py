"""Training throughput and memory, side by side in one run on the same store.

(a) the trainer's epoch fed by the streaming loader vs by in-memory tensors, in turn on one
    model (samples/s of the training steps; target: streaming >= 0.95 x in-memory), with torch
    on every core and on all but one;
(b) the loader alone ("fast consumer", no model step) with 1 and 2 reader threads, the bytes
    read per event against the uncompressed size, and the bytes per event the loader moves to
    its device (the features' non-zero cells and the weight) against the dense rows;
(c) the thesis' megaset loop (10 megasets as .npy, each loaded whole, fitted with validation
    every epoch as Keras' fit did, weights saved and reloaded into a new model) vs the streaming
    trainer at equal samples seen: wall time, peak RSS, final val loss; and the megasets'
    fast-consumer delivery rate;
(d) 1 DDP rank vs 2 DDP ranks on a Dask LocalCluster (gloo).
Every measurement runs in a fresh process, so that its peak RSS is its own. Rates are the best
epoch of several (as timeit keeps the best run): other load on the machine only slows runs down.

    python benchmarks/training.py                 # 6M simulated events, thesis batch size 8192
    python benchmarks/training.py --small         # a small store, for a quick check
    python benchmarks/training.py --store URL     # an existing store
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

N_MEGASETS = 10


def isolated(fn, *args) -> tuple[Any, float]:
    """``fn(*args)`` in a fresh (spawned) process: its result and peak RSS in MiB."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn, *args) -> tuple[Any, float]:
    result = fn(*args)
    return result, peak_rss_mib()


def peak_rss_mib(reset: bool = False) -> float:
    """This process's peak resident memory in MiB (``VmHWM``, Linux); ``reset`` then starts a
    new peak from the current resident memory.

    Not ``getrusage``'s ``ru_maxrss``: it survives ``exec``, so a spawned process would report at
    least the resident memory of the process that spawned it.
    """
    with open("/proc/self/status") as status:
        peak = next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")), None)
    if peak is None:
        msg = "no VmHWM line in /proc/self/status: peak memory is measured on Linux only"
        raise RuntimeError(msg)
    if reset:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the kernel's "reset the peak RSS" command
    return peak


def _build_store(work: Path, events: int, workers: int, chunk_len: int) -> str:
    from distributed import Client, LocalCluster

    from megaset.config import Config
    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import simulate
    from megaset.storage.mix import mix

    cfg = Config.model_validate({
        "simulate": {"output": str(work / "ntuples"), "events": events, "signal_events": 0,
                     "events_per_file": 250_000},
        "store": {"url": str(work / "store.zarr"), "chunk_len": chunk_len},
        "cluster": {"workers": workers},
    })
    simulate(cfg.simulate, tree=cfg.inputs.tree)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        ingest(cfg, client)
        mix(cfg, client)
    return cfg.store.url


def _config(url: str, out: Path, args: argparse.Namespace, **training: Any):
    from megaset.config import Config

    return Config.model_validate({"store": {"url": url}, "training": {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "output": str(out), "early_stopping": {"patience": 1000}, **training}})


def _group_arrays(cfg, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole store group in memory: scaled features and raw weights."""
    from megaset.storage.store import open_store
    from megaset.training.scaling import Scaling

    store = open_store(cfg.store.url)
    scaling = Scaling.from_scaler(store.scaler, cfg.training.scaling)
    chunks = [c for _, c in store.group(name).iter_chunks()]
    return np.concatenate([scaling(c["rmm"]) for c in chunks]), np.concatenate([c["weight"] for c in chunks])


def _norm(cfg) -> float:
    from megaset.storage.store import open_store
    from megaset.training.loop import weight_norm

    return weight_norm(open_store(cfg.store.url).group("train"), cfg.training)


def _shuffled(x, w, size: int):
    """In-memory batches, reshuffled every pass: what a tensor-dataset loader yields."""
    import torch

    for idx in torch.randperm(len(w)).split(size):
        yield x[idx], w[idx]


def _fit_tensors(cfg, x, w, norm: float, val: list, model=None):
    """The trainer's epochs on tensors held in memory (same step, loss and optimizer), with a
    validation pass after each epoch as the trainer and Keras' fit do."""
    import torch

    from megaset.training.loop import evaluate, train_epoch
    from megaset.training.registry import build_model

    tc = cfg.training
    if model is None:
        torch.manual_seed(tc.seed)
        model = build_model(tc.model, x.shape[1], tc.architecture)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)
    val_loss = None
    for _ in range(tc.epochs):
        train_epoch(model, optimizer, _shuffled(x, w, tc.batch_size), tc, norm, torch.device("cpu"))
        val_loss = evaluate(model, val, tc, torch.device("cpu"))["loss"]
    return model, val_loss


def alternate(cfg, torch_threads: int, rounds: int, steps: int | None = None) -> dict[str, float]:
    """Best epoch rate of the same step fed by the streaming loader or by in-memory tensors.

    Both run in one process on one model, epoch after epoch in turn, so that load from other
    processes hits both alike; the best epoch of each is kept (as timeit keeps the best run).
    ``steps`` cuts every epoch to its first batches, to keep the measurement short on a large store.
    The loader keeps the pieces it reads (``training.loader.cache_mib``) as the trainer's does:
    ``stream_first`` is the rate of its first epoch, every piece read from the store.
    """
    import torch

    from megaset.storage.store import open_store
    from megaset.training.loop import datasets, train_epoch
    from megaset.training.registry import build_model
    from megaset.training.scaling import Scaling

    torch.set_num_threads(torch_threads)
    tc = cfg.training
    store = open_store(cfg.store.url)
    stream = datasets(store, tc, "rmm", Scaling.from_scaler(store.scaler, tc.scaling))[0]  # the trainer's loader
    x, w = (torch.from_numpy(a) for a in _group_arrays(cfg, "train"))
    norm, cpu = _norm(cfg), torch.device("cpu")
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, x.shape[1], tc.architecture)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)
    best = {"stream": 0.0, "memory": 0.0, "stream_first": 0.0}
    for i in range(rounds + 1):
        stream.set_epoch(i)  # from its first batch, after a round cut short by ``steps``
        for kind, source in (("stream", stream), ("memory", _shuffled(x, w, tc.batch_size))):
            start = time.perf_counter()
            n = train_epoch(model, optimizer, islice(source, steps), tc, norm, cpu)[1]
            rate = n / (time.perf_counter() - start)
            if i:  # the first round warms caches and allocators (and the loader's cache)
                best[kind] = max(best[kind], rate)
            elif kind == "stream":
                best["stream_first"] = rate
    return best


def _stream_trainer(cfg) -> dict[str, Any]:
    from megaset.training.trainer import train

    start = time.perf_counter()
    summary = train(cfg)
    return {"wall_s": time.perf_counter() - start, "val_loss": summary["history"][-1]["val_loss"]}


def _batches(x: np.ndarray, w: np.ndarray, size: int) -> list:
    import torch

    return [(torch.from_numpy(x[i : i + size]), torch.from_numpy(w[i : i + size])) for i in range(0, len(w), size)]


def _in_memory(cfg) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    x, w = _group_arrays(cfg, "train")
    val = _batches(*_group_arrays(cfg, "val"), cfg.training.batch_size)
    _, val_loss = _fit_tensors(cfg, torch.from_numpy(x), torch.from_numpy(w), _norm(cfg), val)
    return {"wall_s": time.perf_counter() - start, "val_loss": val_loss}


def _loader_alone(cfg, threads: int) -> float:
    from megaset.storage.store import open_store
    from megaset.training.loader import ChunkDataset
    from megaset.training.scaling import Scaling

    store = open_store(cfg.store.url)
    tl = cfg.training.loader
    ds = ChunkDataset(store.group("train"), batch_size=cfg.training.batch_size, threads=threads,
                      read_ahead=max(tl.read_ahead, threads), shuffle_chunks=tl.shuffle_chunks,
                      scaling=Scaling.from_scaler(store.scaler, cfg.training.scaling))
    start = time.perf_counter()
    n = sum(len(w) for _, w in ds)
    return n / (time.perf_counter() - start)


def _export_megasets(cfg, folder: Path) -> None:
    """The thesis' preparation: train split in 10 megasets and val, saved as scaled .npy arrays."""
    from megaset.storage.store import open_store
    from megaset.training.scaling import Scaling

    store = open_store(cfg.store.url)
    scaling = Scaling.from_scaler(store.scaler, cfg.training.scaling)
    group = store.group("train")
    for m, indices in enumerate(np.array_split(np.arange(group.n_chunks), N_MEGASETS)):
        chunks = [c for _, c in group.iter_chunks(indices=indices)]
        np.save(folder / f"megaset_{m}_x.npy", np.concatenate([scaling(c["rmm"]) for c in chunks]))
        np.save(folder / f"megaset_{m}_w.npy", np.concatenate([c["weight"] for c in chunks]))
    x, w = _group_arrays(cfg, "val")
    np.save(folder / "val_x.npy", x)
    np.save(folder / "val_w.npy", w)


def _megaset_loop(cfg, folder: Path) -> dict[str, Any]:
    """The thesis loop (its fig. 3.17): per megaset a new model, the previous weights reloaded,
    ``fit`` with validation data every epoch, the weights saved."""
    import torch

    from megaset.training.registry import build_model

    start = time.perf_counter()
    norm = _norm(cfg)
    val = _batches(np.load(folder / "val_x.npy"), np.load(folder / "val_w.npy"), cfg.training.batch_size)
    model, val_loss = None, None
    for m in range(N_MEGASETS):
        x = torch.from_numpy(np.load(folder / f"megaset_{m}_x.npy"))
        w = torch.from_numpy(np.load(folder / f"megaset_{m}_w.npy"))
        model = build_model(cfg.training.model, x.shape[1], cfg.training.architecture)
        if m:
            model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        model, val_loss = _fit_tensors(cfg, x, w, norm, val, model)
        torch.save(model.state_dict(), folder / "weights.pt")
        del x, w
    return {"wall_s": time.perf_counter() - start, "val_loss": val_loss}


def _megaset_delivery(folder: Path, batch_size: int) -> float:
    """Fast consumer of the megasets: load each whole, cut it into shuffled batches."""
    n, start = 0, time.perf_counter()
    for m in range(N_MEGASETS):
        x = np.load(folder / f"megaset_{m}_x.npy")
        w = np.load(folder / f"megaset_{m}_w.npy")
        perm = np.random.default_rng(m).permutation(len(w))
        for i in range(0, len(w), batch_size):
            idx = perm[i : i + batch_size]
            batch = (x[idx], w[idx])  # the copy a training step would get
            n += len(batch[1])
    return n / (time.perf_counter() - start)


def _ddp(cfg, world_size: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from megaset.training.trainer import train

    cfg = cfg.replace(training={"ddp": {"world_size": world_size}})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        summary = train(cfg, client)
        return {"wall_s": time.perf_counter() - start, "history": summary["history"]}


def _moved_bytes(url: str) -> float:
    """Bytes per train event the loader hands to its device: the non-zero cells of the features
    (positions and values) and the weight, as its reader threads read them."""
    from megaset.storage.store import open_store

    group = open_store(url).group("train")
    chunks = (group.read_chunk(i, ("rmm", "weight"), compact=("rmm",)) for i in range(group.n_chunks))
    return sum(c["rmm"].nbytes + 4 * len(c["weight"]) for c in chunks) / group.n_events


def _stored_bytes(url: str, arrays: list[str]) -> int:
    return sum(p.stat().st_size for a in arrays for p in Path(url, "train", a).rglob("*") if p.is_file())


def _memory_gib(n: int, f: int) -> float:
    """Memory of a train group held whole as float32, with the copy a concatenation makes."""
    return 2 * n * (f + 1) * 4 / 2**30


def _versus_megasets(cfg, work: Path, n: int, f: int, args: argparse.Namespace) -> dict[str, Any]:
    """(c): the streaming trainer, in-memory tensors (when they fit in half the memory) and the
    megaset loop, each in a fresh process, at equal samples seen."""
    stream, rss_stream = isolated(_stream_trainer, cfg)
    seen = n * args.epochs
    out = {"streaming": {**stream, "peak_rss_mib": rss_stream, "samples_seen": seen}}
    machine_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    if _memory_gib(n, f) < machine_gib / 2:
        memory, rss_memory = isolated(_in_memory, cfg)
        out["in_memory"] = {**memory, "peak_rss_mib": rss_memory, "samples_seen": seen}
    megasets = work / "megasets"
    megasets.mkdir(exist_ok=True)
    isolated(_export_megasets, cfg, megasets)
    loop, rss_loop = isolated(_megaset_loop, cfg, megasets)
    delivery = isolated(_megaset_delivery, megasets, args.batch_size)[0]
    out["megaset_loop"] = {**loop, "peak_rss_mib": rss_loop, "samples_seen": seen,
                           "delivery_samples_per_s": delivery}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a small store and batch size, for a quick check")
    parser.add_argument("--events", type=int, default=None, help="background events to simulate")
    parser.add_argument("--store", default=None, help="use this store instead of simulating one")
    parser.add_argument("--model", default="ae-shallow")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--chunk-len", type=int, default=None, help="events per store chunk")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers for ingest and DDP")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (a), runs of (b); the best is kept")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--sections", default="abcd", help="which of (a) (b) (c) (d) to run, e.g. 'c'")
    args = parser.parse_args()
    # About 2 % of the simulated events pass the 2-lepton selection into the train group.
    args.events = args.events or (600_000 if args.small else 6_000_000)
    # (a) and (d) keep the best epoch after the first; (b) and (c) take any number.
    args.epochs = max(args.epochs or 3, 2 if set("ad") & set(args.sections) else 1)
    args.batch_size = args.batch_size or (1024 if args.small else 8192)
    args.chunk_len = args.chunk_len or (1024 if args.small else 8192)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    url = args.store or _build_store(work, args.events, args.workers, args.chunk_len)
    if not args.store:
        print(f"built the store from {args.events:,} simulated events in {time.perf_counter() - t0:.0f} s")

    from megaset.storage.store import open_store

    store = open_store(url)
    train_group = store.group("train")
    n, f = train_group.n_events, len(store.feature_names)
    if train_group.n_chunks < N_MEGASETS:
        msg = (f"the train group has {train_group.n_chunks} chunks, fewer than {N_MEGASETS} "
               "megasets: simulate more events or lower --chunk-len")
        raise SystemExit(msg)
    print(f"store {url}: train {n:,} events x {f} features in {train_group.n_chunks} chunks; "
          f"model {args.model}, batch {args.batch_size}, {args.epochs} epochs, {os.cpu_count()} cores\n")
    cfg = _config(url, work / "models", args)
    out: dict[str, Any] = {"events_train": n, "features": f, "batch_size": args.batch_size, "epochs": args.epochs}

    if "a" in args.sections:
        # torch on every core, then on all but one, which is left to the reader threads.
        cores = os.cpu_count() or 1
        out["a"] = {}
        for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
            best = isolated(alternate, cfg, threads, args.repeat)[0]
            out["a"][f"torch_threads_{threads}"] = {**best, "ratio": best["stream"] / best["memory"]}
        for key, r in out["a"].items():
            print(f"(a) training steps, samples/s, {key.replace('_', ' ')}: streaming {r['stream']:>10,.0f}"
                  f"   in memory {r['memory']:>10,.0f}   ratio {r['ratio']:.3f} (target >= 0.95); "
                  f"streaming's first epoch {r['stream_first']:,.0f}")

    loader = {}
    if "b" in args.sections:
        loader = {t: max(isolated(_loader_alone, cfg, t)[0] for _ in range(args.repeat)) for t in (1, 2)}
        stored = _stored_bytes(url, ["rmm", "weight"]) / n if not url.startswith(("s3:", "gs:")) else float("nan")
        moved = _moved_bytes(url)
        out["b"] = {"loader_samples_per_s": loader, "bytes_per_event_read": stored,
                    "bytes_per_event_raw": 4 * (f + 1), "bytes_per_event_moved": moved}
        print(f"(b) loader alone, samples/s        1 thread  {loader[1]:>12,.0f}   2 threads {loader[2]:>12,.0f}")
        print(f"    bytes per event read           {stored:>10,.1f}   uncompressed {4 * (f + 1):,}   "
              f"ratio {4 * (f + 1) / stored:.1f}x")
        print(f"    bytes per event moved          {moved:>10,.1f}   dense rows   {4 * (f + 1):,}   "
              f"ratio {4 * (f + 1) / moved:.1f}x")

    if "c" in args.sections:
        out["c"] = _versus_megasets(cfg, work, n, f, args)
        print(f"(c) {'':<29}{'wall s':>10}{'peak RSS MiB':>14}{'val loss':>12}{'val passes':>12}{'delivery/s':>14}")
        for name, key, passes, d in (
            ("megaset loop (10 x .npy)", "megaset_loop", N_MEGASETS * args.epochs,
             out["c"]["megaset_loop"]["delivery_samples_per_s"]),
            ("streaming trainer", "streaming", args.epochs, loader.get(2)),
            ("in-memory tensors", "in_memory", args.epochs, None),
        ):
            r = out["c"].get(key)
            if r is None:
                print(f"    {name:<29}skipped: the train group would need {_memory_gib(n, f):.1f} GiB")
                continue
            shown = f"{d:>14,.0f}" if d else f"{'':>14}"
            print(f"    {name:<29}{r['wall_s']:>10.1f}{r['peak_rss_mib']:>14,.0f}{r['val_loss']:>12.3e}"
                  f"{passes:>12}{shown}")
        ratio = out["c"]["streaming"]["peak_rss_mib"] / out["c"]["megaset_loop"]["peak_rss_mib"]
        print(f"    peak RSS streaming / megaset loop: {ratio:.3f} (target <= 0.1 at >= 10M events)")

    if "d" in args.sections:
        ddp = {w: isolated(_ddp, cfg, w)[0] for w in (1, 2)}
        ddp_rate = {w: max(h["samples_per_s"] for h in r["history"][1:]) for w, r in ddp.items()}
        out["d"] = {"samples_per_s": ddp_rate, "speedup": ddp_rate[2] / ddp_rate[1],
                    "wall_s": {w: r["wall_s"] for w, r in ddp.items()}}
        print(f"(d) DDP on a LocalCluster, samples/s  1 rank {ddp_rate[1]:>12,.0f}   2 ranks {ddp_rate[2]:>12,.0f}"
              f"   speed-up {out['d']['speedup']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
