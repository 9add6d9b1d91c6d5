from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from megaset.config import Config
from megaset.errors import CheckpointError, ConfigError
from megaset.pipeline.ingest import ingest
from megaset.pipeline.simulate import simulate
from megaset.storage.layout import BLOCKS
from megaset.storage.mix import mix
from megaset.storage.store import open_store
from megaset.storage.verify import verify
from megaset.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from megaset.training.score import score, scoring_device
from megaset.training.trainer import train

CHANNELS = ["zeejets", "zmmjets", "ttbar", "c1n2_wz_800_50"]


@pytest.fixture(scope="module", autouse=True)
def two_chunks_per_score_chunk():
    """Score columns made here hold two of the store's 128-event chunks in each of theirs (the
    last one of a group may hold one), as small stores' score columns hold several: the runs,
    resumes and retries below then meet chunks of both kinds. The scoring reads the span from
    the columns it writes, so setting it where they are created (here) is enough."""
    import megaset.storage.store as store_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "ADDED_CHUNK_EVENTS", 256)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Config:
    """Simulated ntuples, ingested and mixed into a store of 128-event chunks; a tiny model."""
    root = tmp_path_factory.mktemp("score")
    cfg = Config.model_validate({
        "simulate": {"output": str(root / "ntuples"), "events": 3000, "signal_events": 300, "channels": CHANNELS},
        "store": {"url": str(root / "store.zarr"), "chunk_len": 128},
        "training": {"output": str(root / "models"), "epochs": 1, "batch_size": 256, "architecture": {"latent": 8}},
    })
    simulate(cfg.simulate)
    ingest(cfg, None)
    mix(cfg, None)
    train(cfg, None)
    return cfg


