"""PCA baseline autoencoder (Farina et al. sec. II.B): fitted with dask-ml over the store's chunks.

The encoder projects the scaled features onto the first k principal components, the decoder
embeds them back; this minimises the mean squared error among linear projections. The explained
variance of every component (the scree plot) suggests the latent size k, as the smallest number
of components explaining ``pca_variance`` of the total variance (Farina et al. use the elbow or
95 % / 99 %); the same k can then be given to the networks.

>>> suggest_latent(np.array([0.6, 0.3, 0.05, 0.05]), 0.9)
2
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from megaset.training.models import Autoencoder

if TYPE_CHECKING:
    from megaset.training.scaling import Scaling

__all__ = ["PCAModel", "fit_pca", "suggest_latent"]


class PCAModel(Autoencoder):
    """Projection on the first ``latent`` principal components; its state is three buffers."""

    def __init__(self, n_features: int, latent: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("components", torch.zeros(latent, n_features))
        self.register_buffer("explained_variance_ratio", torch.zeros(n_features))
        self.n_fitted = 0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        centred = x - self.mean
        return centred @ self.components.T @ self.components + self.mean, x.new_zeros(x.shape[0])


def suggest_latent(explained_variance_ratio: np.ndarray, variance: float) -> int:
    """The smallest number of components whose explained variance reaches ``variance``."""
    cumulative = np.cumsum(explained_variance_ratio)
    k = int(np.searchsorted(cumulative, variance * cumulative[-1] - 1e-12)) + 1
    return min(k, len(explained_variance_ratio))


def _read_scaled(url: str, group: str, index: int, scaling: Scaling, column: str = "rmm") -> np.ndarray:
    from megaset.storage.store import open_store

    values = open_store(url).group(group).read_chunk(index, columns=(column,))[column]
    return scaling(values.reshape(len(values), -1))


def fit_pca(
    url: str, group: str, scaling: Scaling, *, latent: int | None, variance: float, max_events: int,
    column: str = "rmm",
) -> PCAModel:
    """Fit PCA on the events of a store group, one Dask task reading each chunk.

    Parameters
    ----------
    url, group
        The store and its group (``train``).
    column
        The column fitted (the store's feature column: ``rmm``, or a jet store's ``image``).
    scaling
        The input scaling the networks use, so that errors are comparable.
    latent
        Components kept; ``None``: :func:`suggest_latent` with ``variance``.
    variance
        Fraction of the variance the suggested latent size explains.
    max_events
        Fit on the first chunks up to this many events (at least one chunk). Every chunk holds
        the channel mixture of the group, so they are a faithful sample of it.

    Returns
    -------
    PCAModel
        Its ``explained_variance_ratio`` buffer holds the whole scree (every component);
        ``n_fitted`` says how many events the fit used.

    Notes
    -----
    Runs on the default Dask scheduler: the cluster of an active ``distributed.Client``, else
    local threads. The scaled chunks are persisted for the fit (dask-ml's exact SVD centres the
    data on its mean first, so every block is needed twice). The fit is unweighted, like
    Farina et al.'s.
    """
    import dask
    import dask.array as da
    from dask_ml.decomposition import PCA

    from megaset.storage.store import open_store

    store = open_store(url)
    g, n_features = store.group(group), len(scaling.offset)
    blocks, n_events = [], 0
    for i in range(g.n_chunks):
        s = g.chunk_slice(i)
        if blocks and n_events + (s.stop - s.start) > max_events:
            break
        read = dask.delayed(_read_scaled, pure=True)(url, group, i, scaling, column)
        blocks.append(da.from_delayed(read, shape=(s.stop - s.start, n_features), dtype=np.float32))
        n_events += s.stop - s.start
    # One block across the features, and blocks taller than wide, as dask-ml's tall-and-skinny
    # QR wants (a 40 x 40 jet image has more features than a chunk of 1024 jets has rows).
    x = da.concatenate(blocks).rechunk({0: max(2 * n_features, blocks[0].shape[0]), 1: -1}).persist()
    pca = PCA(svd_solver="full").fit(x)
    mean = np.asarray(pca.mean_)
    del x
    ratio = np.zeros(n_features)
    ratio[: len(pca.explained_variance_ratio_)] = pca.explained_variance_ratio_
    k = min(latent, len(pca.components_)) if latent else suggest_latent(ratio, variance)
    model = PCAModel(n_features, k)
    model.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.components.copy_(torch.as_tensor(pca.components_[:k], dtype=torch.float32))
    model.explained_variance_ratio.copy_(torch.as_tensor(ratio, dtype=torch.float32))
    model.n_fitted = n_events
    return model
