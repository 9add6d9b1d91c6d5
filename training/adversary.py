"""Adversarial mass decorrelation: an autoencoder trained against a mass regressor.

A small network regresses the jet mass (``training.adversary.column`` divided by ``scale``) from
the autoencoder's latent representation, or from its per-jet error (``on: score``), through a
gradient-reversal layer: the regressor descends on its squared error while the autoencoder
receives that gradient reversed and multiplied by ``weight`` (alpha), i.e. it minimises
``L_ae - alpha L_adv`` (Spannowsky's adversarial autoencoders; Farina et al.'s footnote 3). A
latent or a score from which the mass cannot be regressed does not sculpt the mass
distribution of the background when one cuts on the score.

The regressed column travels as one extra last input feature (the loader appends it); scoring
reads the features alone, so :class:`Adversarial` accepts rows with or without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from megaset.training.models import Autoencoder

__all__ = ["Adversarial", "reverse_gradient"]


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.alpha * grad, None


def reverse_gradient(x: Tensor, alpha: float) -> Tensor:
    """Identity forward; the gradient multiplied by ``-alpha`` backward.

    >>> x = torch.ones(2, requires_grad=True)
    >>> reverse_gradient(x, 3.0).sum().backward()
    >>> x.grad.tolist()
    [-3.0, -3.0]
    """
    return _Reverse.apply(x, alpha)


class Adversarial(Autoencoder):
    """``base`` with a mass regressor behind a gradient reversal (see the module docstring)."""

    def __init__(self, base: Autoencoder, n_features: int, latent: int, weight: float, on: str, scale: float,
                 hidden: int):
        super().__init__()
        self.base, self.n_features = base, n_features
        self.weight, self.on, self.scale = weight, on, scale
        width = latent if on == "latent" else 1
        self.regressor = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                       nn.Linear(hidden, 1))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if x.shape[1] > self.n_features:
            return x[:, : self.n_features], x[:, self.n_features]
        return x, None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features, mass = self._split(x)
        reconstruction, penalty = self.base(features)
        if mass is None:
            return reconstruction, penalty
        if self.on == "latent":
            summary = self.base.encode(features)
        else:
            summary = self.base.error(reconstruction, features)[:, None]
        guess = self.regressor(reverse_gradient(summary, self.weight))[:, 0]
        # The reversal makes the autoencoder maximise this term while the regressor minimises it.
        return reconstruction, penalty + (guess - mass / self.scale) ** 2

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.base.reconstruct(self._split(x)[0])

    def start_from_train(self, mean: Tensor, rms: float) -> None:
        self.base.start_from_train(mean, rms)

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        return self.base.error(reconstruction, self._split(x)[0])

    def encode(self, x: Tensor) -> Tensor:
        return self.base.encode(self._split(x)[0])
