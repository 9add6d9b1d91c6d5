"""A fresh worker's first chunk against its steady-state chunks, before and after warm workers.

Each mode starts a fresh ``LocalCluster`` (through ``open_client``, as ``megaset`` does) and
ingests the same simulated files, chunk by chunk; the Dask task stream gives every chunk's
compute time on its worker. Per worker: the first chunk, the median of the others, and the
difference (the target: at most 1 s). The modes:

* ``cold``: no numba cache (an empty ``NUMBA_CACHE_DIR``, as in an image built without one) and
  no warm-up plugin: the state before, on a fresh node;
* ``cache``: the cache filled by ``megaset warmup``, no plugin: each worker still imports the
  stages' modules and loads the kernels in its first chunk;
* ``warm``: the cache and the ``WarmWorker`` plugin (``cluster.warm_workers``, the default):
  the workers import and load while the cluster starts, before their first task.

Also per mode: the seconds from asking for the cluster to a connected client with every worker
ready (where the plugin's work now lies) and the ingest's wall time.

    python benchmarks/warmup.py --events 400000 --workers 2 --chunksize 20000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("cold", "cache", "warm")


def chunk_times(stream: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``{worker: [(start, seconds), ...]}`` of the ingest's chunk tasks, in the order they started."""
    from dask.utils import key_split

    out: dict[str, list[tuple[float, float]]] = {}
    for task in stream:
        # coffea names the chunk tasks after the processor class
        if key_split(task["key"]) not in ("RMMProcessor", "JetProcessor"):
            continue
        for ss in task["startstops"]:
            if ss["action"] == "compute":
                out.setdefault(task["worker"], []).append((ss["start"], ss["stop"] - ss["start"]))
    return {w: sorted(times) for w, times in out.items()}


def one_mode(cfg: Any, mode: str, cache: Path) -> dict[str, Any]:
    """Start a fresh cluster in ``mode``, ingest, and return the per-worker chunk figures."""
    from distributed import get_task_stream

    from megaset.deploy.cluster import open_client
    from megaset.pipeline.ingest import ingest
    from megaset.storage.staging import remove_staging

    if mode == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    remove_staging(cfg.store.staging)
    mode_cfg = cfg.replace(cluster={"warm_workers": mode == "warm"})
    t0 = time.perf_counter()
    with open_client(mode_cfg.cluster) as client:
        ready = time.perf_counter() - t0
        t0 = time.perf_counter()
        with get_task_stream(client) as stream:
            summary = ingest(mode_cfg, client)
        wall = time.perf_counter() - t0
    workers = {}
    for worker, times in chunk_times(stream.data).items():
        steady = statistics.median(s for _, s in times[1:]) if len(times) > 1 else float("nan")
        workers[worker] = {"first": times[0][1], "steady": steady, "chunks": len(times)}
    return {"ready": ready, "wall": wall, "events": summary.n_read, "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000, help="background events to simulate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=20_000, help="events per ingest chunk")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()

    from megaset.config import Config
    from megaset.pipeline.simulate import simulate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-warmup-"))
    cache = work / "numba-cache"
    cfg = Config.model_validate({
        "simulate": {"output": str(work / "ntuples"), "events": args.events, "signal_events": 0,
                     "events_per_file": max(args.chunksize, args.events // 8)},
        "inputs": {"chunksize": args.chunksize},
        "store": {"url": str(work / "store.zarr")},
        "cluster": {"workers": args.workers},
    })
    simulate(cfg.simulate, tree=cfg.inputs.tree)
    results = {}
    for mode in args.modes.split(","):
        if mode != "cold":
            # As at install or image build: a separate process fills the cache (every kernel).
            env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
            subprocess.run([sys.executable, "-m", "megaset.warmup"], env=env, check=True, capture_output=True)
        results[mode] = one_mode(cfg, mode, cache)

    print(f"\n{args.workers} workers, {args.events:,} events in chunks of {args.chunksize:,}")
    print(f"{'mode':<7}{'worker':<24}{'chunks':>7}{'first s':>9}{'steady s':>10}{'first-steady':>14}"
          f"{'ready s':>9}{'ingest s':>10}")
    for mode, r in results.items():
        for worker, w in sorted(r["workers"].items()):
            print(f"{mode:<7}{worker:<24}{w['chunks']:>7}{w['first']:>9.2f}{w['steady']:>10.2f}"
                  f"{w['first'] - w['steady']:>14.2f}{r['ready']:>9.1f}{r['wall']:>10.1f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
