"""Models on a jet's constituents: a graph autoencoder, one-off networks, and N-subjettiness cuts.

Inputs are rows of the store's ``constituents`` column flattened, ``[N, K * 4]``: the K hardest
constituents as (pT, delta eta, delta phi, E), zero padded (:mod:`megaset.pipeline.jet_features`).

**Node features and grapa-style normalisation.** Each real constituent becomes a node with
(pT fraction, x, y), where (x, y) is its position relative to the pT-weighted centroid. With
``normalise`` (the default) x and y are divided by the jet's width, the RMS distance of its
real nodes to the centroid, every node counted alike: every jet then has unit width, and no
node lies further than sqrt(K) from the centre. Klüttermann's graph autoencoders (grapa) found
that an autoencoder on raw positions scores mainly the jet width, which separates top from QCD
jets but says nothing about new physics beyond "wider"; normalised inputs remove that trivial
feature. The width is deliberately not pT-weighted: a one-core QCD jet has a tiny pT-weighted
width, so dividing by it threw its soft wide-angle constituents tens of units out, where no
decoder reconstructs them; QCD then had the largest errors of all and every signal an AUC
below 0.5 (0.15 for top, 0.03 for the gluino in the jet demo).

**Graph autoencoder** (``graph-ae``). Edges join every pair of real nodes with a Gaussian
weight exp(-d^2 / 2) of their distance in the (normalised) plane, rows normalised; two graph
convolutions H' = relu(A H W + H V), the node states flattened into a dense layer and the
latent; the decoder maps the latent back to K x 3 node features. The node's own term H V
keeps what tells the nodes apart: at unit width most pairs of nodes are within one unit, so
A is nearly uniform and A H W alone gives every node nearly the jet's mean state. The error is
the mean squared error over the real nodes' features.

**One-off networks** (``oneoff``, grapa's "oneoff networks"). The same graph encoder without
bias terms and a scalar output trained to give 1 for every training jet; the score is
(f(x) - 1)^2. Without biases the network cannot output a constant, so it learns 1 only on the
training manifold: a very general anomaly detector whose separations are weaker.

**N-subjettiness cuts** (``tau32``, ``tau21``): no training; the score is 1 - tau_N / tau_{N-1},
larger for jets of more prongs (tau32 for 3-prong tops, tau21 for 2-prong W / Z / H), read from
the ``tau`` column.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from megaset.training.models import Autoencoder

__all__ = ["GraphAE", "OneOff", "TauRatio", "node_features", "FIELDS"]

#: Fields of each constituent in the input rows.
FIELDS = 4
_EPS = 1e-6


def node_features(x: Tensor, normalise: bool = True) -> tuple[Tensor, Tensor]:
    """Node features ``[N, K, 3]`` (pT fraction, x, y) and the mask of real nodes ``[N, K]``.

    >>> row = torch.tensor([[3.0, 0.1, 0.0, 3.0, 1.0, -0.3, 0.0, 1.0]])
    >>> feats, mask = node_features(row, normalise=False)
    >>> feats[0, :, 1].tolist(), mask.tolist()
    ([0.10000000149011612, -0.30000001192092896], [[True, True]])
    """
    nodes = x.view(x.shape[0], -1, FIELDS)
    pt = nodes[..., 0]
    mask = pt > 0
    total = pt.sum(dim=1, keepdim=True).clamp(min=_EPS)
    frac = pt / total
    centre = torch.stack([(frac * nodes[..., k]).sum(dim=1) for k in (1, 2)], dim=1)
    pos = nodes[..., 1:3] - centre[:, None, :]
    pos = pos * mask[..., None]
    if normalise:
        n_real = mask.sum(dim=1).clamp(min=1)
        width = torch.sqrt((pos**2).sum(dim=(1, 2)) / n_real).clamp(min=_EPS)
        pos = pos / width[:, None, None]
    return torch.cat([frac[..., None], pos], dim=2), mask


def _adjacency(feats: Tensor, mask: Tensor) -> Tensor:
    pos = feats[..., 1:3]
    d2 = ((pos[:, :, None, :] - pos[:, None, :, :]) ** 2).sum(dim=3)
    a = torch.exp(-0.5 * d2) * (mask[:, :, None] & mask[:, None, :])
    return a / a.sum(dim=2, keepdim=True).clamp(min=_EPS)


class _GraphEncoder(nn.Module):
    def __init__(self, k: int, hidden: int, latent: int, bias: bool):
        super().__init__()
        self.conv = nn.ModuleList([nn.Linear(3, hidden, bias=bias), nn.Linear(hidden, hidden, bias=bias)])
        # The node's own term (V in the module docstring).
        self.own = nn.ModuleList([nn.Linear(3, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)])
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(k * hidden, latent, bias=bias))

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        a, h = _adjacency(feats, mask), feats
        for layer, own in zip(self.conv, self.own, strict=True):
            h = torch.relu(a @ layer(h) + own(h)) * mask[..., None]
        return self.dense(h)


class GraphAE(Autoencoder):
    """Graph autoencoder on the ``k`` leading constituents (see the module docstring)."""

    def __init__(self, n_features: int, latent: int, hidden: int, normalise: bool):
        super().__init__()
        self.k = n_features // FIELDS
        self.normalise = normalise
        self.encoder = _GraphEncoder(self.k, hidden, latent, bias=True)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden * 2), nn.ReLU(), nn.Linear(hidden * 2, self.k * 3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, mask = node_features(x, self.normalise)
        out = self.decoder(self.encoder(feats, mask)).view(x.shape[0], self.k, 3)
        return out.reshape(x.shape[0], -1), x.new_zeros(x.shape[0])

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(*node_features(x, self.normalise))

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """Mean squared error over the features of the real nodes."""
        feats, mask = node_features(x, self.normalise)
        squared = ((reconstruction.view_as(feats) - feats) ** 2).sum(dim=2) * mask
        return squared.sum(dim=1) / (3 * mask.sum(dim=1).clamp(min=1))


class OneOff(Autoencoder):
    """A bias-free graph network trained to output 1 on the training jets; score (f(x) - 1)^2."""

    def __init__(self, n_features: int, hidden: int, normalise: bool):
        super().__init__()
        self.normalise = normalise
        self.encoder = _GraphEncoder(n_features // FIELDS, hidden, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(*node_features(x, self.normalise)), x.new_zeros(x.shape[0])

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        return (reconstruction[:, 0] - 1.0) ** 2


class TauRatio(Autoencoder):
    """The cut baseline 1 - tau_N / tau_{N-1} on rows of (tau_1, ..., tau_M); nothing to train.

    >>> TauRatio(5, 3).reconstruction_error(torch.tensor([[0.3, 0.2, 0.1, 0.05, 0.02]])).tolist()
    [0.5]
    """

    def __init__(self, n_features: int, n: int):
        super().__init__()
        self.n = n
        # A parameterless module has nothing to optimise; this buffer records n in the state.
        self.register_buffer("order", torch.tensor(n))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        num, den = x[:, self.n - 1], x[:, self.n - 2]
        return torch.where(den > 0, 1.0 - num / den.clamp(min=_EPS), torch.zeros_like(den))
