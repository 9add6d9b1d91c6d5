"""Deep SVDD (Ruff et al., ICML 2018): events mapped into a small hypersphere, scored by their
squared distance to its centre.

An encoder ``F -> *hidden -> latent`` of dense layers *without bias terms* maps every event to
a point; training pulls the background's points towards a centre ``c`` that is fixed before the
first step, at the mean embedding of the train group under the freshly initialised network (one
pass over it, every rank's share summed over the ranks: :meth:`DeepSVDD.start_from_pass`).
An event's score is ``||phi(x) - c||^2``, summed over the latent dimensions; the "one-class"
objective is its weighted mean over the train group (the loop's per-event loss, as for the
autoencoders).

Two guards against the trivial solution of Ruff et al.'s sec. 3.1, a network mapping every
input to ``c``: no layer has a bias (a constant output then needs all-zero weights, which map
every event to 0), and no component of ``c`` is closer to 0 than ``EPSILON`` (the components
within it are pushed out to ``+-EPSILON``, as Ruff et al.'s code does), so that the all-zero
map is no minimum. Their remaining condition, unbounded activations, is the default here
(leaky ReLU between layers, a linear output); a configuration may still choose tanh or
sigmoid, at the risk of saturated units acting as biases.

The model reconstructs nothing: its "reconstruction" is the embedding ``[N, latent]``, so no
per-block errors exist for it (scoring skips ``scoring.blocks``).

>>> model = DeepSVDD(16, 4, [8], ["leaky_relu", "linear"], 0.3)
>>> [layer.bias for layer in model.encoder if isinstance(layer, torch.nn.Linear)]
[None, None]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from megaset.training.models import Autoencoder, _stack

__all__ = ["DeepSVDD", "EPSILON"]

#: Smallest magnitude of a component of the centre (Ruff et al.'s code: 0.1).
EPSILON = 0.1


class DeepSVDD(Autoencoder):
    """One-class Deep SVDD: a bias-free encoder and a fixed centre (see the module docstring)."""

    def __init__(self, n_features: int, latent: int, hidden: list[int], activations: list[str], slope: float):
        super().__init__()
        self.encoder = _stack([n_features, *hidden, latent], activations, slope, bias=False)
        # A buffer: saved in checkpoints with the weights, never trained.
        self.register_buffer("centre", torch.zeros(latent))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x), x.new_zeros(x.shape[0])

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """The squared distance of the embedding (``reconstruction``) to the centre."""
        return torch.sum((reconstruction - self.centre) ** 2, dim=1)

    def encode(self, x: Tensor) -> Tensor:
        """The embedding ``phi(x)``."""
        return self.encoder(x)

    def start_from_pass(self, batches: Iterable[Tensor], total: Callable[[Tensor], Tensor]) -> None:
        """Fix the centre at the mean embedding of ``batches`` (over all ranks), every component
        at least :data:`EPSILON` from 0."""
        sums = torch.zeros(len(self.centre) + 1, dtype=torch.float64, device=self.centre.device)
        with torch.no_grad():
            for x in batches:
                sums[:-1] += self.encoder(x).sum(0).double()
                sums[-1] += len(x)
        sums = total(sums)
        centre = sums[:-1] / sums[-1]
        near = centre.abs() < EPSILON
        centre[near] = torch.where(centre[near] < 0, -EPSILON, EPSILON).to(centre.dtype)
        self.centre.copy_(centre)
