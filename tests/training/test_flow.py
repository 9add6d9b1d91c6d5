from __future__ import annotations

import numpy as np
import pytest
import torch
from rows import scaled_rows, separations, stored_and_rebuilt

from megaset.config import ArchitectureConfig
from megaset.storage.store import open_store
from megaset.training.checkpoint import load_model
from megaset.training.flow import RealNVP
from megaset.training.registry import build_model, resolve_architecture
from megaset.training.score import score
from megaset.training.trainer import train

SETTINGS = {"model": "flow", "batch_size": 64, "learning_rate": 1e-2, "epochs": 4,
            "architecture": {"flow_layers": 4, "flow_hidden": 32}}
NOISE = ArchitectureConfig().flow_noise


@pytest.fixture(scope="module")
def trained(private_store):
    """A flow trained on (a copy of) the tiny store and scored into it."""
    cfg = private_store.replace(training=SETTINGS)
    return cfg, train(cfg), score(cfg)


def _gaussian_nll(x: np.ndarray, train_x: np.ndarray) -> np.ndarray:
    """Per event, the negative log-likelihood per feature of independent Gaussians of each
    feature's train mean and variance (plus the smearing's)."""
    mean, var = train_x.mean(0, dtype=np.float64), train_x.var(0, dtype=np.float64) + NOISE**2
    return (0.5 * (x - mean) ** 2 / var + 0.5 * np.log(2 * np.pi * var)).mean(1)


def test_the_untrained_flow_is_the_per_feature_gaussian(tiny_store):
    train_x = scaled_rows(tiny_store, "train")
    model = build_model("flow", 16, resolve_architecture("flow", 16, ArchitectureConfig()))
    model.start_from_pass((torch.from_numpy(train_x[i:i + 100]) for i in range(0, len(train_x), 100)), lambda t: t)
    model.eval()
    val = scaled_rows(tiny_store, "val")
    with torch.no_grad():
        nll = model.error(model(torch.from_numpy(val))[0], None).numpy()
    np.testing.assert_allclose(nll, _gaussian_nll(val.astype(np.float64), train_x), rtol=1e-4, atol=1e-5)


def test_each_coupling_changes_the_density_by_its_jacobian_determinant():
    torch.manual_seed(0)
    model = RealNVP(5, layers=3, hidden=8, noise=0.01).double().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(4, 5, dtype=torch.float64)
    for coupling in model.couplings:
        with torch.no_grad():
            log_det = coupling(x)[1]
        for i in range(len(x)):
            jacobian = torch.autograd.functional.jacobian(lambda row, c=coupling: c(row[None])[0][0], x[i])
            assert float(log_det[i]) == pytest.approx(float(torch.linalg.slogdet(jacobian)[1]), rel=1e-9)
        with torch.no_grad():
            x = coupling(x)[0]


def test_smearing_in_training_only():
    model = RealNVP(6, layers=2, hidden=8, noise=0.5)
    x = torch.rand(10, 6)
    assert not torch.equal(model.train()(x)[0], model(x)[0])
    assert torch.equal(model.eval()(x)[0], model(x)[0])


def test_the_trained_flow_beats_the_per_feature_gaussian(trained):
    cfg, summary, _ = trained
    val = scaled_rows(cfg, "val").astype(np.float64)
    baseline = _gaussian_nll(val, scaled_rows(cfg, "train"))
    chunks = open_store(cfg.store.url).group("val").iter_chunks(("weight",))
    w = np.abs(np.concatenate([c["weight"] for _, c in chunks]))
    # val_loss: the NLL per feature weighted by |w|; the untrained flow's equals the baseline's.
    assert summary["best_val_loss"] < np.sum(w * baseline) / np.sum(w) - 0.5
    gauss, found = separations(cfg, summary["checkpoints"]["best"])
    assert gauss < 0.6 and found > 0.95, (gauss, found)


def test_scoring_writes_the_softplus_of_the_nll_of_the_rebuilt_model_and_no_blocks(trained):
    cfg, _, scored = trained
    assert scored["column"] == "score/flow" and scored["blocks"] == []
    stored, direct, x = stored_and_rebuilt(cfg, "flow", "test")
    np.testing.assert_array_equal(stored, direct)
    model, _, _ = load_model(f"{cfg.training.output}/flow/best.pt")
    with torch.no_grad():
        nll = model(torch.from_numpy(x))[0][:, 0].double().numpy()
    assert (stored > 0).all()
    np.testing.assert_allclose(stored, np.log1p(np.exp(nll)), rtol=1e-5)
