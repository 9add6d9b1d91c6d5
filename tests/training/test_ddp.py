from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cloudpickle
import numpy as np
import pytest
import recording
import torch
import yaml
from rows import scaled_rows

from megaset.errors import ConfigError, TrainingError
from megaset.storage.store import open_store
from megaset.training.checkpoint import load_checkpoint
from megaset.training.ddp import run_on_dask
from megaset.training.loader import ChunkDataset
from megaset.training.models import per_event_loss
from megaset.training.registry import build_model, resolve_architecture
from megaset.training.scaling import Scaling
from megaset.training.trainer import train

# The rank functions below run on the Dask workers, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(recording)  # its Recording runs on the Dask workers

pytestmark = pytest.mark.slow

DDP = {"model": "ae-deep", "epochs": 2, "batch_size": 32, "learning_rate": 3e-3,
       "architecture": {"latent": 4, "hidden": [12], "activations": ["tanh", "leaky_relu", "relu", "leaky_relu"]},
       "loader": {"shuffle_chunks": 2}, "ddp": {"world_size": 2}}


def _read_epochs(url: str, epochs: int, *, report) -> tuple:
    import torch.distributed as dist

    group = recording.Recording(open_store(url).group("train"))
    ds = ChunkDataset(group, batch_size=32, seed=3, shuffle_chunks=2)
    per_epoch = []
    for _ in range(epochs):
        group.reads.clear()
        batches = [len(w) for _, w in ds]
        per_epoch.append((sorted(group.reads), len(batches), sum(batches)))
    return dist.get_rank(), dist.get_world_size(), dist.get_backend(), per_epoch


def test_two_gloo_ranks_read_disjoint_chunks_covering_train_every_epoch(tiny_store, cluster_client):
    results = run_on_dask(cluster_client, _read_epochs, tiny_store.store.url, 3, world_size=2, timeout_s=60)
    assert [r[:3] for r in results] == [(0, 2, "gloo"), (1, 2, "gloo")]
    orders = []
    for epoch in range(3):
        reads = [r[3][epoch][0] for r in results]
        assert not set(reads[0]) & set(reads[1])
        assert sorted(reads[0] + reads[1]) == list(range(12))
        assert [r[3][epoch][1:] for r in results] == [(12, 384), (12, 384)]  # 6 chunks of 64 each
        orders.append(reads[0])
    assert orders[0] != orders[1] or orders[1] != orders[2]


def _reference(cfg) -> dict[str, torch.Tensor]:
    """One process, one model, stepping on the average loss of both ranks' batches."""
    tc = cfg.training
    store = open_store(cfg.store.url)
    scaling = Scaling.from_scaler(store.scaler)
    group = store.group("train")
    weights = np.concatenate([c["weight"] for _, c in group.iter_chunks(("weight",))]).astype(np.float64)
    norm = len(weights) / weights.sum()
    n_features = len(store.feature_names)
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, n_features, resolve_architecture(tc.model, n_features, tc.architecture))
    rows = ChunkDataset(group, batch_size=tc.batch_size, scaling=scaling, shuffle=False, equal_batches=False)
    model.start_from_pass((x for x, _ in rows), lambda t: t)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)
    ds = ChunkDataset(group, batch_size=tc.batch_size, scaling=scaling, seed=tc.seed, shuffle_chunks=2)
    for epoch in range(tc.epochs):
        shards = []
        for rank in range(2):
            ds.set_epoch(epoch)
            shards.append(list(ds.iter_shard(rank, 2)))
        for (x0, w0), (x1, w1) in zip(*shards, strict=True):
            losses = [torch.mean(w * norm * per_event_loss(model, model(x), x)) for x, w in ((x0, w0), (x1, w1))]
            optimizer.zero_grad()
            (0.5 * (losses[0] + losses[1])).backward()
            optimizer.step()
    return model.state_dict()


def test_ddp_ranks_on_dask_equal_one_process_on_the_same_global_batches(tiny_store, cluster_client, tmp_path):
    cfg = tiny_store.replace(training={**DDP, "output": str(tmp_path / "dask")})
    seen = []
    summary = train(cfg, cluster_client, progress=seen.append)
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert [e["epoch"] for e in seen] == [1, 2]  # rank 0's reports reached this process
    trained = load_checkpoint(summary["checkpoints"]["last"])["state"]
    expected = _reference(cfg)
    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-5, atol=1e-6)
    untrained = build_model("ae-deep", 16, resolve_architecture("ae-deep", 16, cfg.training.architecture))
    assert not torch.allclose(trained["layers.0.weight"], untrained.state_dict()["layers.0.weight"])


