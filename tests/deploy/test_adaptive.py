"""An adaptive local cluster (``cluster.adapt``) whose workers come and go during ingest and mix:
the store holds every selected event exactly once, as a run on a fixed cluster does."""

from __future__ import annotations

import itertools
import json
import threading
import time

import numpy as np
import pytest
import zarr

from megaset.config import Config
from megaset.deploy.cluster import open_client
from megaset.pipeline.ingest import ingest
from megaset.pipeline.simulate import generate, write_ntuple
from megaset.storage.mix import mix
from megaset.storage.store import open_store
from megaset.storage.verify import verify

CHANNELS = ("zmmjets", "ttbar", "c1n2_wz_800_50")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Two files per channel: twelve ingest chunks of 500 events."""
    root = tmp_path_factory.mktemp("ntuples")
    for c, channel in enumerate(CHANNELS):
        (root / channel).mkdir()
        for i in range(2):
            branches = generate(channel, 1000, seed=100 * c + i, first_event=1000 * i)
            write_ntuple(root / channel / f"{channel}_{i}.root", branches, "mini")
    return root


def make_config(sample, folder, **cluster) -> Config:
    channels = {ch: {"files": [str(sample / ch / "*.root")], "signal": ch.startswith("c1n2")} for ch in CHANNELS}
    return Config.model_validate({
        "inputs": {"chunksize": 500, "channels": channels},
        "store": {"url": str(folder / "store.zarr"), "chunk_len": 128},
        "cluster": cluster,
    })


def event_ids(url: str) -> dict[str, np.ndarray]:
    """The event ids of every group of the store, in stored order."""
    return {name: zarr.open_array(f"{url}/{name}/event_id", mode="r")[:] for name in open_store(url).group_names()}


class Watch:
    """The addresses of the workers connected, sampled every 0.1 s, tagged with the stage running."""

    def __init__(self, client):
        self.client, self.stage, self.seen = client, "start", []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
            self.seen.append((self.stage, frozenset(workers)))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, stage: str) -> list[frozenset[str]]:
        return [workers for tag, workers in self.seen if tag == stage]


@pytest.mark.slow
def test_workers_coming_and_going_leave_every_event_once(sample, tmp_path, cluster_client):
    """An adaptive cluster (adapt 1-3) grows to three workers in the middle of the ingest and
    loses one, killed while it writes a piece; in the middle of the mix it is cut back to one
    worker. Staged events, stored event ids and their places equal a fixed two-worker run's."""
    from faults import paused_at, worker_killed_at

    fixed = make_config(sample, tmp_path / "fixed")
    fixed_summary = ingest(fixed, cluster_client)
    mix(fixed, cluster_client)

    cfg = make_config(sample, tmp_path / "adaptive", kind="local", adapt={"minimum": 1, "maximum": 3})

    def piece_complete(name: str, late: bool):
        def when(path, value) -> bool:
            # A piece's complete mark goes into its group's metadata last, after its arrays.
            if not str(path).endswith("zarr.json"):
                return False
            attrs = json.loads(value.to_bytes()).get("attributes", {})
            return attrs.get("complete") is True and attrs.get("filename", "").endswith(name) \
                and (attrs.get("entrystart", 0) > 0) == late
        return when

    def marking_train_chunk_done(index: int):
        return lambda array, selection, *args, **kwargs: \
            str(array.store_path).endswith("_mix/train/done") and selection == index

    with open_client(cfg.cluster) as client, Watch(client) as watch:
        cluster = client.cluster
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1

        def grow(pid: int) -> None:
            cluster.adapt(minimum=3, maximum=3)
            client.wait_for_workers(3, timeout=120)

        def shrink(pid: int) -> None:
            # The test's own pace: the workers go within a fraction of a second, not after three.
            cluster.adapt(minimum=1, maximum=1, interval="100ms", wait_count=1)

        watch.stage = "ingest"
        with paused_at(client, "zarr.storage:StorePath.set", piece_complete("zmmjets_0.root", False),
                       tmp_path / "grown", grow), \
                worker_killed_at(client, "zarr.storage:StorePath.set", piece_complete("ttbar_1.root", True),
                                 tmp_path / "killed"):
            summary = ingest(cfg, client)
        watch.stage = "mix"
        with paused_at(client, "zarr.core.array:AsyncArray.setitem", marking_train_chunk_done(1),
                       tmp_path / "shrunk", shrink):
            mix(cfg, client)
        watch.stage = "end"
        time.sleep(0.3)

    ingesting, mixing = watch.during("ingest"), watch.during("mix")
    assert max(len(w) for w in ingesting) == 3
    # The killed worker left the cluster during the ingest (its nanny started another one).
    assert any(a - b for a, b in itertools.pairwise(ingesting))
    assert len(mixing[0]) == 3 and min(len(w) for w in mixing) == 1

    for channel, counts in fixed_summary.channels.items():
        assert summary.channels[channel]["n_selected"] == counts["n_selected"], channel
    got, expected = event_ids(cfg.store.url), event_ids(fixed.store.url)
    assert got.keys() == expected.keys()
    for group in expected:
        np.testing.assert_array_equal(got[group], expected[group], err_msg=group)
    every = np.concatenate(list(got.values()))
    assert len(np.unique(every, axis=0)) == len(every) == sum(c["n_selected"] for c in summary.channels.values())
    assert verify(cfg.store.url) == []
