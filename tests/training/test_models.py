from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from torch import nn

from megaset.config import ArchitectureConfig, TrainingConfig
from megaset.errors import ConfigError
from megaset.training.models import per_event_loss
from megaset.training.registry import MODELS, build_model, resolve_architecture


def _dense_layers(model: nn.Module) -> list[tuple[int, str]]:
    """(width, activation) of every Linear layer, read off the module tree in order."""
    modules = list(model.modules())
    out = []
    for i, m in enumerate(modules):
        if isinstance(m, nn.Linear):
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            act = type(nxt).__name__ if nxt is not None and not isinstance(nxt, nn.Linear) else "-"
            out.append((m.out_features, act))
    return out


def test_registry_matches_the_config_choices():
    choices = typing.get_args(TrainingConfig.model_fields["model"].annotation)
    assert set(choices) == set(MODELS)


def test_thesis_shallow_and_deep_autoencoders():
    cfg = ArchitectureConfig()
    assert _dense_layers(build_model("ae-shallow", 529, cfg)) == [(150, "Tanh"), (529, "LeakyReLU")]
    deep = build_model("ae-deep", 529, cfg)
    assert _dense_layers(deep) == [
        (450, "Tanh"), (300, "LeakyReLU"), (200, "ReLU"), (150, "LeakyReLU"),
        (200, "ReLU"), (300, "LeakyReLU"), (450, "Tanh"), (529, "LeakyReLU"),
    ]
    slopes = {m.negative_slope for m in deep.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.3}


def test_thesis_deep_vae_layers_and_heads():
    vae = build_model("vae-deep", 529, ArchitectureConfig())
    assert _dense_layers(vae.encoder) == [(400, "Tanh"), (300, "ReLU"), (200, "LeakyReLU")]
    assert (vae.mean.in_features, vae.mean.out_features) == (200, 150)
    assert (vae.log_var.in_features, vae.log_var.out_features) == (200, 150)
    assert _dense_layers(vae.decoder) == [(200, "LeakyReLU"), (300, "ReLU"), (400, "Tanh"), (529, "Sigmoid")]


def test_configurable_widths_latent_and_activations():
    cfg = ArchitectureConfig(latent=8, hidden=[32], activations=["relu", "tanh", "relu", "sigmoid"], leaky_slope=0.1)
    assert _dense_layers(build_model("ae-deep", 16, cfg)) == [(32, "ReLU"), (8, "Tanh"), (32, "ReLU"), (16, "Sigmoid")]


def test_wrong_number_of_activations_names_the_key():
    cfg = ArchitectureConfig(hidden=[32], activations=["relu", "relu"])
    with pytest.raises(ConfigError, match=r"training.architecture.activations has 2 entries.*has 3 dense layers"):
        build_model("vae-deep", 16, cfg)
    with pytest.raises(ConfigError, match=r"hidden is set but activations is not"):
        resolve_architecture("ae-deep", 16, ArchitectureConfig(hidden=[32]))


def test_cnn_needs_a_square_number_of_features():
    with pytest.raises(ConfigError, match=r"30 features, not a square number"):
        build_model("cnn", 30, ArchitectureConfig())


@pytest.mark.parametrize("name", ["ae-shallow", "ae-deep", "vae-shallow", "vae-deep", "cnn"])
def test_reconstruction_error_is_the_mean_squared_error_per_event(name):
    torch.manual_seed(0)
    model = build_model(name, 529, ArchitectureConfig(latent=12, cnn_channels=[4, 4, 4], cnn_dense=16)).eval()
    x = torch.rand(5, 529)
    with torch.no_grad():
        error = model.reconstruction_error(x)
        recon = model.reconstruct(x).numpy()
    expected = ((recon - x.numpy()) ** 2).sum(axis=1) / 529
    assert error.shape == (5,)
    np.testing.assert_allclose(error.numpy(), expected, rtol=1e-5)


def test_cnn_reads_the_rmm_as_an_image_and_crops_back():
    model = build_model("cnn", 529, ArchitectureConfig(latent=6, cnn_channels=[4, 8, 8], cnn_dense=32))
    assert (model.side, model.padded) == (23, 24)  # two 2x2 poolings: 24 -> 12 -> 6
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 8), (8, 8)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.encoder) == 2
    assert sum(isinstance(m, nn.Upsample) for m in model.decoder) == 2
    recon, penalty = model(torch.rand(3, 529))
    assert recon.shape == (3, 529) and torch.equal(penalty, torch.zeros(3))


def test_cnn_in_channels_last_layout_gives_what_the_plain_layout_gives():
    """The CNN keeps its convolution weights channels-last for speed: its reconstruction and its
    gradients are those of the same weights in the plain (NCHW) layout."""
    import copy

    torch.manual_seed(3)
    model = build_model("jet-cnn", 1600, ArchitectureConfig(latent=6, jet_cnn_channels=[8, 8, 8], jet_cnn_dense=32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    # (A 1-channel weight is both; the 8 -> 8 ones tell the layouts apart.)
    assert not all(c.weight.is_contiguous(memory_format=torch.channels_last)
                   for c in plain.modules() if isinstance(c, nn.Conv2d))
    x = torch.rand(16, 1600)
    x = x / x.sum(dim=1, keepdim=True)
    for m in (model, plain):
        per_event_loss(m, m(x), x).mean().backward()
    np.testing.assert_allclose(model.reconstruct(x).detach().numpy(), plain.reconstruct(x).detach().numpy(),
                               rtol=1e-5, atol=1e-9)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-9)
    # A state saved from one layout loads into the other, values unchanged, layout kept.
    fresh = build_model("jet-cnn", 1600, ArchitectureConfig(latent=6, jet_cnn_channels=[8, 8, 8], jet_cnn_dense=32))
    fresh.load_state_dict(plain.state_dict())
    assert fresh.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fresh.encoder[0].weight, plain.encoder[0].weight)


def test_vae_penalty_is_the_weighted_kl_divergence_per_feature():
    torch.manual_seed(1)
    vae = build_model("vae-shallow", 16, ArchitectureConfig(latent=3, kl_weight=0.5)).eval()
    x = torch.rand(4, 16)
    with torch.no_grad():
        recon, penalty = vae(x)
        mu, log_var = vae.mean(vae.encoder(x)).numpy(), vae.log_var(vae.encoder(x)).numpy()
    # KL(N(mu, s^2) || N(0, 1)) summed over latent dims, written out independently.
    var = np.exp(log_var)
    kl = 0.5 * (var + mu**2 - 1.0 - np.log(var)).sum(axis=1)
    np.testing.assert_allclose(penalty.numpy(), 0.5 * kl / 16, rtol=1e-5)
    # Evaluation decodes the mean: deterministic, and equal to reconstruct().
    assert torch.equal(recon, vae.reconstruct(x))
    loss = per_event_loss(vae, (recon, penalty), x)
    np.testing.assert_allclose(loss.numpy(), ((recon - x) ** 2).mean(1).numpy() + penalty.numpy(), rtol=1e-6)


def test_vae_samples_in_training_mode():
    torch.manual_seed(2)
    vae = build_model("vae-shallow", 16, ArchitectureConfig(latent=3)).train()
    x = torch.rand(4, 16)
    assert not torch.equal(vae(x)[0], vae(x)[0])