def _direct(cfg: Config, group: str, checkpoint=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMM rows, scaled inputs' squared errors and per-event errors of one group, in this process."""
    model, scaling, _ = load_model(checkpoint or f"{cfg.training.output}/ae-shallow/best.pt")
    g = open_store(cfg.store.url).group(group)
    rmm = np.concatenate([v["rmm"] for _, v in g.iter_chunks(("rmm",))])
    x = torch.from_numpy(scaling(rmm))
    with torch.no_grad():
        squared = ((model.reconstruct(x) - x) ** 2).numpy()
        error = model.reconstruction_error(x).numpy()
    return rmm, squared, error


def _column(cfg: Config, group: str, name: str) -> np.ndarray:
    g = open_store(cfg.store.url).group(group)
    return np.concatenate([v[name] for _, v in g.iter_chunks((name,))])


@pytest.mark.slow
def test_scores_equal_a_direct_forward_pass_on_every_group(trained, cluster_client):
    loads_before = cluster_client.run(_loads)
    summary = score(trained, cluster_client)
    store = open_store(trained.store.url)
    n_chunks = sum(store.group(g).n_chunks for g in store.group_names())
    assert summary["chunks"] == n_chunks and summary["resumed"] == 0 and summary["rescored"] == []
    assert summary["events_scored"] == sum(store.group(g).n_events for g in store.group_names())
    assert summary["blocks"] == list(BLOCKS)
    assert store.group_names() == ["train", "val", "test", "signal/c1n2_wz_800_50"]
    for group in store.group_names():
        _, squared, error = _direct(trained, group)
        stored = _column(trained, group, "score/ae-shallow")
        assert stored.dtype == np.float32
        np.testing.assert_allclose(stored, error, rtol=2e-6, atol=1e-9)
    # The per-block errors against cell indices taken from (row, column) of the 23 x 23 matrix.
    _, squared, error = _direct(trained, "test")
    row, col = np.divmod(np.arange(529), 23)
    cells = {"met": (row == 0) | (col == 0), "mass": (row >= 1) & (col > row),
             "rapidity": (col >= 1) & (row > col), "energy": (row >= 1) & (row == col)}
    for block, mask in cells.items():
        np.testing.assert_allclose(_column(trained, "test", f"score/ae-shallow.{block}"),
                                   squared[:, mask].mean(axis=1), rtol=2e-6, atol=1e-9)
    # The blocks partition the matrix: their cell-weighted mean is the total error.
    blocks = sum(mask.sum() * _column(trained, "test", f"score/ae-shallow.{b}").astype(np.float64)
                 for b, mask in cells.items())
    np.testing.assert_allclose(blocks / 529, error, rtol=1e-5)
    # Each worker process that scored loaded the checkpoint exactly once (the cluster is shared
    # with other tests, so count the loads this scoring added).
    loads = {w: n - loads_before.get(w, 0) for w, n in cluster_client.run(_loads).items()}
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1
    assert verify(trained.store.url) == []


def _loads() -> int:
    """Checkpoint loads so far in this worker process."""
    from megaset.training.score import _cached_model

    return _cached_model.cache_info().misses


def test_chunk_runs_cover_every_chunk_once_largest_first(trained, cluster_client):
    from megaset.training.score import chunk_runs

    score(trained, None, model="ae-runs", checkpoint=f"{trained.training.output}/ae-shallow/best.pt")
    store = open_store(trained.store.url)
    groups = [store.group(name) for name in store.group_names()]
    assert {g.column_span("score/ae-runs") for g in groups} == {2}
    for client in (cluster_client, None):
        runs = chunk_runs(groups, client, "score/ae-runs")
        covered = sorted((g.name, i) for g, run in runs for i in run)
        assert covered == sorted((g.name, i) for g in groups for i in range(g.n_chunks))
        assert all(list(run) == list(range(run[0], run[-1] + 1)) for _, run in runs)
        # Whole chunks of the column the task writes: two of the group's, the last maybe one.
        assert all(run[0] % 2 == 0 and (len(run) % 2 == 0 or run[-1] == g.n_chunks - 1) for g, run in runs)
        events = [g.chunk_slice(run[-1]).stop - g.chunk_slice(run[0]).start for g, run in runs]
        # Dask starts them in this order: the short runs fill in at the end.
        assert events == sorted(events, reverse=True) and len(set(events)) > 1


def test_rerun_after_a_partial_scoring_skips_finished_chunks(trained):
    first = score(trained, None, model="ae-rerun", checkpoint=f"{trained.training.output}/ae-shallow/best.pt")
    assert first["resumed"] == 0
    before = {g: _column(trained, g, "score/ae-rerun") for g in ("test", "train", "signal/c1n2_wz_800_50")}
    store = open_store(trained.store.url)
    test, train, signal = (store.group(g) for g in ("test", "train", "signal/c1n2_wz_800_50"))
    # Remove the stored chunks (the "done" markers) of the score column's chunk 0 of the signal
    # and of test, and 1 of train: the store's chunk 0 (the signal's only one), 0-1 and 2-3.
    removed = []
    for group, index in ((signal, 0), (test, 0), (train, 1)):
        Path(f"{trained.store.url}/{group.name}/score/ae-rerun/c/{index}").unlink()
        chunks = range(2 * index, min(2 * index + 2, group.n_chunks))
        assert not any(group.chunk_written("score/ae-rerun", i) for i in chunks)
        removed += [(group, i) for i in chunks]
    assert train.chunk_written("score/ae-rerun", 1) and train.chunk_written("score/ae-rerun", 4)
    seen = []
    again = score(trained, None, model="ae-rerun", checkpoint=f"{trained.training.output}/ae-shallow/best.pt",
                  progress=lambda done, total: seen.append((done, total)))
    assert again["resumed"] == first["chunks"] - len(removed) and again["rescored"] == []
    assert again["events_scored"] == sum(g.chunk_slice(i).stop - g.chunk_slice(i).start for g, i in removed)
    assert seen[0] == (0, first["chunks"]) and seen[-1] == (first["chunks"], first["chunks"])
    for g, values in before.items():
        np.testing.assert_array_equal(_column(trained, g, "score/ae-rerun"), values)


def test_a_new_checkpoint_rescores_every_chunk(trained, tmp_path):
    best = f"{trained.training.output}/ae-shallow/best.pt"
    score(trained, None, model="ae-swap", checkpoint=best)
    ckpt = load_checkpoint(best)
    ckpt["state"] = {k: v * 0.5 for k, v in ckpt["state"].items()}
    other = save_checkpoint(tmp_path / "other.pt", ckpt)
    summary = score(trained, None, model="ae-swap", checkpoint=other)
    assert summary["resumed"] == 0 and sorted(summary["rescored"]) == sorted(summary["groups"])
    np.testing.assert_allclose(_column(trained, "val", "score/ae-swap"), _direct(trained, "val", other)[2], rtol=2e-6)


@pytest.mark.slow
def test_a_killed_worker_chunk_is_redone_and_written_once(trained, tmp_path):
    """The worker scoring train chunks 2-3 (the score columns' chunk 1) is killed by pid with
    their per-block errors written but not their total (the done mark): they are scored again,
    every event once."""
    from distributed import Client, LocalCluster
    from faults import worker_killed_at

    def finishing_train_chunks_2_3(group, name, indices, values) -> bool:
        return group.name == "train" and indices == range(2, 4) and name == "score/ae-killed"

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client, \
            worker_killed_at(client, "megaset.storage.store:StoreGroup.write_chunks", finishing_train_chunks_2_3,
                             tmp_path / "killed"):
        summary = score(trained, client, model="ae-killed",
                        checkpoint=f"{trained.training.output}/ae-shallow/best.pt")
    # Results lost with the killed worker are recomputed and find their chunks written: resumed.
    store = open_store(trained.store.url)
    assert summary["chunks"] == sum(g["chunks"] for g in summary["groups"].values())
    assert summary["events_scored"] <= sum(store.group(g).n_events for g in summary["groups"])
    for group in summary["groups"]:
        # Event by event, in store order: a missing (NaN) or misplaced score fails here.
        np.testing.assert_allclose(_column(trained, group, "score/ae-killed"), _direct(trained, group)[2], rtol=2e-6)
        for block in BLOCKS:
            assert np.isfinite(_column(trained, group, f"score/ae-killed.{block}")).all()
    assert verify(trained.store.url) == []


def _score_command(cfg: Config, tmp_path: Path, url: Path, model: str) -> str:
    """The `megaset score` command line scoring the store at ``url`` into ``score/<model>``."""
    import yaml
    from faults import MEGASET

    path = tmp_path / "config.yaml"
    resolved = {**cfg.replace(store={"url": str(url)}).resolved(), "cluster": {"workers": 1}}
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return f"{MEGASET} score -c {path} --model {model} --checkpoint {cfg.training.output}/ae-shallow/best.pt"


def _without_column(files: dict[str, bytes], model: str) -> dict[str, Any]:
    """A store's files with the score columns of ``model`` left out, and its checkpoint record
    from the attributes of the score groups (a score group holding nothing else, too)."""
    out: dict[str, Any] = {}
    for name, content in files.items():
        if f"/score/{model}" in name:
            continue
        if name.endswith("/score/zarr.json"):
            metadata = json.loads(content)
            metadata["attributes"].pop(model, None)
            if metadata["attributes"]:
                out[name] = metadata
        else:
            out[name] = content
    return out


@pytest.mark.slow
def test_full_disk_stops_scoring_with_a_clear_message_and_the_store_intact(trained, tmp_path):
    """The disk of a complete store fills up while `megaset score` adds a column: one clear
    message; everything else in the store is as before, byte for byte; the new column is
    visibly unfinished (NaN where unwritten), and a rerun with room completes it."""
    from faults import assert_refused, confined, small_disk, snapshot

    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    before = snapshot(Path(trained.store.url))
    # The new columns take about 320 KiB on tmpfs (4 KiB a file, 5 files a chunk, 11 chunks,
    # 24 metadata files): room for their metadata and two or three chunks.
    setup = small_disk(disk, {Path(trained.store.url): "store.zarr"}, room_kib=160)
    result = confined(setup, _score_command(trained, tmp_path, disk / "store.zarr", "ae-full"), keep=(disk, saved))
    assert_refused(result, disk / "store.zarr", "no space left on device", "free space on its filesystem",
                   "megaset score")
    url = saved / "store.zarr"
    assert _without_column(snapshot(url), "ae-full") == _without_column(before, "ae-full")
    problems = verify(str(url))
    assert problems and all("NaN/inf values in score/ae-full" in p for p in problems), problems

    moved = trained.replace(store={"url": str(url)})
    summary = score(moved, None, model="ae-full", checkpoint=f"{trained.training.output}/ae-shallow/best.pt")
    assert 0 < summary["resumed"] < summary["chunks"]
    for group in summary["groups"]:
        np.testing.assert_allclose(_column(moved, group, "score/ae-full"), _direct(moved, group)[2], rtol=2e-6)
    assert verify(str(url)) == []


@pytest.mark.slow
def test_scoring_a_store_without_write_permission_leaves_it_untouched(trained, tmp_path):
    from faults import assert_refused, snapshot, unprivileged

    url = tmp_path / "store.zarr"
    shutil.copytree(trained.store.url, url)
    before = snapshot(url)
    command = _score_command(trained, tmp_path, url, "ae-denied")
    prefix = unprivileged()
    subprocess.run(["chmod", "-R", "a-w", str(url)], check=True)
    try:
        result = subprocess.run([*prefix, "sh", "-c", command], capture_output=True, text=True, timeout=180,
                                check=False)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(url)], check=True)
    assert_refused(result, url, "permission denied", "check the permissions of that path", "megaset score")
    assert snapshot(url) == before