def test_ddp_ranks_share_a_train_group_of_one_chunk(one_chunk_store, cluster_client, tmp_path):
    # A small sample (a jet demo's signal trained on in the pairwise study) fills one chunk:
    # both ranks train on pieces of it, as one process would on the same global batches.
    cfg = one_chunk_store.replace(training={**DDP, "output": str(tmp_path / "models")})
    assert open_store(cfg.store.url).group("train").n_chunks == 1
    summary = train(cfg, cluster_client)
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    trained = load_checkpoint(summary["checkpoints"]["last"])["state"]
    expected = _reference(cfg)
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["deep-svdd", "ae-ensemble", "flow"])
def test_score_families_on_ddp_ranks_equal_one_process(tiny_store, cluster_client, tmp_path, name):
    # Deep SVDD's centre and the flow's standardisation are summed over the ranks' first passes;
    # the ensemble's calibration gathers every rank's validation errors. (The flow's smearing
    # draws from each rank's own generator: only its standardisation can equal one process's.)
    arch = {"latent": 4, "ensemble_members": 2, "flow_layers": 2, "flow_hidden": 8,
            **({"hidden": [12]} if name == "deep-svdd" else {})}
    cfg = tiny_store.replace(training={**DDP, "model": name, "architecture": arch, "output": str(tmp_path)})
    summary = train(cfg, cluster_client)
    assert summary["world_size"] == 2
    trained = load_checkpoint(summary["checkpoints"]["last"])["state"]
    expected = _reference(cfg)
    for key in ("mean", "std") if name == "flow" else expected:
        if key != "scale":
            torch.testing.assert_close(trained[key], expected[key], rtol=1e-5, atol=1e-6)
    if name == "ae-ensemble":
        model = build_model(name, 16, resolve_architecture(name, 16, cfg.training.architecture))
        model.load_state_dict(trained)
        val = torch.from_numpy(scaled_rows(cfg, "val"))
        with torch.no_grad():
            errors = model.member_errors(model(val)[0], val)
        torch.testing.assert_close(trained["scale"], errors.sort(0).values[(len(val) - 1) // 2])


def test_torchrun_runs_the_same_trainer(tiny_store, cluster_client, tmp_path):
    dask_cfg = tiny_store.replace(training={**DDP, "output": str(tmp_path / "dask")})
    on_dask = train(dask_cfg, cluster_client)
    cfg = tiny_store.replace(training={**DDP, "output": str(tmp_path / "torchrun")})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.resolved()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "megaset.training", "--config", str(tmp_path / "cfg.yaml")],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = next(line["summary"] for line in lines if "summary" in line)
    assert [line["progress"]["epoch"] for line in lines if "progress" in line] == [1, 2]
    assert summary["world_size"] == 2
    a = load_checkpoint(summary["checkpoints"]["last"])["state"]
    b = load_checkpoint(on_dask["checkpoints"]["last"])["state"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def _fail_on_rank_one(*, report):
    import torch.distributed as dist

    if dist.get_rank() == 1:
        msg = "chunk 7 of train is unreadable"
        raise ValueError(msg)
    dist.barrier()


def test_a_failing_rank_fails_the_job_and_names_it(cluster_client):
    start = time.monotonic()
    with pytest.raises(TrainingError, match=r"rank 1 on worker tcp://\S+: ValueError: chunk 7 of train is unreadable"):
        run_on_dask(cluster_client, _fail_on_rank_one, world_size=2, timeout_s=5)
    assert time.monotonic() - start < 15
    time.sleep(5)  # rank 0 leaves its barrier at the process-group timeout, freeing its worker


def _die_on_rank_one(*, report):
    import torch.distributed as dist

    if dist.get_rank() == 1:
        os._exit(1)
    dist.all_reduce(torch.ones(1))
    time.sleep(600)


def test_a_dead_rank_fails_the_job_in_bounded_time():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("torch"))  # worker start-up is not the time measured
        start = time.monotonic()
        with pytest.raises(TrainingError, match=r"rank 1: its worker tcp://\S+ died or left the cluster"):
            run_on_dask(client, _die_on_rank_one, world_size=2, timeout_s=600)
        assert time.monotonic() - start < 30  # far below the process-group timeout


def test_more_ranks_than_workers_is_a_config_error(cluster_client):
    with pytest.raises(ConfigError, match=r"world_size=3 ranks, but the cluster has 2 workers"):
        run_on_dask(cluster_client, _fail_on_rank_one, world_size=3, timeout_s=1)


def _local_device(*, report) -> tuple:
    import torch.distributed as dist

    from megaset.training.ddp import local_rank, rank_device

    # As the trainer chooses, on a pretend host of two GPUs shared by the cluster's workers.
    return dist.get_rank(), os.environ["LOCAL_RANK"], rank_device(True, local_rank(), 2)


def _environment(name: str) -> str | None:
    return os.environ.get(name)


def test_ranks_of_a_local_cluster_each_take_their_own_gpu(cluster_client):
    # The local cluster's workers share one host: the launcher numbers its ranks 0 and 1. The
    # timeout is generous: 30 s once ran out while two suites loaded the 2 cores.
    results = run_on_dask(cluster_client, _local_device, world_size=2, timeout_s=120)
    assert sorted(results) == [(0, "0", "cuda:0"), (1, "1", "cuda:1")]
    # The workers outlive the ranks: their environment is left as it was.
    assert set(cluster_client.run(_environment, "LOCAL_RANK").values()) == {None}
