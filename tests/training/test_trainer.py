from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from megaset.config import TrainingConfig
from megaset.errors import CheckpointError, ConfigError, TrainingError
from megaset.storage.store import open_store
from megaset.training.checkpoint import load_checkpoint, load_model
from megaset.training.loop import event_weights, weight_norm
from megaset.training.scaling import Scaling
from megaset.training.trainer import train

#: Settings with which each model learns the tiny store in a few epochs.
SETTINGS = {
    "ae-shallow": {"learning_rate": 1e-2, "epochs": 4},
    "ae-deep": {"learning_rate": 3e-3, "epochs": 3},
    "vae-shallow": {"learning_rate": 1e-2, "epochs": 5, "architecture": {"kl_weight": 0.1}},
    "vae-deep": {"learning_rate": 3e-3, "epochs": 6, "architecture": {"kl_weight": 0.1}},
    "cnn": {"learning_rate": 1e-2, "epochs": 5, "batch_size": 32,
            "architecture": {"latent": 8, "cnn_channels": [16, 16], "cnn_dense": 64}},
    "pca": {"architecture": {"pca_variance": 0.95}},
    "ae-ensemble": {"learning_rate": 1e-2, "epochs": 4, "architecture": {"ensemble_members": 3}},
}


def _config(store_cfg, tmp_path, **training):
    base = {"output": str(tmp_path / "models"), "batch_size": 64, "architecture": {"latent": 4}}
    arch = {**base["architecture"], **training.pop("architecture", {})}
    return store_cfg.replace(training={**base, **training, "architecture": arch})


