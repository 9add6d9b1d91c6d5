"""The model zoo: dense and variational autoencoders of the thesis, a Farina-style CNN, and PCA.

Every model maps a batch ``x [N, F]`` of scaled RMM rows to ``(reconstruction, penalty)``, where
``penalty [N]`` is the per-event term added to the reconstruction error in training (the KL
divergence of a VAE, zero otherwise), and exposes ``reconstruction_error(x) -> [N]``, the mean
squared error over features that scoring uses.

Thesis architectures (sec. 3.6), with the 529-node input and output layers of its figures read as
the first encoder layer's and the last decoder layer's activations:

==============  ============================================================================
ae-shallow      529 -tanh-> 150 -leaky-> 529
ae-deep         529 -tanh-> 450 -leaky-> 300 -relu-> 200 -leaky-> 150 -relu-> 200 -leaky-> 300
                -tanh-> 450 -leaky-> 529
vae-shallow     529 -> (mean, log-variance) 150 -> z -leaky-> 529
vae-deep        529 -tanh-> 400 -relu-> 300 -leaky-> 200 -> (mean, log-variance) 150 -> z
                -leaky-> 200 -relu-> 300 -tanh-> 400 -sigmoid-> 529
==============  ============================================================================

"leaky" is LeakyReLU with slope 0.3. The mean and log-variance heads of a VAE are linear, as in
every VAE; the thesis' Tanh "input" activation of the shallow VAE therefore has no layer of its
own, and the ReLU input activation of the deep VAE is the identity on min-max-scaled
(non-negative) inputs and is left out.

The registry (:mod:`megaset.training.registry`) builds them by name from these defaults, and the
score families beside them: Deep SVDD (:mod:`megaset.training.svdd`), an ensemble of shallow
autoencoders (:mod:`megaset.training.ensemble`) and a normalizing flow (:mod:`megaset.training.flow`).

>>> model = DenseAE(529, 150, [450, 300, 200], ["tanh"] * 8, 0.3)
>>> [layer.out_features for layer in model.layers if hasattr(layer, "out_features")]
[450, 300, 200, 150, 200, 300, 450, 529]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from megaset.errors import ConfigError
from megaset.storage.layout import matrix_side

__all__ = ["Autoencoder", "DenseAE", "DenseVAE", "ConvAE", "per_event_loss"]


class Autoencoder(nn.Module):
    """Base class: ``forward(x) -> (reconstruction, penalty)``, deterministic ``reconstruct``,
    and ``error(reconstruction, x) -> [N]``, the training error and anomaly score (the mean
    squared error over features here; models on other inputs, such as the graph autoencoder,
    define their own).

    The score families that reconstruct nothing use the same interface: Deep SVDD's
    "reconstruction" is its embedding and its error the squared distance to its centre
    (:mod:`megaset.training.svdd`); an ensemble's is every member's reconstruction, and its
    score (:meth:`anomaly_score`) standardises the members' errors
    (:mod:`megaset.training.ensemble`); a flow's is its negative log-likelihood
    (:mod:`megaset.training.flow`). Two hooks of the training loop serve them:
    :meth:`start_from_pass` (a first pass over the train group) and :meth:`calibrate` (the
    validation errors of every epoch).
    """

    #: Whether :meth:`calibrate` wants the :meth:`calibration_values` of every validation pass.
    calibrates = False

    def reconstruct(self, x: Tensor) -> Tensor:
        """The deterministic reconstruction used for scoring (a VAE decodes its mean)."""
        return self(x)[0]

    def error(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """Per-event error of a reconstruction of ``x``: the mean squared error over features."""
        return torch.mean((reconstruction - x) ** 2, dim=1)

    def anomaly_score(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """The per-event score that scoring writes, from ``reconstruct(x)``: the training error,
        unless the model calibrates it after training."""
        return self.error(reconstruction, x)

    def reconstruction_error(self, x: Tensor) -> Tensor:
        """Per-event anomaly score of the deterministic reconstruction, shape ``[N]``."""
        return self.anomaly_score(self.reconstruct(x), x)

    def start_from_pass(self, batches: Iterable[Tensor], total: Callable[[Tensor], Tensor]) -> None:
        """Adapt a freshly built model to one pass over its train group: ``batches`` are this
        rank's scaled rows (unshuffled), ``total`` sums a tensor over the ranks.

        Only Deep SVDD uses it (its centre); the others leave the batches unread.
        """

    def calibration_values(self, reconstruction: Tensor, x: Tensor) -> Tensor:
        """Per-event values ``[N, ...]`` of a validation batch that :meth:`calibrate` reads."""
        msg = f"{type(self).__name__} does not calibrate"
        raise NotImplementedError(msg)

    def calibrate(self, values: Tensor) -> None:
        """Set the model's score calibration from the :meth:`calibration_values` of the whole
        validation group (every rank's), after each epoch's validation."""

    def start_from_train(self, mean: Tensor, rms: float) -> None:
        """Adapt a freshly built model to its train group: ``mean [F]``, the mean input, and
        ``rms``, the root mean square of every input value.

        Only the jet-image autoencoders use it (:func:`_start_image_model`); others start as built.
        """


def _scaled(x: Tensor, scale: Tensor | None) -> Tensor:
    return x if scale is None else x * scale


def _start_image_model(logit_bias: Tensor, input_scale: Tensor, mean: Tensor, rms: float) -> None:
    """Start a jet-image autoencoder (softmax output) at the mean image, reading inputs of unit RMS.

    Images of unit total pT have pixels far below 1 (RMS about 0.02 in 40 x 40): through
    layers initialised for unit inputs the jet-to-jet differences vanish before the latent,
    and a softmax over 1600 logits near 0 is the uniform image. Its error, the image's sum of
    squared pixels over the pixel count, is largest for the jets with one hard core (QCD): a
    model stuck there scores QCD as the anomaly. So the encoder reads the image times 1 / RMS
    (the target stays the unit-sum image) and the output's logit offsets start at the log of
    the mean image (empty pixels at e^-18 of the total): training begins at the mean image and
    spends its steps on what differs from jet to jet.
    """
    with torch.no_grad():
        logit_bias.copy_(torch.log(mean.clamp(min=1e-8)))
        input_scale.fill_(1.0 / rms if rms > 0 else 1.0)


def per_event_loss(model: nn.Module, output: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
    """The per-event training objective from a model's output: its error + penalty.

    Called on the output of ``model(x)`` rather than inside the model, so that a
    ``DistributedDataParallel`` wrapper sees the forward pass; ``model`` may be that wrapper.
    """
    reconstruction, penalty = output
    return getattr(model, "module", model).error(reconstruction, x) + penalty


def _activation(name: str, slope: float) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    return {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}[name]()


def _stack(widths: list[int], activations: list[str], slope: float, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out, act in zip(widths[:-1], widths[1:], activations, strict=True):
        layers += [nn.Linear(n_in, n_out, bias=bias), _activation(act, slope)]
    return nn.Sequential(*layers)


class DenseAE(Autoencoder):
    """Fully connected autoencoder: ``F -> *hidden -> latent -> *reversed(hidden) -> F``."""

    def __init__(self, n_features: int, latent: int, hidden: list[int], activations: list[str], slope: float,
                 softmax: bool = False):
        super().__init__()
        widths = [n_features, *hidden, latent, *reversed(hidden), n_features]
        self.layers = _stack(widths, activations, slope)
        if softmax:  # Farina et al.: images of unit total pT
            self.layers.append(nn.Softmax(dim=1))
        # Set by start_from_train for images; a buffer, so that scoring reads inputs as training did.
        self.register_buffer("input_scale", torch.ones(()) if softmax else None)
        self.n_encoder = 2 * (len(hidden) + 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.layers(_scaled(x, self.input_scale)), x.new_zeros(x.shape[0])

    def start_from_train(self, mean: Tensor, rms: float) -> None:
        """With a softmax output, :func:`_start_image_model` (the last layer's bias is the logit offset)."""
        if isinstance(self.layers[-1], nn.Softmax):
            last = [layer for layer in self.layers if isinstance(layer, nn.Linear)][-1]
            _start_image_model(last.bias, self.input_scale, mean, rms)

    def encode(self, x: Tensor) -> Tensor:
        """The latent representation (after the latent layer's activation)."""
        return self.layers[: self.n_encoder](_scaled(x, self.input_scale))


class DenseVAE(Autoencoder):
    """Variational autoencoder with the reparametrisation trick.

    The penalty is ``kl_weight`` times the KL divergence to N(0, 1) divided by the number of
    features, the scale of the per-feature mean squared error it is added to (so
    ``kl_weight=1`` keeps the ELBO's balance of a unit-variance Gaussian likelihood).
    """

    def __init__(
        self, n_features: int, latent: int, hidden: list[int], activations: list[str], slope: float,
        kl_weight: float,
    ):
        super().__init__()
        n_enc = len(hidden)
        self.encoder = _stack([n_features, *hidden], activations[:n_enc], slope)
        width = hidden[-1] if hidden else n_features
        self.mean = nn.Linear(width, latent)
        self.log_var = nn.Linear(width, latent)
        self.decoder = _stack([latent, *reversed(hidden), n_features], activations[n_enc:], slope)
        self.kl_weight = kl_weight
        self.n_features = n_features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        mean, log_var = self.mean(h), self.log_var(h)
        # Sampling only in training mode: evaluation and scoring decode the mean.
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if self.training else mean
        kl = -0.5 * torch.sum(1 + log_var - mean**2 - torch.exp(log_var), dim=1)
        return self.decoder(z), self.kl_weight * kl / self.n_features

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.mean(self.encoder(x)))


class ConvAE(Autoencoder):
    """Farina et al.'s CNN autoencoder on the RMM as a one-channel n x n image.

    Convolutions (3x3, ReLU, same padding) with 2x2 max-pooling between them, a dense layer and
    a linear latent layer; the decoder mirrors it with upsampling. The image is zero-padded to a
    multiple of the pooling factor (23 -> 24 for two poolings) and cropped back at the end. The
    output is linear for RMMs; for jet images (``softmax``) it is Farina's softmax over the pixels,
    as the images are normalised to unit sum, with a per-pixel logit offset that training starts
    at the log of the mean image (:meth:`start_from_train`).
    """

    def __init__(self, n_features: int, latent: int, channels: list[int], dense: int, softmax: bool = False):
        super().__init__()
        side = matrix_side(n_features)
        if side is None:
            msg = (
                f"model 'cnn' reads the RMM as a square image, but the store has {n_features} "
                "features, not a square number; use a dense model (training.model)"
            )
            raise ConfigError(msg)
        factor = 2 ** (len(channels) - 1)
        self.side, self.padded = side, -(-side // factor) * factor
        inner = self.padded // factor
        enc: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([1, *channels[:-1]], channels, strict=True)):
            if i:
                enc.append(nn.MaxPool2d(2))
            enc += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
        flat = channels[-1] * inner * inner
        self.encoder = nn.Sequential(
            *enc, nn.Flatten(), nn.Linear(flat, dense), nn.ReLU(), nn.Linear(dense, latent)
        )
        dec: list[nn.Module] = [
            nn.Linear(latent, dense), nn.ReLU(), nn.Linear(dense, flat), nn.ReLU(),
            nn.Unflatten(1, (channels[-1], inner, inner)),
        ]
        rev = list(reversed(channels))
        for c_in, c_out in itertools.pairwise(rev):
            dec += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2)]
        dec.append(nn.Conv2d(rev[-1], 1, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        # A per-pixel logit offset added to Farina's (one bias for the whole image), so that
        # start_from_train can set the output to the mean image.
        self.logit_bias = nn.Parameter(torch.zeros(side * side)) if softmax else None
        self.register_buffer("input_scale", torch.ones(()) if softmax else None)
        # Channels-last (NHWC) convolution weights: oneDNN's CPU convolutions with a few channels run
        # about twice as fast on them, forward and backward (jet-cnn, 8 channels, 1024 40 x 40 images
        # on one thread: a training step 0.50 s against 1.06 s, a forward pass 0.18 s against 0.37 s).
        # The numbers are the same up to float rounding; a loaded state keeps this layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        out = self.decoder(self.encode(x))[:, 0, : self.side, : self.side].reshape(n, -1)
        if self.logit_bias is not None:  # Farina et al.'s jet images: a softmax over the pixels
            out = torch.softmax(out + self.logit_bias, dim=1)
        return out, x.new_zeros(n)

    def start_from_train(self, mean: Tensor, rms: float) -> None:
        """With a softmax output, :func:`_start_image_model`."""
        if self.logit_bias is not None:
            _start_image_model(self.logit_bias, self.input_scale, mean, rms)

    def encode(self, x: Tensor) -> Tensor:
        """The latent representation."""
        n, pad = x.shape[0], self.padded - self.side
        image = _scaled(x.view(n, 1, self.side, self.side), self.input_scale)
        return self.encoder(nn.functional.pad(image, (0, pad, 0, pad)))
