from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cluster_client():
    """A real Dask LocalCluster with two worker processes, shared by the tests that need one."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client
