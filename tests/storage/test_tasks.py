from __future__ import annotations

import os

import pytest

from megaset.errors import StoreError
from megaset.storage.tasks import map_chunks


def _square(x: int, *, offset: int) -> int:
    return x * x + offset


def _die(x: int) -> int:
    os._exit(1)


def test_results_of_every_item_come_back_with_progress(cluster_client):
    seen = []
    out = map_chunks(cluster_client, _square, list(range(12)), names=[f"g-{i}" for i in range(12)],
                     stage="megaset test", retries=0, progress=seen.append, offset=1)
    assert sorted(out) == [i * i + 1 for i in range(12)] and seen == list(range(1, 13))
    assert map_chunks(None, _square, [3], names=["g-0"], stage="megaset test", retries=0, offset=1) == [10]


def _lookup(x: int, *, table: dict[str, list[float]]) -> float:
    return table["values"][x]


def _started(x: int, *, seconds: float) -> tuple[int, float]:
    import time

    start = time.time()
    time.sleep(seconds)
    return x, start


def test_tasks_start_in_the_order_given_whatever_their_names(cluster_client):
    """Six runs of train, then one or two of three small groups: the runs start in that order
    as the two workers free up (scoring hands its runs over largest first). When each store
    group made its own Dask task group, the small groups' tasks went to the workers at once and
    started before most of train's."""
    names = [f"train-{i}..{i}" for i in range(6)] + ["val-0..0", "val-1..1", "test-0..0", "signal/x-0..0"]
    out = map_chunks(cluster_client, _started, list(range(len(names))), names=names, stage="megaset test",
                     retries=0, seconds=0.3)
    order = [x for x, _ in sorted(out, key=lambda result: result[1])]
    assert set(order[:6]) == set(range(6)), order


def test_a_large_keyword_argument_reaches_every_task(cluster_client):
    """A shared argument of more than 100 kB (a combination's quantile tables): every task gets
    it, in two maps in a row (Dask alone would make it one data node named after the argument,
    which the scheduler fails on)."""
    table = {"values": [float(i) for i in range(50_000)]}
    for offset in (0, 1):
        items = [offset + i for i in range(4)]
        out = map_chunks(cluster_client, _lookup, items, names=[f"g-{i}" for i in items], stage="megaset test",
                         retries=0, table=table)
        assert sorted(out) == [float(i) for i in items]


def test_a_chunk_whose_workers_die_on_every_try_is_named():
    import dask
    from distributed import Client, LocalCluster

    # A cluster of its own, whose scheduler gives up on the first death (no worker restarts to
    # wait for on a busy machine): the shared one keeps its workers.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, pytest.raises(
                StoreError, match=r"megaset test: the workers running chunk train-7 died 1 times.*rerun `megaset"):
        map_chunks(client, _die, [7], names=["train-7"], stage="megaset test", retries=0)


def test_results_are_fetched_on_the_callers_client_while_another_client_is_the_default(cluster_client):
    import contextlib
    import threading

    from distributed import Client, default_client

    # Two clients of one scheduler in one process (a `megaset run` against an existing scheduler
    # from a driver that already holds a client), each on a loop of its own; the first is the
    # default. Its loop is held while the second maps its chunks: fetched on it, the results
    # would wait for it (and, when not held, that loop's thread writes on the second's sockets).
    address = cluster_client.scheduler.address
    with Client(address) as first, contextlib.closing(Client(address, set_as_default=False)) as second:
        assert default_client() is first and second.loop is not first.loop
        release, held, expired = threading.Event(), threading.Event(), []

        def hold() -> None:
            held.set()
            expired.append(not release.wait(60))

        first.loop.add_callback(hold)
        assert held.wait(30)
        try:
            out = map_chunks(second, _square, list(range(6)), names=[f"g-{i}" for i in range(6)],
                             stage="megaset test", retries=0, offset=0)
            returned_while_held = not release.is_set()
        finally:
            release.set()
    assert sorted(out) == [i * i for i in range(6)]
    assert returned_while_held and expired == [False]


def test_workers_paused_for_memory_stop_the_map_with_their_names(monkeypatch):
    """A worker past Dask's pause fraction of its memory runs nothing; with no nanny to restart it
    and memory its libraries hold, it stays paused: the map says so instead of waiting for ever."""
    from faults import paused_worker

    from megaset.storage import tasks

    monkeypatch.setattr(tasks, "_CHECK_S", 0.5)
    monkeypatch.setattr(tasks, "_PAUSED_S", 2.0)
    with paused_worker() as client, pytest.raises(
            StoreError, match=r"megaset test: every worker able to run its tasks has been paused by Dask for "
                              r"memory for \d+ s \(tcp://127\.0\.0\.1:\d+ at [\d.]+ MiB of its 200\.00 MiB "
                              r"limit\).*--memory-limit.*rerun `megaset test`"):
        map_chunks(client, _square, [1, 2], names=["g-1", "g-2"], stage="megaset test", retries=0, offset=0)
