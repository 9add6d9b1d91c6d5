"""The cost of Dask's TLS (``cluster.tls``) against plain TCP, on a local cluster over loopback.

Two local clusters of one worker process each, one over ``tcp://`` and one over ``tls://`` (a
certificate made for it, as an HTCondor cluster makes its own), are measured in turn
``--repeat`` times, the best of each kept: the round trip of a task doing nothing (submit,
run, result), and the transfer of an array of ``--mib`` MiB to the worker and back (what an
ingest chunk's results and a mix's reads cost in traffic).

    python benchmarks/tls.py --tasks 200 --mib 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _noop(i: int) -> int:
    return i


def measure(tls: bool, tasks: int, mib: int) -> tuple[float, float]:
    """Seconds per task round trip, and MiB/s of the array there and back."""
    from megaset.config import ClusterConfig
    from megaset.deploy.cluster import open_client

    cfg = ClusterConfig(workers=1, warm_workers=False, tls={"enabled": tls})
    data = np.random.default_rng(0).random(mib * 2**20 // 8)
    with open_client(cfg) as client:
        assert client.scheduler.address.startswith("tls://" if tls else "tcp://")
        client.submit(_noop, -1, pure=False).result()
        t0 = time.perf_counter()
        for i in range(tasks):
            client.submit(_noop, i, pure=False).result()
        round_trip = (time.perf_counter() - t0) / tasks
        t0 = time.perf_counter()
        future = client.scatter(data)
        back = future.result()
        moved = time.perf_counter() - t0
        assert back.shape == data.shape
    return round_trip, 2 * mib / moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best: dict[bool, tuple[float, float]] = {}
    for _ in range(args.repeat):
        for tls in (False, True):
            trip, rate = measure(tls, args.tasks, args.mib)
            old = best.get(tls, (float("inf"), 0.0))
            best[tls] = (min(old[0], trip), max(old[1], rate))
    print("| | tcp:// | tls:// | ratio |")
    print("|---|---|---|---|")
    (tcp_trip, tcp_rate), (tls_trip, tls_rate) = best[False], best[True]
    print(f"| task round trip | {tcp_trip * 1e3:.2f} ms | {tls_trip * 1e3:.2f} ms | {tls_trip / tcp_trip:.2f} |")
    print(f"| {args.mib} MiB there and back | {tcp_rate:.0f} MiB/s | {tls_rate:.0f} MiB/s | "
          f"{tcp_rate / tls_rate:.2f} |")


if __name__ == "__main__":
    main()