def _val(cfg):
    store = open_store(cfg.store.url)
    scaling = Scaling.from_scaler(store.scaler)
    train_x = np.concatenate([scaling(c["rmm"]) for _, c in store.group("train").iter_chunks(("rmm",))])
    chunks = [c for _, c in store.group("val").iter_chunks()]
    x = np.concatenate([scaling(c["rmm"]) for c in chunks]).astype(np.float64)
    w = np.concatenate([c["weight"] for c in chunks]).astype(np.float64)
    return x, w, train_x.mean(0)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_model_learns_better_than_the_per_feature_mean(tiny_store, tmp_path, name):
    cfg = _config(tiny_store, tmp_path, model=name, **SETTINGS[name])
    seen = []
    summary = train(cfg, progress=seen.append)
    x, w, mean = _val(cfg)
    baseline = np.sum(w * ((x - mean) ** 2).mean(1)) / np.sum(w)
    best = min(h["val_error"] for h in summary["history"])
    assert best < 0.75 * baseline, (best, baseline)
    epochs = 1 if name == "pca" else cfg.training.epochs
    assert summary["epochs"] == len(summary["history"]) == len(seen) == epochs
    assert [e["epoch"] for e in seen] == list(range(1, epochs + 1))
    assert all(e["samples_per_s"] > 0 and e["val_loss"] >= e["val_error"] > 0 for e in seen)
    for path in (summary["checkpoints"]["best"], summary["checkpoints"]["last"]):
        load_checkpoint(path)
    with open(summary["loss_curve"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if name == "pca":
        assert 1 <= summary["latent"] < x.shape[1]
        with open(summary["scree_plot"], "rb") as f:
            assert f.read(4) == b"\x89PNG"


def test_val_loss_is_the_weighted_mean_error_of_the_best_model(tiny_store, tmp_path):
    cfg = _config(tiny_store, tmp_path, model="ae-shallow", learning_rate=1e-2, epochs=2)
    summary = train(cfg)
    model, _, meta = load_model(summary["checkpoints"]["best"])
    x, w, _ = _val(cfg)
    with torch.no_grad():
        recon = model(torch.from_numpy(x.astype(np.float32)))[0].double().numpy()
    error = ((recon - x) ** 2).mean(1)
    # The monitored loss counts every event by |w|: a negative-weight event cannot lower it.
    expected = np.sum(np.abs(w) * error) / np.sum(np.abs(w))
    assert summary["best_val_loss"] == pytest.approx(expected, rel=1e-5)
    assert (w < 0).any()
    best = summary["history"][summary["best_epoch"] - 1]
    assert best["val_loss_weighted"] == pytest.approx(np.sum(w * error) / np.sum(w), rel=1e-5)
    assert meta["progress"]["best_epoch"] == summary["best_epoch"]
    assert meta["config"]["training"]["model"] == "ae-shallow"


def test_event_weight_policies_and_normalisation(tiny_store):
    w = torch.tensor([2.0, -1.0, 0.5])
    assert event_weights(w, TrainingConfig()).tolist() == [2.0, -1.0, 0.5]
    assert event_weights(w, TrainingConfig(negative_weights="abs")).tolist() == [2.0, 1.0, 0.5]
    assert event_weights(w, TrainingConfig(negative_weights="zero")).tolist() == [2.0, 0.0, 0.5]
    assert event_weights(w, TrainingConfig(weighted=False)).tolist() == [1.0, 1.0, 1.0]
    group = open_store(tiny_store.store.url).group("train")
    raw = np.concatenate([c["weight"] for _, c in group.iter_chunks(("weight",))]).astype(np.float64)
    assert weight_norm(group, TrainingConfig()) == pytest.approx(len(raw) / raw.sum())
    assert weight_norm(group, TrainingConfig(negative_weights="abs")) == pytest.approx(len(raw) / np.abs(raw).sum())


def test_weights_summing_to_zero_are_refused(tiny_store):
    class Negative:
        name = "train"

        def iter_chunks(self, columns):
            yield 0, {"weight": np.array([-1.0, -2.0])}

    with pytest.raises(ConfigError, match=r"weights of group 'train' sum to -3 .*use 'abs' or 'zero'"):
        weight_norm(Negative(), TrainingConfig())


def test_early_stopping_keeps_the_best_checkpoint(tiny_store, tmp_path):
    cfg = _config(tiny_store, tmp_path, model="ae-shallow", epochs=10,
                  early_stopping={"patience": 2, "min_delta": 10.0})
    summary = train(cfg)
    # Only the first epoch improves on infinity by more than min_delta.
    assert summary["epochs"] == 3 and summary["stopped_early"]
    assert summary["best_epoch"] == 1
    assert [h["improved"] for h in summary["history"]] == [True, False, False]
    assert load_checkpoint(summary["checkpoints"]["best"])["progress"]["epoch"] == 1
    assert load_checkpoint(summary["checkpoints"]["last"])["progress"]["epoch"] == 3


def test_training_from_the_loaders_cache_ends_as_training_from_the_store(tiny_store, tmp_path):
    settings = {"model": "ae-shallow", "epochs": 3, "learning_rate": 1e-2}
    cached = train(_config(tiny_store, tmp_path / "cached", **settings))
    read = train(_config(tiny_store, tmp_path / "read", **settings, loader={"cache_mib": 0}))
    assert [h["val_loss"] for h in cached["history"]] == [h["val_loss"] for h in read["history"]]
    a = load_checkpoint(cached["checkpoints"]["last"])["state"]
    b = load_checkpoint(read["checkpoints"]["last"])["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_store, tmp_path):
    train(_config(tiny_store, tmp_path, model="ae-shallow", epochs=1, learning_rate=1e-2))
    changed = _config(tiny_store, tmp_path, model="ae-shallow", epochs=2, learning_rate=2e-2)
    with pytest.raises(CheckpointError, match=r"training.learning_rate is 0.01 there, found 0.02 instead"):
        train(changed, resume=True)


_KILLABLE = textwrap.dedent("""
    import json, sys, time
    import torch
    from megaset.config import Config
    from megaset.training.trainer import train

    torch.set_num_threads(1)

    def stall(entry):
        print("epoch", entry["epoch"], flush=True)
        if entry["epoch"] == 2:
            time.sleep(600)

    train(Config.model_validate(json.loads(sys.argv[1])), progress=stall)
""")


@pytest.mark.slow
def test_killed_and_resumed_training_ends_like_an_uninterrupted_run(tiny_store, tmp_path):
    # A VAE draws random numbers every step: the resumed run must draw the same ones.
    settings = {"model": "vae-shallow", "epochs": 4, "learning_rate": 1e-2}
    cfg = _config(tiny_store, tmp_path / "killed", **settings)
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(cfg.resolved())],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "epoch 2":
                break
    finally:
        proc.kill()
        proc.wait()
    assert load_checkpoint(tmp_path / "killed/models/vae-shallow/last.pt")["progress"]["epoch"] == 2

    resumed = train(cfg, resume=True)
    whole = train(_config(tiny_store, tmp_path / "whole", **settings))
    assert resumed["epochs"] == whole["epochs"] == 4
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in whole["history"]]
    a = load_checkpoint(resumed["checkpoints"]["last"])["state"]
    b = load_checkpoint(whole["checkpoints"]["last"])["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_keep_no_credential_of_the_config(tiny_store, tmp_path):
    from faults import CLUSTER_WITH_SECRETS, SECRET

    cfg = _config(tiny_store, tmp_path, model="ae-shallow", epochs=1).replace(cluster=CLUSTER_WITH_SECRETS)
    train(cfg)
    saved = sorted((tmp_path / "models" / "ae-shallow").glob("*.pt"))
    assert saved
    for path in saved:
        config = json.dumps(load_checkpoint(path)["config"])
        assert SECRET not in config and '"AWS_SECRET_ACCESS_KEY": "<redacted>"' in config
        assert SECRET.encode() not in path.read_bytes()


def test_a_rank_whose_worker_is_paused_for_memory_stops_the_training_with_its_name(tiny_store, tmp_path,
                                                                                    monkeypatch):
    """A worker past Dask's pause fraction never starts its rank (its peers would wait out the
    process-group timeout): the training says so after the grace period, naming the worker."""
    from faults import paused_worker

    from megaset.storage import tasks

    monkeypatch.setattr(tasks, "_CHECK_S", 0.5)
    monkeypatch.setattr(tasks, "_PAUSED_S", 2.0)
    cfg = _config(tiny_store, tmp_path, model="ae-shallow", epochs=1, ddp={"world_size": 1})
    with paused_worker() as client, pytest.raises(
            TrainingError, match=r"distributed training cannot start: the workers of the ranks not started have "
                                 r"been paused by Dask for memory for \d+ s \(tcp://127\.0\.0\.1:\d+ at "
                                 r"[\d.]+ MiB of its 200\.00 MiB limit\).*cluster\.memory_per_worker"):
        train(cfg, client)
