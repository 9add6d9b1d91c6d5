"""A normalizing flow on the scaled rows (RealNVP, Dinh et al. 2017), scored by its negative
log-likelihood: the density-estimate family that won the Dark Machines unsupervised challenge.

The flow maps an event ``x [F]`` to ``z = f(x)`` with a tractable Jacobian and models
``log p(x) = log N(z; 0, 1) + log |det df/dx|``:

1. a fixed standardisation, ``(x - mean) / std`` per feature, from one pass over the train group
   before the first step (:meth:`RealNVP.start_from_pass`, summed over the DDP ranks), with
   ``std = sqrt(var + noise^2)``, so that a cell that is always empty still has a scale;
2. ``layers`` affine coupling layers: each splits the features into a random half ``a`` (drawn
   once per layer from a fixed seed and stored with the weights) and the rest ``b``, and maps
   ``x_b -> x_b * exp(s(x_a)) + t(x_a)`` with ``s, t`` from one MLP (two hidden layers of
   ``hidden`` units); ``s = scale * tanh(.)`` keeps each step's volume change bounded, and the
   MLP's last layer starts at zero, so that the untrained flow is the standardisation alone,
   the per-feature Gaussian (the baseline it is meant to beat).

Dequantisation: an RMM is mostly exact zeros (empty cells), on which a flow could pile up an
unbounded density. In training mode every input is smeared by a Gaussian of width ``noise``
(``training.architecture.flow_noise``, in scaled units); validation and scoring read the
rows as they are, deterministically. On a demo-like store (1 M background events, the
2-lepton selection, the zoo's signals, 2-core CPU), a width of 0.05 separated the signals
better than 0.002, 0.01 or 0.1 (signal efficiency at 1 % background efficiency for heavy
H -> ZZ -> llvv: 0.78 against 0.25 at 0.01), yet the flow's AUC stayed below ``ae-shallow``'s
for every signal there (one seed each): a density model of the RMM is no better score by itself.

Objective and score: the training error is the negative log-likelihood per feature,
``-log p(x) / F`` (the per-feature scale of the autoencoders' mean squared error; it may be
negative). The score written to ``score/flow`` is ``softplus(-log p(x) / F)``: the same ordering
(softplus is increasing), but positive, as the report's logarithmic axis needs, and equal to
the NLL per feature wherever that is large (above a few units), i.e. in the tail.

The flow reconstructs no rows, so scoring writes no per-block errors for it.

>>> flow = RealNVP(6, layers=2, hidden=8, noise=0.01)
>>> flow.reconstruction_error(torch.zeros(3, 6)).shape
torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from megaset.training.models import Autoencoder

__all__ = ["RealNVP"]

#: Seed of the features' split in the coupling layers: the same split for every run.
_SPLIT_SEED = 20170527


class _Coupling(nn.Module):
    """``x_b -> x_b * exp(s(x_a)) + t(x_a)``; ``forward`` returns the new rows and log |det|."""

    def __init__(self, n_features: int, hidden: int, generator: torch.Generator):
        super().__init__()
        order = torch.randperm(n_features, generator=generator)
        half = n_features // 2
        self.register_buffer("a", order[:half].sort().values)
        self.register_buffer("b", order[half:].sort().values)
        self.register_buffer("inverse", torch.argsort(torch.cat([self.a, self.b])))
        n_b = n_features - half
        self.net = nn.Sequential(nn.Linear(half, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.01), nn.Linear(hidden, 2 * n_b))
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.scale = nn.Parameter(torch.ones(n_b))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, self.a], x[:, self.b]
        s, t = self.net(x_a).chunk(2, dim=1)
        s = self.scale * torch.tanh(s)
        return torch.cat([x_a, x_b * torch.exp(s) + t], dim=1)[:, self.inverse], s.sum(1)


class RealNVP(Autoencoder):
    """Affine-coupling flow with a fixed standardisation (see the module docstring)."""

    def __init__(self, n_features: int, layers: int, hidden: int, noise: float):
        super().__init__()
        generator = torch.Generator().manual_seed(_SPLIT_SEED)
        self.couplings = nn.ModuleList(_Coupling(n_features, hidden, generator) for _ in range(layers))
        self.noise = noise
        # From the first pass over the train group; saved with the weights, never trained.
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(nll [N, 1], 0)``: the negative log-likelihood per feature, as the "reconstruction"
        that :meth:`error` reads."""
        if self.training:
            x = x + self.noise * torch.randn_like(x)
        z = (x - self.mean) / self.std
        log_det = -torch.log(self.std).sum().expand(x.shape[0])
        for coupling in self.couplings:
            z, step = coupling(z)
            log_det = log_det + step
        log_p = -0.5 * (z**2).sum(1) - 0.5 * math.log(2 * math.pi) * x.shape[1] + log_det
        return (-log_p / x.shape[1])[:, None], x.new_zeros(x.shape[0])

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """The negative log-likelihood per feature (``reconstruction``, from :meth:`forward`)."""
        return reconstruction[:, 0]

    def anomaly_score(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """``softplus`` of the negative log-likelihood per feature: its ordering, always positive."""
        return nn.functional.softplus(reconstruction[:, 0])

    def start_from_pass(self, batches: Iterable[Tensor], total: Callable[[Tensor], Tensor]) -> None:
        """The standardisation: each feature's mean and ``sqrt(var + noise^2)`` over the train group."""
        n = len(self.mean)
        sums = torch.zeros(2 * n + 1, dtype=torch.float64, device=self.mean.device)
        for x in batches:
            x = x.double()
            sums[:n] += x.sum(0)
            sums[n:-1] += (x**2).sum(0)
            sums[-1] += len(x)
        sums = total(sums)
        mean = sums[:n] / sums[-1]
        var = (sums[n:-1] / sums[-1] - mean**2).clamp(min=0)
        self.mean.copy_(mean)
        self.std.copy_(torch.sqrt(var + self.noise**2))
