"""Ingest throughput, side by side in one run on the same simulated files.

(a) uproot reading the branches the schema needs, nothing else;
(b) the RMM kernel alone, on the selected events of the same files, already in memory, in
    the sparse form the ingest stores and as dense rows;
(c) the whole ingest (coffea processor on a Dask LocalCluster: read, select, RMM, staging write);
(d) the staging write alone, for each candidate codec, on the same RMM rows, sparse and dense.
(a) and (c) use the same number of worker processes, so their ratio is like for like.

    python benchmarks/ingest.py --events 2000000 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="background events to simulate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=200_000)
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (c) in turn; the best of each counts")
    args = parser.parse_args()

    from megaset.config import CompressorConfig, Config
    from megaset.deploy.cluster import open_client
    from megaset.pipeline.rmm import build_rmm
    from megaset.pipeline.schema import read_events
    from megaset.pipeline.selection import select
    from megaset.pipeline.simulate import simulate
    from megaset.storage.staging import write_piece

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-"))
    cfg = Config.model_validate({
        "simulate": {"output": str(work / "ntuples"), "events": args.events, "signal_events": 0,
                     "events_per_file": 250_000},
        "inputs": {"chunksize": args.chunksize},
        "store": {"url": str(work / "store.zarr")},
        "cluster": {"workers": args.workers},
    })
    t0 = time.perf_counter()
    written = simulate(cfg.simulate, tree=cfg.inputs.tree)
    n_files = sum(map(len, written.values()))
    print(f"simulated {args.events:,} events in {n_files} files: {time.perf_counter() - t0:.1f} s")
    branches = cfg.schema.branches()

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
    objects = [sel.objects[o.source] for o in cfg.rmm.objects]
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
