"""Ingest throughput, side by side in one run on the same simulated files.

(a) uproot reading the branches the schema needs, nothing else;
(b) the RMM kernel alone, on the selected events of the same files, already in memory, in
    the sparse form the ingest stores and as dense rows;
(c) the whole ingest (coffea processor on a Dask LocalCluster: read, select, RMM, staging write);
(d) the staging write alone, for each candidate codec, on the same RMM rows, sparse and dense.
(a) and (c) use the same number of worker processes, so their ratio is like for like.

With ``--remote root|http|s3`` instead: the whole ingest of the same files read locally and
through a server on loopback (XRootD, XRootD's HTTP plug-in, an S3-compatible server), on the
same workers in the same run, and the ratio of the two.

With ``--parts`` instead: the ingest in this process, its CPU time split into its parts (the
file check, coffea's opening of each chunk's tree, the branches read, the mapping onto objects,
the selection, the RMMs, the staging write, the rest), beside uproot's read of the same files.

    python benchmarks/ingest.py --events 2000000 --workers 2
    python benchmarks/ingest.py --events 1000000 --workers 2 --remote root
    python benchmarks/ingest.py --events 4000000 --events-per-file 30000 --chunksize 30000 --parts
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _read_file(path: str, tree: str, branches: list[str]) -> int:
    import uproot

    with uproot.open(path) as f:
        arrays = f[tree].arrays(branches, how=dict)
    return len(next(iter(arrays.values())))


def cluster_cpu(client) -> float:
    """CPU seconds used so far by this process (a LocalCluster's scheduler runs in it) and by
    every worker: unlike wall time, other jobs on the machine leave it comparable."""
    return time.process_time() + sum(client.run(time.process_time).values())


def read_vs_ingest(cfg, client, files: dict[str, list[str]], work: Path,
                   repeat: int = 3) -> tuple[int, float, Any, float, dict[str, float]]:
    """(a) and (c) on the same files and workers: ``(events read, read s, ingest summary, ingest
    s, the least CPU s of each side: {"read", "ingest"})``.

    ``files`` maps each channel to its files. Both sides are first warmed on the first file of
    every channel: the once-per-process costs (imports, the numba kernels of every event kind
    loaded from numba's cache, about 1 s per worker) would otherwise be counted as throughput.
    Then the two run in turn ``repeat`` times and the best time of each is kept (as timeit
    does), so that load from elsewhere on the machine hits both alike; single runs of either
    side spread by up to 30 % here. Each ingest writes a fresh staging area at
    ``cfg.store.staging``, the warm-up one under ``work``.
    """
    from megaset.pipeline.ingest import ingest

    tree, branches = cfg.inputs.tree, cfg.schema.branches()
    firsts = {name: paths[:1] for name, paths in files.items() if paths}
    everything = [f for paths in files.values() for f in paths]
    client.gather(client.map(_read_file, [f for fs in firsts.values() for f in fs], tree=tree, branches=branches,
                             pure=False))
    warm = cfg.replace(inputs={"channels": {name: {"files": fs} for name, fs in firsts.items()}},
                       store={"url": str(work / "warm.zarr")})
    shutil.rmtree(warm.store.staging, ignore_errors=True)
    ingest(warm, client)

    t_read = t_ingest = float("inf")
    cpu = {"read": float("inf"), "ingest": float("inf")}
    for _ in range(repeat):
        c0, t0 = cluster_cpu(client), time.perf_counter()
        n_read = sum(client.gather(client.map(_read_file, everything, tree=tree, branches=branches, pure=False)))
        t_read = min(t_read, time.perf_counter() - t0)
        cpu["read"] = min(cpu["read"], cluster_cpu(client) - c0)
        shutil.rmtree(cfg.store.staging, ignore_errors=True)
        c0, t0 = cluster_cpu(client), time.perf_counter()
        summary = ingest(cfg, client)
        t_ingest = min(t_ingest, time.perf_counter() - t0)
        cpu["ingest"] = min(cpu["ingest"], cluster_cpu(client) - c0)
    return n_read, t_read, summary, t_ingest, cpu


@contextmanager
def served(kind: str, work: Path, write: Callable[[Path], list[str]]) -> Iterator[Callable[[str], str]]:
    """The files ``write(folder)`` writes (it returns their paths) into the folder a loopback server of ``kind`` serves;
    yields the function from such a file's local path to its URL. For ``s3`` the files are
    written under ``work`` and uploaded.

    ``http`` is XRootD's HTTP plug-in, which answers byte ranges as EOS and dCache do over
    https; Python's ``http.server`` is not measured: it ignores ranges, so each file is copied
    whole into a cache of each worker process, and a repeated ingest would read that copy.
    """
    from megaset.loopback import s3_server, xrootd_server

    with ExitStack() as stack:
        if kind == "s3":
            base, folder = stack.enter_context(s3_server("megaset-bench")), work / "served"
        else:
            server = stack.enter_context(xrootd_server())
            base, folder = (server.url if kind == "root" else server.http_url), server.data
        written = write(folder)
        if kind == "s3":
            import s3fs

            fs = s3fs.S3FileSystem()
            for path in written:
                fs.put(path, f"{base}/{Path(path).relative_to(folder)}")
        yield lambda path: f"{base}/{Path(path).relative_to(folder)}"


def worker_cpu(client) -> float:
    """CPU seconds used so far by the workers: the side of the reads the two ingests share
    (a loopback server's own work is in its process, or in this one for S3)."""
    return sum(client.run(time.process_time).values())


def remote_vs_local(cfg, client, files: dict[str, list[str]], warm: dict[str, list[str]],
                    url: Callable[[str], str], repeat: int = 3) -> dict[str, dict[str, float]]:
    """The whole ingest of ``files`` ({channel: [local paths]}) read locally and through
    ``url``, in turn ``repeat`` times, the best of each side kept: ``{"local" | "remote":
    {"seconds", "cpu", "inspect", "events"}}``.

    Each timed ingest runs on freshly restarted workers that first ingested the small files
    ``warm`` through the same side: imports, numba's kernels and the remote client are loaded,
    and no file of the timed set is already open or cached in a worker (a worker keeps files
    it read twice open, which would spare a repeated ingest its remote opens).
    """
    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import CHANNELS

    # A restarted worker whose XRootD client threads outlive it for a few seconds is killed
    # by its nanny, which says so each time: expected here.
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)

    def config(side: str, chosen: dict[str, list[str]], store: str):
        where = (lambda p: p) if side == "local" else url
        channels = {name: {"files": [where(p) for p in paths], "signal": CHANNELS[name].signal}
                    for name, paths in chosen.items()}
        out = cfg.replace(inputs={"channels": channels}, store={"url": str(Path(cfg.store.url).parent / store)})
        shutil.rmtree(out.store.staging, ignore_errors=True)
        return out

    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):
        for side in ("local", "remote"):
            client.restart()
            ingest(config(side, warm, f"warm-{side}.zarr"), client)
            timed = config(side, files, f"{side}.zarr")
            c0, t0 = worker_cpu(client), time.perf_counter()
            summary = ingest(timed, client)
            seconds, cpu = time.perf_counter() - t0, worker_cpu(client) - c0
            if side in best and summary.n_selected != best[side]["selected"]:
                msg = f"{side}: {summary.n_selected} events selected, {best[side]['selected']:.0f} before"
                raise RuntimeError(msg)
            old = best.get(side, {"seconds": float("inf"), "cpu": float("inf")})
            best[side] = {"seconds": min(old["seconds"], seconds), "cpu": min(old["cpu"], cpu),
                          "inspect": summary.seconds_inspect if seconds < old["seconds"] else old["inspect"],
                          "events": summary.n_read, "selected": summary.n_selected}
    if best["local"]["selected"] != best["remote"]["selected"]:
        msg = f"remote and local ingests selected {best['remote']['selected']} and {best['local']['selected']} events"
        raise RuntimeError(msg)
    return best


#: The parts of the ingest that ``--parts`` times: (label, module, callable in it). None calls
#: another; what is left of the ingest's time is shown as the rest.
PARTS = (
    ("file check (open, checksum, entries)", "megaset.pipeline.ingest", "inspect_files"),
    ("coffea: open the chunk's tree, NanoEvents form", "coffea.nanoevents.factory", "NanoEventsFactory.from_root"),
    ("coffea: NanoEvents events()", "coffea.nanoevents.factory", "NanoEventsFactory.events"),
    ("read the branches (uproot)", "megaset.pipeline.processor", "RMMProcessor.read"),
    ("map onto objects, units check", "megaset.pipeline.processor", "RMMProcessor.events"),
    ("selection and cut flow", "megaset.pipeline.processor", "select"),
    ("RMMs", "megaset.pipeline.processor", "build_rmm"),
    ("staging write", "megaset.pipeline.processor", "write_piece"),
)


@contextmanager
def timed_parts(parts=PARTS) -> Iterator[dict[str, float]]:
    """Within the block, the CPU seconds of this process spent in each of ``parts``, by label
    (each callable replaced by a timed one, and restored after)."""
    spent = dict.fromkeys((label for label, *_ in parts), 0.0)
    undo = []

    def timed(function: Callable, label: str) -> Callable:
        def call(*args, **kwargs):
            t0 = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - t0
        return call

    for label, module, name in parts:
        owner: Any = importlib.import_module(module)
        *path, attr = name.split(".")
        for step in path:
            owner = getattr(owner, step)
        original = inspect.getattr_static(owner, attr)
        if isinstance(original, classmethod):
            setattr(owner, attr, classmethod(timed(original.__func__, label)))
        else:
            setattr(owner, attr, timed(original, label))
        undo.append((owner, attr, original))
    try:
        yield spent
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def ingest_parts(cfg, files: list[str], repeat: int) -> tuple[float, float, dict[str, float], Any]:
    """uproot's read of ``files`` and the whole ingest of ``cfg`` in this process, in turn
    ``repeat`` times after one of each to warm up: ``(read CPU s, ingest CPU s, CPU s by part,
    summary)`` of the least costly of each."""
    from megaset.pipeline.ingest import ingest

    tree, branches = cfg.inputs.tree, cfg.schema.branches()

    def read() -> None:
        for path in files:
            _read_file(path, tree, branches)

    read()
    shutil.rmtree(cfg.store.staging, ignore_errors=True)
    ingest(cfg)
    t_read, best = float("inf"), (float("inf"), {}, None)
    for _ in range(repeat):
        t0 = time.process_time()
        read()
        t_read = min(t_read, time.process_time() - t0)
        shutil.rmtree(cfg.store.staging, ignore_errors=True)
        with timed_parts() as spent:
            t0 = time.process_time()
            summary = ingest(cfg)
            seconds = time.process_time() - t0
        if seconds < best[0]:
            best = (seconds, dict(spent), summary)
    return t_read, *best


def parts_main(args, cfg, written: dict[str, list[str]]) -> None:
    """``--parts``: the ingest's CPU time by part, in this process, beside uproot's read."""
    files = [path for paths in written.values() for path in paths]
    t_read, t_ingest, spent, summary = ingest_parts(cfg, files, args.repeat)
    chunks = sum(c.get("chunks", 0) for c in summary.channels.values())
    print(f"\nthe ingest in one process, CPU s (best of {args.repeat}), {len(files)} files, {chunks} chunks, "
          f"{summary.n_read:,} events ({summary.n_selected:,} selected)")
    print(f"{'part':<50}{'CPU s':>8}{'share':>8}{'ms a file':>11}")
    rows = [*spent.items(), ("the rest (coffea's runner, bookkeeping)", t_ingest - sum(spent.values()))]
    for label, seconds in rows:
        print(f"{'  ' + label:<50}{seconds:>8.2f}{seconds / t_ingest:>8.2f}{seconds / len(files) * 1e3:>11.1f}")
    print(f"{'whole ingest':<50}{t_ingest:>8.2f}{1:>8.2f}{t_ingest / len(files) * 1e3:>11.1f}")
    print(f"{'uproot read of the same branches (baseline)':<50}{t_read:>8.2f}{t_read / t_ingest:>8.2f}"
          f"{t_read / len(files) * 1e3:>11.1f}")
    print(f"read / ingest: {t_read / t_ingest:.2f}; at 0.8 the ingest would take {t_read / 0.8:.2f} s")


def remote_main(args, cfg) -> None:
    """``--remote``: the ingest of the same files locally and through a loopback server."""
    from megaset.deploy.cluster import open_client
    from megaset.pipeline.simulate import simulate

    work = Path(cfg.store.url).parent
    sizes = {"ntuples": (args.events, cfg.simulate.events_per_file), "warm": (20_000, 20_000)}
    written: dict[str, dict[str, list[str]]] = {}

    def write(folder: Path) -> list[str]:
        for name, (events, per_file) in sizes.items():
            sim = cfg.simulate.model_copy(update={"output": str(folder / name), "events": events,
                                                  "events_per_file": per_file})
            written[name] = simulate(sim, tree=cfg.inputs.tree)
        return [path for files in written.values() for paths in files.values() for path in paths]

    t0 = time.perf_counter()
    # The server starts first (for S3 its environment is the workers'), then the cluster.
    with served(args.remote, work, write) as url, open_client(cfg.cluster) as client:
        n_files = sum(map(len, written["ntuples"].values()))
        print(f"simulated {args.events:,} events in {n_files} files and served them over {args.remote}: "
              f"{time.perf_counter() - t0:.1f} s")
        best = remote_vs_local(cfg, client, written["ntuples"], written["warm"], url, args.repeat)

    print()
    print(f"{'whole ingest, ' + str(args.workers) + ' workers':<40}{'events/s':>12}{'wall s':>9}"
          f"{'worker CPU s':>14}{'file check s':>14}")
    for side, figures in best.items():
        print(f"{side:<40}{figures['events'] / figures['seconds']:>12,.0f}{figures['seconds']:>9.2f}"
              f"{figures['cpu']:>14.2f}{figures['inspect']:>14.2f}")
    local, remote = best["local"], best["remote"]
    print(f"remote / local over {args.remote}: wall time {remote['seconds'] / local['seconds']:.2f}, "
          f"worker CPU {remote['cpu'] / local['cpu']:.2f}, "
          f"throughput {local['seconds'] / remote['seconds']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="background events to simulate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=200_000)
    parser.add_argument("--events-per-file", type=int, default=250_000)
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (c) in turn; the best of each counts")
    parser.add_argument("--remote", choices=["root", "http", "s3"], default=None,
                        help="only the ingest of the same files locally and through a loopback server")
    parser.add_argument("--parts", action="store_true",
                        help="only the ingest in this process, its CPU time by part, beside uproot's read")
    args = parser.parse_args()

    from megaset.config import CompressorConfig, Config
    from megaset.deploy.cluster import open_client
    from megaset.pipeline.rmm import build_rmm, rmm_inputs
    from megaset.pipeline.schema import read_events
    from megaset.pipeline.selection import select
    from megaset.pipeline.simulate import simulate
    from megaset.storage.staging import write_piece

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-"))
    cfg = Config.model_validate({
        "simulate": {"output": str(work / "ntuples"), "events": args.events, "signal_events": 0,
                     "events_per_file": args.events_per_file},
        "inputs": {"chunksize": args.chunksize},
        "store": {"url": str(work / "store.zarr")},
        "cluster": {"workers": args.workers},
    })
    if args.remote:
        remote_main(args, cfg)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        return
    t0 = time.perf_counter()
    written = simulate(cfg.simulate, tree=cfg.inputs.tree)
    n_files = sum(map(len, written.values()))
    print(f"simulated {args.events:,} events in {n_files} files: {time.perf_counter() - t0:.1f} s")
    branches = cfg.schema.branches()
    if args.parts:
        parts_main(args, cfg, written)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        return

    # The cluster a user gets from the config (worker environment included), for both sides.
    with open_client(cfg.cluster) as client:
        n_read, t_read, summary, t_ingest, cpu = read_vs_ingest(cfg, client, written, work, args.repeat)

    # (b) and (d): one file's selected events, in this process, one core.
    import uproot

    sample = written["zmmjets"][0]  # a channel most of whose events pass the selection
    with uproot.open(sample) as f:
        arrays = f["mini"].arrays(branches, how=dict)
    ev = read_events(arrays, cfg.schema, sample)
    sel = select(ev, cfg.selection, sample)
    objects = rmm_inputs(sel.objects, cfg.rmm)
    kernel: dict[str, float] = {}
    forms: dict[str, Any] = {}
    for form, sparse in (("sparse", True), ("dense", False)):
        build_rmm(objects, sel.aux["met"], sel.aux["met_phi"], cfg.rmm, sparse=sparse)  # compile
        kernel[form] = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            forms[form] = build_rmm(objects, sel.aux["met"], sel.aux["met_phi"], cfg.rmm, sparse=sparse)
            kernel[form] = min(kernel[form], time.perf_counter() - t0)
    n_sel = forms["dense"].shape[0]

    print()
    print(f"{'measurement':<46}{'events/s':>14}{'ratio':>10}")
    read_rate = n_read / t_read
    ingest_rate = summary.n_read / t_ingest
    print(f"{'(a) uproot read, ' + str(args.workers) + ' workers':<46}{read_rate:>14,.0f}{1.0:>10.2f}")
    print(f"{'(c) whole ingest, ' + str(args.workers) + ' workers (input events)':<46}{ingest_rate:>14,.0f}"
          f"{ingest_rate / read_rate:>10.2f}")
    print(f"    of which checking the files (open, checksum, entries): {summary.seconds_inspect:.1f} s "
          f"of {t_ingest:.1f} s")
    print(f"    CPU s (driver and workers): read {cpu['read']:.2f}, ingest {cpu['ingest']:.2f}, "
          f"ratio {cpu['read'] / cpu['ingest']:.2f}")
    for form, seconds in kernel.items():
        print(f"{'(b) RMM kernel alone, 1 core, ' + form + ' rows':<46}{n_sel / seconds:>14,.0f}")
    print(f"selected fraction: {summary.n_selected / summary.n_read:.3f}; "
          f"per-worker ingest: {ingest_rate / args.workers:,.0f} input events/s")

    print("\n(d) staging write of the same RMM rows + weights, 1 core (MB/s of the dense rows):")
    print(f"{'rows':<8}{'codec':<14}{'MB/s':>10}{'ratio':>8}{'events/s':>12}")
    weight = sel.weight.astype(np.float32)
    raw = forms["dense"].nbytes + weight.nbytes
    for form, rmm in forms.items():
        columns = {"rmm": rmm, "weight": weight}
        for codec, level in (("none", 0), ("blosc-lz4", 5), ("zstd", 1), ("blosc-zstd", 1)):
            target = work / f"codec-{codec}.zarr"
            shutil.rmtree(target, ignore_errors=True)
            t0 = time.perf_counter()
            write_piece(str(target), "c", "p", columns, {}, CompressorConfig(codec=codec, level=level))
            dt = time.perf_counter() - t0
            stored = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            print(f"{form:<8}{codec:<14}{raw / dt / 1e6:>10,.0f}{raw / stored:>8.1f}{n_sel / dt:>12,.0f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
