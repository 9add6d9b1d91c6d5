"""The model registry: every model by name, its resolved architecture, and a fresh instance.

A checkpoint stores a model's name and resolved architecture; :func:`build_model` turns them
back into a module, so that loading one executes no stored code. The networks live in
:mod:`megaset.training.models`, the PCA baseline in :mod:`megaset.training.pca`.

>>> from megaset.config import ArchitectureConfig
>>> resolve_architecture("ae-shallow", 529, ArchitectureConfig())["latent"]
150
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from megaset.config import AdversaryConfig, ArchitectureConfig
from megaset.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a model is built: the names and labels here need none
    from megaset.training.models import Autoencoder

__all__ = ["MODELS", "JET_MODELS", "CUTS", "NOT_RECONSTRUCTING", "SCORE_QUANTITY", "score_quantity", "build_model",
           "resolve_architecture", "input_column"]

#: Thesis defaults per dense model: encoder widths and one activation per dense layer.
_DENSE = {
    "ae-shallow": ([], ["tanh", "leaky_relu"]),
    "ae-deep": (
        [450, 300, 200],
        ["tanh", "leaky_relu", "relu", "leaky_relu", "relu", "leaky_relu", "tanh", "leaky_relu"],
    ),
    "vae-shallow": ([], ["leaky_relu"]),
    "vae-deep": ([400, 300, 200], ["tanh", "relu", "leaky_relu", "leaky_relu", "relu", "tanh", "sigmoid"]),
}
_THESIS_LATENT = 150

#: Deep SVDD's defaults: one hidden layer, Ruff et al.'s 32-dimensional embedding.
_SVDD_HIDDEN, _SVDD_LATENT = [128], 32

#: Models of jet inputs; pca serves both kinds.
JET_MODELS = ("jet-dense", "jet-cnn", "graph-ae", "oneoff", "tau32", "tau21")
MODELS = ("ae-shallow", "ae-deep", "vae-shallow", "vae-deep", "cnn", "pca", "deep-svdd", "ae-ensemble", "flow",
          *JET_MODELS)
#: Models whose score is no reconstruction error of the rows: no per-block errors exist for them.
NOT_RECONSTRUCTING = ("deep-svdd", "ae-ensemble", "flow")
#: What the score of each model that writes no reconstruction error measures, in the words of
#: the report's axes; every other model's score is its reconstruction error.
SCORE_QUANTITY = {
    "deep-svdd": "squared distance to the centre",
    "ae-ensemble": "reconstruction error / median val error",
    "flow": "softplus(negative log-likelihood per feature)",
    "oneoff": "(output - 1)²",
    "tau32": "1 - τ3/τ2",
    "tau21": "1 - τ2/τ1",
}
#: Baselines with nothing to train.
CUTS = ("tau32", "tau21")
_FARINA_LATENT = 6
#: Store column each model reads when it is not the store's feature column.
_INPUT = {"graph-ae": "constituents", "oneoff": "constituents", "tau32": "tau", "tau21": "tau"}


def score_quantity(name: str, combined_by: Mapping[str, str] | None = None) -> str:
    """What ``score/<name>`` measures: a model's (:data:`SCORE_QUANTITY`, else its reconstruction
    error), or, for a combination of ``combined_by`` (name -> ``scoring.combine`` method), the
    method's background p-value.

    >>> score_quantity("ae-shallow"), score_quantity("flow")
    ('reconstruction error', 'softplus(negative log-likelihood per feature)')
    >>> score_quantity("ae-svdd", {"ae-svdd": "min-p"})
    '-log10 background p-value (min-p)'
    """
    if combined_by and name in combined_by:
        from megaset.training.combine import METHODS

        return METHODS[combined_by[name]][2]
    return SCORE_QUANTITY.get(name, "reconstruction error")


def input_column(name: str, feature_column: str) -> str:
    """The store column model ``name`` reads (``feature_column``: the store's own).

    >>> input_column("graph-ae", "image"), input_column("jet-cnn", "image")
    ('constituents', 'image')
    """
    return _INPUT.get(name, feature_column)


def resolve_architecture(name: str, n_features: int, cfg: ArchitectureConfig,
                         adversary: AdversaryConfig | None = None) -> dict[str, Any]:
    """The complete architecture of model ``name``: config values, thesis defaults for the rest.

    The result is plain data; it is stored in checkpoints so that a model can be rebuilt
    without the configuration that trained it.

    >>> resolve_architecture("ae-shallow", 529, ArchitectureConfig())["activations"]
    ['tanh', 'leaky_relu']
    """
    if name not in MODELS:
        msg = f"unknown model {name!r} (training.model); choose one of {', '.join(MODELS)}"
        raise ConfigError(msg)
    arch: dict[str, Any] = {"latent": cfg.latent}
    # An ensemble's members are shallow autoencoders.
    dense = "ae-shallow" if name == "ae-ensemble" else name
    if dense in _DENSE:
        hidden, activations = _DENSE[dense]
        hidden = list(cfg.hidden) if cfg.hidden is not None else hidden
        if cfg.activations is not None:
            activations = list(cfg.activations)
        elif cfg.hidden is not None:
            msg = (
                "training.architecture.hidden is set but activations is not; give one activation "
                f"per dense layer of {name!r}"
            )
            raise ConfigError(msg)
        n_layers = 2 * len(hidden) + (1 if name.startswith("vae") else 2)
        if len(activations) != n_layers:
            msg = (
                f"training.architecture.activations has {len(activations)} entries, but {name!r} "
                f"with hidden={hidden} has {n_layers} dense layers with an activation"
                + (" (the mean and log-variance heads are linear)" if name.startswith("vae") else "")
            )
            raise ConfigError(msg)
        arch.update(hidden=hidden, activations=activations, leaky_slope=cfg.leaky_slope)
        arch["latent"] = cfg.latent or _THESIS_LATENT
        if name.startswith("vae"):
            arch["kl_weight"] = cfg.kl_weight
        if name == "ae-ensemble":
            arch["members"] = cfg.ensemble_members
    elif name == "deep-svdd":
        hidden = list(cfg.hidden) if cfg.hidden is not None else list(_SVDD_HIDDEN)
        activations = list(cfg.activations or ["leaky_relu"] * len(hidden) + ["linear"])
        if len(activations) != len(hidden) + 1:
            msg = (
                f"training.architecture.activations has {len(activations)} entries, but 'deep-svdd' with "
                f"hidden={hidden} has {len(hidden) + 1} dense layers (no decoder); give one per layer"
            )
            raise ConfigError(msg)
        arch.update(latent=cfg.latent or _SVDD_LATENT, hidden=hidden, activations=activations,
                    leaky_slope=cfg.leaky_slope)
    elif name == "flow":
        arch = {"latent": None, "layers": cfg.flow_layers, "hidden": cfg.flow_hidden, "noise": cfg.flow_noise}
    elif name == "cnn":
        arch.update(latent=cfg.latent or _THESIS_LATENT, channels=list(cfg.cnn_channels), dense=cfg.cnn_dense)
    elif name == "jet-dense":
        # Farina et al.'s appendix: 32 -> 6 -> 32, ReLU, softmax output; their ReLU on the softmax's
        # logits is left out: a pixel whose logit dies at 0 gets no gradient, and the output
        # stays near the uniform image (whose error ranks one-core QCD jets as the anomalies).
        hidden = list(cfg.hidden) if cfg.hidden is not None else [32]
        default = ["relu"] * (2 * len(hidden) + 1) + ["linear"]
        arch.update(latent=cfg.latent or _FARINA_LATENT, hidden=hidden,
                    activations=list(cfg.activations or default), leaky_slope=cfg.leaky_slope)
    elif name == "jet-cnn":
        arch.update(latent=cfg.latent or _FARINA_LATENT, channels=list(cfg.jet_cnn_channels), dense=cfg.jet_cnn_dense)
    elif name in ("graph-ae", "oneoff"):
        arch.update(latent=cfg.latent or _FARINA_LATENT if name == "graph-ae" else 1, hidden=cfg.graph_hidden,
                    normalise=cfg.graph_normalise)
    elif name in CUTS:
        arch = {"latent": None, "n": 3 if name == "tau32" else 2}
    else:
        arch.update(latent=cfg.latent or n_features, variance=cfg.pca_variance)
    if adversary is not None:
        if name in CUTS or name in ("pca", "oneoff", *NOT_RECONSTRUCTING) or name.startswith("vae"):
            msg = (f"training.adversary needs a trained autoencoder with a latent space; "
                   f"{name!r} has none to decorrelate")
            raise ConfigError(msg)
        arch["adversary"] = adversary.model_dump(mode="json")
    return arch


def build_model(name: str, n_features: int, cfg: ArchitectureConfig | dict[str, Any]) -> Autoencoder:
    """A freshly initialised model of the registry.

    Parameters
    ----------
    name
        One of :data:`MODELS`.
    n_features
        Input size: the number of features of the store (529 for the default 23 x 23 RMM).
    cfg
        ``training.architecture`` of the config, or an architecture already resolved by
        :func:`resolve_architecture` (as stored in a checkpoint).

    Returns
    -------
    Autoencoder
        ``pca`` comes unfitted: :func:`megaset.training.pca.fit_pca` fills it.
    """
    arch = resolve_architecture(name, n_features, cfg) if isinstance(cfg, ArchitectureConfig) else cfg
    model = _build(name, n_features, arch)
    if arch.get("adversary"):
        from megaset.training.adversary import Adversarial

        adv = arch["adversary"]
        model = Adversarial(model, n_features, arch["latent"], adv["weight"], adv["on"], adv["scale"], adv["hidden"])
    return model


def _build(name: str, n_features: int, arch: dict[str, Any]) -> Autoencoder:
    from megaset.training.models import ConvAE, DenseAE, DenseVAE
    from megaset.training.pca import PCAModel

    if name in ("graph-ae", "oneoff") or name in CUTS:
        from megaset.training.graph import GraphAE, OneOff, TauRatio

        if name == "graph-ae":
            return GraphAE(n_features, arch["latent"], arch["hidden"], arch["normalise"])
        if name == "oneoff":
            return OneOff(n_features, arch["hidden"], arch["normalise"])
        return TauRatio(n_features, arch["n"])
    if name == "jet-dense":
        return DenseAE(n_features, arch["latent"], arch["hidden"], arch["activations"], arch["leaky_slope"],
                       softmax=True)
    if name == "jet-cnn":
        return ConvAE(n_features, arch["latent"], arch["channels"], arch["dense"], softmax=True)
    if name == "deep-svdd":
        from megaset.training.svdd import DeepSVDD

        return DeepSVDD(n_features, arch["latent"], arch["hidden"], arch["activations"], arch["leaky_slope"])
    if name == "ae-ensemble":
        from megaset.training.ensemble import AEEnsemble

        return AEEnsemble(n_features, arch["members"], arch["latent"], arch["hidden"], arch["activations"],
                          arch["leaky_slope"])
    if name == "flow":
        from megaset.training.flow import RealNVP

        return RealNVP(n_features, arch["layers"], arch["hidden"], arch["noise"])
    if name.startswith("ae"):
        return DenseAE(n_features, arch["latent"], arch["hidden"], arch["activations"], arch["leaky_slope"])
    if name.startswith("vae"):
        return DenseVAE(
            n_features, arch["latent"], arch["hidden"], arch["activations"], arch["leaky_slope"],
            arch["kl_weight"],
        )
    if name == "cnn":
        return ConvAE(n_features, arch["latent"], arch["channels"], arch["dense"])
    return PCAModel(n_features, arch["latent"])
