from __future__ import annotations

import numpy as np
import pytest
import torch

from megaset.storage.store import open_store
from megaset.training.pca import fit_pca, suggest_latent
from megaset.training.scaling import Scaling


@pytest.fixture(scope="module")
def scaled(tiny_store):
    store = open_store(tiny_store.store.url)
    scaling = Scaling.from_scaler(store.scaler)
    group = store.group("train")
    x = np.concatenate([scaling(c["rmm"]) for _, c in group.iter_chunks(("rmm",))]).astype(np.float64)
    return tiny_store.store.url, scaling, x


def _numpy_pca(x: np.ndarray):
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, s**2 / (s**2).sum(), vt


def test_pca_matches_an_independent_svd(scaled):
    url, scaling, x = scaled
    model = fit_pca(url, "train", scaling, latent=3, variance=0.99, max_events=10**6)
    mean, ratio, vt = _numpy_pca(x)
    np.testing.assert_allclose(model.explained_variance_ratio.numpy(), ratio, atol=1e-5)
    np.testing.assert_allclose(model.mean.numpy(), mean, atol=1e-5)
    # Components are defined up to sign: compare the projection onto them.
    projection = model.components.double().T @ model.components.double()
    np.testing.assert_allclose(projection.numpy(), vt[:3].T @ vt[:3], atol=1e-4)
    recon = (x - mean) @ vt[:3].T @ vt[:3] + mean
    expected = ((recon - x) ** 2).mean(1)
    error = model.reconstruction_error(torch.from_numpy(x.astype(np.float32)))
    np.testing.assert_allclose(error.numpy(), expected, atol=1e-5)


def test_latent_size_from_the_scree(scaled):
    url, scaling, x = scaled
    _, ratio, _ = _numpy_pca(x)
    model = fit_pca(url, "train", scaling, latent=None, variance=0.9, max_events=10**6)
    k = int(np.argmax(np.cumsum(ratio) >= 0.9)) + 1
    assert model.components.shape == (k, x.shape[1])
    assert 1 < k < x.shape[1]


def test_fit_on_the_first_chunks_only(scaled):
    url, scaling, x = scaled
    model = fit_pca(url, "train", scaling, latent=2, variance=0.99, max_events=200)
    _, ratio, _ = _numpy_pca(x[:192])  # three chunks of 64 events fit under 200
    assert model.n_fitted == 192
    np.testing.assert_allclose(model.explained_variance_ratio.numpy(), ratio, atol=1e-5)


def test_suggest_latent():
    ratio = np.array([0.5, 0.3, 0.15, 0.05])
    assert [suggest_latent(ratio, v) for v in (0.5, 0.8, 0.81, 0.95, 1.0)] == [1, 2, 3, 3, 4]
