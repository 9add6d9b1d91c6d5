"""The scaling curve: ingest, mix and scoring throughput against the number of Dask workers.

One simulated sample; for each worker count n of ``--workers`` a fresh ``LocalCluster`` of n
single-threaded worker processes (through ``open_client``, as ``megaset`` starts one, warm
workers included), on which every stage runs twice:

* cold: the first pass on the fresh cluster (what a new or restarted worker pays is in it);
* warm: the same pass again on the same workers.

Ingest and mix start each pass from nothing (staging area and store removed), scoring rewrites
its columns. Rates are events per second: input events for the ingest, stored events for the
mix and scoring. Parallel efficiency is rate(n) / (n x rate(1)), against the one-worker rate of
the same run (``--workers`` must start at 1). The model scored is trained once, in this process,
on the first store (1 epoch of ae-shallow; its time is not measured).

Also per n: the seconds from asking for the cluster to a connected client (worker start and
warm-up), and the machine's load average as the cluster starts. Figures taken on a machine
shared with other work move with its load: a worker count that exceeds the cores left free
measures the contention, not the code.

    python benchmarks/scaling.py --events 2000000 --workers 1,2 --json scaling.json --plot scaling.png
    python benchmarks/scaling.py --events 20000000 --workers 1,2,4,8,14     # a 16-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("ingest", "mix", "score")
PASSES = ("cold", "warm")
#: The model scored: trained once, briefly; scoring's cost hardly depends on its quality.
TRAINING = {"model": "ae-shallow", "epochs": 1, "early_stopping": {"patience": 1000}}


def bench_config(work: Path, events: int, chunksize: int, chunk_len: int | None, workers: int):
    """The demo configuration at ``events`` simulated background events under ``work``, with
    files and ingest chunks of ``chunksize`` events, on a local cluster of ``workers``."""
    from megaset.config import Config

    return Config.model_validate({
        "simulate": {"output": str(work / "ntuples"), "events": events, "events_per_file": chunksize},
        "inputs": {"chunksize": chunksize},
        "store": {"url": str(work / "store.zarr"), **({"chunk_len": chunk_len} if chunk_len else {})},
        "cluster": {"kind": "local", "workers": workers, "threads_per_worker": 1},
        "training": {"output": str(work / "models"), **TRAINING},
    })


def _ingest(cfg, client) -> int:
    from megaset.pipeline.ingest import ingest
    from megaset.storage.staging import remove_staging

    remove_staging(cfg.store.staging)
    return ingest(cfg, client).n_read


def _mix(cfg, client) -> int:
    from megaset.storage.mix import mix
    from megaset.storage.store import remove_store

    remove_store(cfg.store.url)
    return sum(g["n_events"] for g in mix(cfg, client)["groups"].values())


def _score(cfg, client) -> int:
    from megaset.training.score import score

    return int(score(cfg, client, overwrite=True)["events_scored"])


def _train_once(cfg) -> None:
    """The model to score, trained in this process on the store just mixed (not timed)."""
    from megaset.training.score import checkpoint_path
    from megaset.training.trainer import train

    if not Path(checkpoint_path(cfg, cfg.training.model)).is_file():
        train(cfg, None)


def at_workers(cfg, workers: int) -> dict[str, Any]:
    """Cold and warm seconds and events of every stage on a fresh cluster of ``workers``."""
    from megaset.deploy.cluster import open_client

    cfg = cfg.replace(cluster={"workers": workers})
    runs = {"ingest": _ingest, "mix": _mix, "score": _score}
    # The machine's load as the cluster starts: on a shared machine the figures move with it.
    out: dict[str, Any] = {"workers": workers, "load": os.getloadavg()[0]}
    t0 = time.perf_counter()
    with open_client(cfg.cluster) as client:
        client.wait_for_workers(workers)
        out["ready_s"] = time.perf_counter() - t0
        for stage in STAGES:
            if stage == "score":
                _train_once(cfg)
            for name in PASSES:
                t0 = time.perf_counter()
                events = runs[stage](cfg, client)
                seconds = time.perf_counter() - t0
                out[f"{stage}_{name}"] = {"seconds": seconds, "events": events, "per_s": events / seconds}
                print(f"  {workers} workers, {stage} {name}: {events:,} events in {seconds:.1f} s "
                      f"({events / seconds:,.0f}/s)", flush=True)
    return out


def efficiencies(rows: list[dict[str, Any]]) -> None:
    """Add ``<stage>_<pass>.efficiency`` = rate(n) / (n x rate(1)) to every row (rows[0]: 1 worker)."""
    one = rows[0]
    for row in rows:
        for stage in STAGES:
            for name in PASSES:
                key = f"{stage}_{name}"
                row[key]["efficiency"] = row[key]["per_s"] / (row["workers"] * one[key]["per_s"])


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The scaling table as Markdown: events/s and efficiency per stage and pass."""
    head = ["workers", "load", "ready s"] + [f"{s} {p} /s (eff.)" for s in STAGES for p in PASSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["workers"]), f"{row['load']:.1f}", f"{row['ready_s']:.1f}"]
        for stage in STAGES:
            for name in PASSES:
                r = row[f"{stage}_{name}"]
                cells.append(f"{r['per_s']:,.0f} ({r['efficiency']:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> list[Path]:
    """Rates at ``path`` and efficiencies beside it (``<stem>-efficiency``): warm solid, cold dashed."""
    from megaset.report.plots import curves
    from megaset.report.style import Style

    x = np.array([row["workers"] for row in rows])
    colours = {f"{s} {p}": f"C{i}" for i, s in enumerate(STAGES) for p in PASSES}
    dashes = {f"{s} {p}": "--" if p == "cold" else "-" for s in STAGES for p in PASSES}
    title = f"{os.cpu_count()} cores, {rows[0]['ingest_warm']['events']:,} events"

    def series(field: str) -> dict[str, np.ndarray]:
        return {f"{s} {p}": np.array([row[f"{s}_{p}"][field] for row in rows]) for s in STAGES for p in PASSES}

    style = Style(label="Simulation, benchmark")
    rate = curves(path, x, series("per_s"), style=style, xlabel="workers", ylabel="events / s", title=title,
                  logy=True, colours=colours, linestyles=dashes)
    efficiency = curves(path.with_name(f"{path.stem}-efficiency{path.suffix}"), x, series("efficiency"), style=style,
                        xlabel="workers", ylabel="rate(n) / (n x rate(1))", title=title, reference=1.0,
                        colours=colours, linestyles=dashes)
    return [rate, efficiency]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="simulated background events")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, starting at 1")
    parser.add_argument("--chunksize", type=int, default=100_000, help="events per simulated file and ingest chunk")
    parser.add_argument("--chunk-len", type=int, default=None, help="events per store chunk (default: the store's)")
    parser.add_argument("--workdir", default=None, help="work here (default: a temp dir, removed at the end)")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    parser.add_argument("--plot", default=None, help="draw the rates to this PNG, the efficiencies beside it")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    if counts[0] != 1 or counts != sorted(set(counts)):
        parser.error(f"--workers {args.workers}: increasing worker counts starting at 1 (the efficiency's baseline)")

    from megaset.pipeline.simulate import simulate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-scaling-"))
    cfg = bench_config(work, args.events, args.chunksize, args.chunk_len, counts[0])
    t0 = time.perf_counter()
    simulate(cfg.simulate, tree=cfg.inputs.tree)
    print(f"simulated {args.events:,} background events in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for n in counts:
        print(f"fresh cluster of {n} workers", flush=True)
        rows.append(at_workers(cfg, n))
    efficiencies(rows)

    machine = f"{platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    print(f"\nscaling on {args.events:,} simulated events ({machine})\n")
    print("\n".join(table(rows)))
    if args.plot:
        for path in plot(rows, Path(args.plot)):
            print(f"wrote {path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"events": args.events, "chunksize": args.chunksize,
                                               "cores": os.cpu_count(), "machine": machine, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
