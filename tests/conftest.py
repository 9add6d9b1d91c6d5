"""Fixtures shared across the test packages: a local Dask cluster, and one scored store (simulated
ntuples, ingested, mixed, a tiny model trained and scored; a second simulation of the Z channels
plays the collision data) for the report and study tests."""

from __future__ import annotations

import os

import pytest

from megaset.config import Config

# The XRootD client's own waits, before megaset's retries: one connection attempt, and timeouts
# checked every second rather than every 15 (its defaults), so that the tests of unreachable
# and silent servers take seconds. Worker processes inherit them.
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_TIMEOUTRESOLUTION", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped where torch sees none."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster_client():
    """A real Dask LocalCluster with two worker processes, shared by the tests that need one."""
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        yield client


BACKGROUND = ["zeejets", "zmmjets", "ttbar", "diboson"]
SIGNALS = ["c1n2_wz_800_50", "c1n2_wz_450_300"]


@pytest.fixture(scope="session")
def scored(tmp_path_factory) -> Config:
    import torch

    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import simulate
    from megaset.studies.common import train_and_score

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    channels = {c: {"files": [str(root / "ntuples" / c / "*.root")], "signal": c in SIGNALS}
                for c in BACKGROUND + SIGNALS}
    channels["data"] = {"files": [str(root / "data" / "*" / "*.root")], "data": True}
    cfg = Config.model_validate({
        "simulate": {"output": str(root / "ntuples"), "events": 4000, "signal_events": 400,
                     "channels": BACKGROUND + SIGNALS},
        "inputs": {"channels": channels},
        "store": {"url": str(root / "store.zarr"), "chunk_len": 256},
        "training": {"output": str(root / "models"), "epochs": 2, "batch_size": 256, "architecture": {"latent": 8}},
        "report": {"output": str(root / "report"), "bins": 20, "pt_events": 400},
    })
    simulate(cfg.simulate)
    simulate(cfg.simulate.model_copy(update={"output": str(root / "data"), "events": 500, "signal_events": 0,
                                             "channels": ["zeejets", "zmmjets"], "seed": 7}))
    ingest(cfg, None)
    train_and_score(cfg, None)
    return cfg