def test_a_checkpoint_records_the_store_it_was_trained_on_and_other_rmm_settings_are_refused(trained, tmp_path):
    """Same feature names, other RMM convention: the checkpoint's recorded settings decide."""
    store = open_store(trained.store.url)
    ckpt = load_checkpoint(f"{trained.training.output}/ae-shallow/best.pt")
    assert ckpt["rmm"] == store.attrs["rmm"] and ckpt["kind"] == "events"
    assert ckpt["stage"]["basis"]["upstream"] == {"mix": store.attrs["stage"]["fingerprint"]}
    assert ckpt["stage"]["basis"]["config"]["training"]["epochs"] == 1
    ckpt["rmm"] = {**ckpt["rmm"], "convention": "thesis"}
    path = save_checkpoint(tmp_path / "thesis.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"thesis.pt' was trained under other settings than store .* was built "
                                              r"with \(rmm.convention: 'thesis' there, 'chekanov' in the store\)"):
        score(trained, None, model="thesis", checkpoint=path)
    assert "score/thesis" not in store.group("test").columns()


def test_a_checkpoint_of_other_features_is_refused(trained, tmp_path):
    ckpt = load_checkpoint(f"{trained.training.output}/ae-shallow/best.pt")
    ckpt["feature_names"] = [*ckpt["feature_names"][:-1], "something_else"]
    path = save_checkpoint(tmp_path / "foreign.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"foreign.pt' was not trained on the features of store .*: found "
                                              r"feature 528 is 'something_else' there, 'delta_e_T_muo_4' in the store"):
        score(trained, None, model="foreign", checkpoint=path)
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*missing.pt"):
        score(trained, None, model="missing", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match=r"model name 'ae/deep' cannot name a score column"):
        score(trained, None, model="ae/deep")


