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
