"""An ensemble of shallow autoencoders trained together, scored by their standardised errors.

``K`` members (``training.architecture.ensemble_members``, 5 by default), each the thesis'
``ae-shallow`` with the configured latent size, are held in one module and trained in one run
of the DDP trainer. The members are drawn one after the other from the generator seeded with
``training.seed``, so each starts from weights of its own; they see the same batches, so they
differ by their starting point alone (the usual deep-ensemble recipe of Lakshminarayanan et
al., 2017, without bootstrap samples, which would need a loader per member).

Training objective: the mean over members of each member's mean squared error. It is the sum
the members would minimise apart divided by ``K`` (Adam steps do not depend on that factor),
and it keeps the validation loss on the scale of a single autoencoder's, so the two can be
compared on one plot or against the per-feature-mean baseline.

Score: the mean over members of each member's error divided by that member's median error on
the validation group, ``s(x) = 1/K sum_k e_k(x) / median_val(e_k)``. The division puts every
member on the same footing (a member that converged to a larger error overall would otherwise
weigh more in the mean); the median is robust to the tail that the score is meant to find,
and it is one number per member (the lower median of an even count), kept in the checkpoint
as the ``scale`` buffer, set at every epoch's validation (:meth:`AEEnsemble.calibrate`), so
that each checkpoint holds the calibration of its own weights. A rank average (each member's
error replaced by its quantile among the validation errors) is the other common choice; it
needs a quantile table per member in the checkpoint and is flat beyond the last validation
event, exactly where tight working points (1e-3 background efficiency) lie, whereas the
standardised mean keeps every member's ordering of the tail. The median is unweighted: it is
a scale, not a physics quantity, and weights of either sign would leave a weighted median ill
defined.

Like Deep SVDD, the model reconstructs no single row (its "reconstruction" stacks the members'
``[N, K, F]``), so scoring writes no per-block errors for it.

>>> model = AEEnsemble(16, 3, 4, [], ["tanh", "leaky_relu"], 0.3)
>>> model(torch.zeros(2, 16))[0].shape
torch.Size([2, 3, 16])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from megaset.training.models import Autoencoder, DenseAE

__all__ = ["AEEnsemble"]


class AEEnsemble(Autoencoder):
    """``members`` dense autoencoders in one module (see the module docstring)."""

    calibrates = True

    def __init__(self, n_features: int, members: int, latent: int, hidden: list[int], activations: list[str],
                 slope: float):
        super().__init__()
        self.members = nn.ModuleList(DenseAE(n_features, latent, hidden, activations, slope) for _ in range(members))
        # Each member's median validation error; 1 until the first validation.
        self.register_buffer("scale", torch.ones(members))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.stack([m(x)[0] for m in self.members], dim=1), x.new_zeros(x.shape[0])

    def member_errors(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """Each member's mean squared error over features, ``[N, K]``."""
        return torch.mean((reconstruction - x[:, None, :]) ** 2, dim=2)

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """The training error: the mean over members of their errors."""
        return self.member_errors(reconstruction, x).mean(1)

    def anomaly_score(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """The mean over members of their errors divided by their median validation errors."""
        return (self.member_errors(reconstruction, x) / self.scale).mean(1)

    def calibration_values(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        return self.member_errors(reconstruction, x)

    def calibrate(self, values: Tensor) -> None:
        """``scale`` from the members' validation errors ``values [N_val, K]``: their medians
        (the lower of the middle two for an even count; none below float32's tiniest, so that
        the score stays finite)."""
        medians = values.median(dim=0).values.clamp(min=torch.finfo(torch.float32).tiny)
        self.scale.copy_(medians.to(self.scale.dtype))