@pytest.mark.slow
def test_cli_score_summarises_the_run(trained, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from megaset.cli import app

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**trained.resolved(), "cluster": {"workers": 1}}, sort_keys=False))
    checkpoint = f"{trained.training.output}/ae-shallow/best.pt"
    args = ["score", "-c", str(path), "--model", "ae-cli", "--checkpoint", checkpoint]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "score/ae-cli" in output and "events scored with" in output
    assert "per-block errors: met, mass, rapidity, energy" in output
    again = CliRunner().invoke(app, args)
    n_chunks = sum(open_store(trained.store.url).group(g).n_chunks for g in open_store(trained.store.url).group_names())
    assert again.exit_code == 0 and f"{n_chunks} chunks were already scored" in " ".join(again.output.split())
    np.testing.assert_allclose(_column(trained, "val", "score/ae-cli"), _direct(trained, "val")[2], rtol=2e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a CUDA device can score on it")
def test_scoring_on_cuda_without_a_device_is_refused_before_any_work(trained):
    cfg = trained.replace(scoring={"device": "cuda"})
    with pytest.raises(ConfigError, match=r"scoring.device='cuda', but torch sees no CUDA device in this process .*"
                                          r"set scoring.device: auto or cpu"):
        score(cfg, None, model="ae-nocuda")
    assert "score/ae-nocuda" not in open_store(trained.store.url).group("test").columns()
    assert scoring_device("auto", None) == "cpu" and scoring_device("cpu", None) == "cpu"


def test_the_scoring_device_is_validated():
    with pytest.raises(ValidationError, match=r"scoring.device"):
        Config.model_validate({"scoring": {"device": "gpu"}})
    with pytest.raises(ValidationError, match=r"scoring.gpu_batch_size"):
        Config.model_validate({"scoring": {"gpu_batch_size": 0}})


@pytest.mark.slow
def test_a_cluster_without_gpu_workers_scores_on_cpu_and_refuses_cuda(cluster_client):
    assert scoring_device("auto", cluster_client) == "cpu"
    # An adaptive cluster declaring GPUs but with no worker up yet: the tasks wait for GPU workers.
    assert scoring_device("auto", cluster_client, gpus_per_worker=1) == "cuda"
    with pytest.raises(ConfigError, match=r"scoring.device='cuda', but none of the cluster's 2 workers declares "
                                          r"the Dask resource GPU"):
        scoring_device("cuda", cluster_client)


def _cuda_initialized() -> bool:
    import torch

    return torch.cuda.is_initialized()


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_scoring_in_one_process_and_on_a_gpu_worker_equals_the_cpu(trained):
    from distributed import Client, LocalCluster

    best = f"{trained.training.output}/ae-shallow/best.pt"
    one = score(trained, None, model="ae-gpu-here", checkpoint=best)
    assert one["device"] == "cuda"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0",
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:
        summary = score(trained, client, model="ae-gpu-worker", checkpoint=best)
        assert summary["device"] == "cuda"
        assert all(client.run(_cuda_initialized).values())
    for group in summary["groups"]:
        expected = _direct(trained, group)[2]
        for model in ("ae-gpu-here", "ae-gpu-worker"):
            np.testing.assert_allclose(_column(trained, group, f"score/{model}"), expected, rtol=1e-4, atol=1e-7)
            assert np.isfinite(_column(trained, group, f"score/{model}.met")).all()
    assert verify(trained.store.url) == []


@pytest.mark.gpu
@pytest.mark.slow
def test_cpu_workers_on_a_gpu_machine_never_open_a_cuda_context(trained, cluster_client):
    summary = score(trained, cluster_client, model="ae-cpu-workers",
                    checkpoint=f"{trained.training.output}/ae-shallow/best.pt")
    assert summary["device"] == "cpu"
    assert not any(cluster_client.run(_cuda_initialized).values())
