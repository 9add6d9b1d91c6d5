"""Jet models training on a small real jet store (simulated, ingested, mixed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaset.config import Config
from megaset.training.adversary import Adversarial
from megaset.training.graph import GraphAE, node_features


@pytest.fixture(scope="module")
def jet_store(tmp_path_factory) -> Config:
    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.jets_simulate import simulate_jets
    from megaset.storage.mix import mix

    base = tmp_path_factory.mktemp("jets")
    cfg = Config.model_validate({
        "inputs": {"kind": "jets", "chunksize": 400},
        "jets": {"simulate": {"output": str(base / "jets"), "jets": 700, "signal_jets": 150, "jets_per_file": 700,
                              "samples": ["qcd", "top", "w"]}},
        "store": {"url": str(base / "store.zarr"), "chunk_len": 128},
        "training": {"output": str(base / "models"), "epochs": 3, "batch_size": 64, "scaling": "none",
                     "early_stopping": {"patience": 5}},
    })
    simulate_jets(cfg.jets.simulate)
    ingest(cfg, None)
    mix(cfg, None)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("model", ["graph-ae", "oneoff"])
def test_graph_models_train_and_score_a_jet_store(jet_store, model):
    from megaset.storage.store import open_store
    from megaset.training.score import score
    from megaset.training.trainer import train

    cfg = jet_store.replace(training={"model": model})
    out = train(cfg, None)
    losses = [e["loss"] for e in out["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    score(cfg, None)
    top = open_store(cfg.store.url).group("signal/top")
    values = top.read_chunk(0, (f"score/{model}",))[f"score/{model}"]
    assert np.isfinite(values).all() and values.std() > 0


@pytest.mark.slow
def test_adversary_and_latent_export_on_a_jet_store(jet_store):
    from megaset.storage.store import open_store
    from megaset.training.score import score
    from megaset.training.trainer import train

    cfg = jet_store.replace(training={"model": "jet-dense", "adversary": {"weight": 1.0}, "epochs": 2})
    train(cfg, None)
    score(cfg, None)
    test = open_store(cfg.store.url).group("test")
    latent = test.read_chunk(0, ("latent/jet-dense",))["latent/jet-dense"]
    assert latent.shape[1] == 6 and np.isfinite(latent).all()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["jet-dense", "jet-cnn"])
def test_image_autoencoders_score_top_jets_above_qcd(jet_store, model):
    """Farina et al.: trained on QCD, the image autoencoders reconstruct top jets worse. A model
    stuck at the uniform (or any fixed) image instead ranks the one-core QCD jets highest."""
    from megaset.report.metrics import auc
    from megaset.storage.store import open_store
    from megaset.training.score import score
    from megaset.training.trainer import train

    cfg = jet_store.replace(training={"model": model, "architecture": {"jet_cnn_channels": [8, 8, 8]}})
    train(cfg, None)
    score(cfg, None)
    store = open_store(cfg.store.url)
    column = f"score/{model}"
    qcd, top = (np.concatenate([c[column] for _, c in store.group(g).iter_chunks((column,))])
                for g in ("test", "signal/top"))
    assert auc(qcd, top, np.ones_like(qcd), np.ones_like(top)) > 0.65


def test_image_autoencoders_start_at_the_mean_image_reading_unit_rms_inputs():
    from megaset.config import ArchitectureConfig
    from megaset.training.registry import build_model

    rng = np.random.default_rng(1)
    images = rng.exponential(1.0, (64, 1600)) * (rng.random((64, 1600)) < 0.05)
    images[:, 820] += 30.0  # a hard core in one pixel, as in a QCD jet
    images = torch.from_numpy(images / images.sum(axis=1, keepdims=True)).float()
    mean, rms = images.mean(dim=0), float(images.pow(2).mean().sqrt())
    for name in ("jet-dense", "jet-cnn"):
        model = build_model(name, 1600, ArchitectureConfig(jet_cnn_channels=[4, 4, 4]))
        model.start_from_train(mean, rms)
        with torch.no_grad():
            out = model.reconstruct(images)
            reach = model.encode(images).std(dim=0).mean()
            reach_raw = model.encode(images * rms).std(dim=0).mean()  # the layers see the raw pixels
        to_mean = ((out - mean) ** 2).sum(dim=1).sqrt()
        to_uniform = ((out - 1.0 / 1600) ** 2).sum(dim=1).sqrt()
        # The started output sits near the mean image, far from the uniform one ...
        assert (to_mean < 0.25 * to_uniform).all(), name
        # ... and the jet-to-jet differences reach the latent far more than from the raw pixels.
        assert float(model.input_scale) == pytest.approx(1.0 / rms) and reach > 5 * reach_raw, name


def test_width_normalisation_gives_every_jet_unit_width():
    rng = np.random.default_rng(0)
    x = np.zeros((5, 8, 4), dtype=np.float32)
    x[:, :, 0] = rng.uniform(1, 10, (5, 8))
    x[:, :, 1:3] = rng.normal(0, 1, (5, 8, 2)) * np.array([0.05, 0.1, 0.2, 0.4, 0.8])[:, None, None]
    feats, _ = node_features(torch.from_numpy(x.reshape(5, -1)))
    width = torch.sqrt((feats[..., 1:] ** 2).sum(2).mean(1))  # every node counted alike
    np.testing.assert_allclose(width.numpy(), 1.0, rtol=1e-5)
    raw, _ = node_features(torch.from_numpy(x.reshape(5, -1)), normalise=False)
    assert (raw[..., 1:].abs().amax(dim=(1, 2)).diff() > 0).all()  # the raw widths grow, as made


def test_a_narrow_jets_soft_wide_constituents_stay_within_reach():
    """A one-core QCD-like jet: one 800 GeV constituent at the axis, 15 soft ones of 0.5 GeV up
    to 0.8 away. Divided by the pT-weighted width (~0.03) they sat 25 units out, so QCD jets had
    the largest graph-AE errors and every signal an AUC below 0.5; now no node of a jet of n
    real nodes is further than sqrt(n) from the centre (equality: one node carries all the width)."""
    n = 16
    x = np.zeros((2, 20, 4), dtype=np.float32)
    x[:, 0, 0] = 800.0
    x[:, 1:n, 0] = 0.5
    angles = np.linspace(0, 2 * np.pi, n - 1, endpoint=False)
    x[:, 1:n, 1], x[:, 1:n, 2] = 0.8 * np.cos(angles), 0.8 * np.sin(angles)
    x[1, :n, 1:3] *= 0.1  # the same jet ten times narrower: the same normalised nodes
    feats, mask = node_features(torch.from_numpy(x.reshape(2, -1)))
    radius = feats[..., 1:].norm(dim=2)
    assert mask.sum(1).tolist() == [n, n]
    assert float(radius.max()) <= np.sqrt(n) and float(radius[0, 1:n].max()) < 1.1
    torch.testing.assert_close(feats[0], feats[1], rtol=1e-4, atol=1e-5)


def test_graph_convolutions_keep_what_tells_the_nodes_apart():
    """At unit width the Gaussian adjacency is nearly uniform; with A H W alone every node then
    gets the jet's mean state, and two jets that differ only in which node carries which pT
    fraction would have the same latent. Nodes at one point give an exactly uniform adjacency."""
    from megaset.training.graph import _GraphEncoder

    torch.manual_seed(0)
    encoder = _GraphEncoder(3, 8, 3, bias=True)
    feats = torch.tensor([[[0.7, 0.0, 0.0], [0.2, 0.0, 0.0], [0.1, 0.0, 0.0]],
                          [[0.1, 0.0, 0.0], [0.2, 0.0, 0.0], [0.7, 0.0, 0.0]]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        latent = encoder(feats, mask)
    assert float((latent[0] - latent[1]).abs().max()) > 1e-3


def test_the_adversary_sees_the_mass_only_in_training_rows():
    base = GraphAE(16, 3, 8, True)
    model = Adversarial(base, 16, 3, weight=2.0, on="latent", scale=100.0, hidden=4)
    x = torch.rand(6, 16)
    with_mass = torch.cat([x, torch.full((6, 1), 80.0)], dim=1)
    assert torch.equal(model.reconstruction_error(x), model.reconstruction_error(with_mass))
    _, penalty = model(with_mass)
    assert penalty.shape == (6,) and (penalty > 0).all()
