from __future__ import annotations

import numpy as np
import pytest
import torch
from rows import scaled_rows, separations, stored_and_rebuilt

from megaset.config import AdversaryConfig, ArchitectureConfig
from megaset.errors import ConfigError
from megaset.training.checkpoint import load_checkpoint, load_model
from megaset.training.registry import build_model, resolve_architecture
from megaset.training.score import reconstruction_errors, score
from megaset.training.svdd import EPSILON, DeepSVDD
from megaset.training.trainer import train

SETTINGS = {"model": "deep-svdd", "batch_size": 64, "learning_rate": 1e-2, "epochs": 4, "architecture": {"latent": 4}}


@pytest.fixture(scope="module")
def trained(private_store):
    """Deep SVDD trained on (a copy of) the tiny store and scored into it."""
    cfg = private_store.replace(training=SETTINGS)
    return cfg, train(cfg), score(cfg)


def test_the_encoder_has_no_bias_and_the_default_shape_of_ruff_et_al():
    arch = resolve_architecture("deep-svdd", 529, ArchitectureConfig())
    assert (arch["hidden"], arch["latent"], arch["activations"]) == ([128], 32, ["leaky_relu", "linear"])
    model = build_model("deep-svdd", 529, arch)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linear] == [(529, 128, None), (128, 32, None)]
    assert [type(m).__name__ for m in model.encoder] == ["Linear", "LeakyReLU", "Linear", "Identity"]


def test_the_centre_is_the_mean_first_embedding_kept_away_from_zero():
    torch.manual_seed(0)
    model = DeepSVDD(6, 5, [], ["linear"], 0.3)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.tensor([[1.0] * 6, [-1.0] * 6, [0.01] * 6, [-0.01] * 6, [0.0] * 6]))
    batches = [torch.ones(3, 6), 2 * torch.ones(1, 6)]
    summed = []
    model.start_from_pass(iter(batches), lambda t: summed.append(t.clone()) or 2 * t)  # two equal ranks
    # Mean embedding: (3 * 6 + 12) / 4 = 7.5 times each row's weight; the two near 0 pushed out.
    assert model.centre.tolist() == pytest.approx([7.5, -7.5, EPSILON, -EPSILON, EPSILON])
    assert summed[0][-1] == 4
    x = torch.zeros(2, 6)
    expected = (model.centre**2).sum()
    assert model.reconstruction_error(x).tolist() == pytest.approx([float(expected)] * 2)


def test_wrong_activations_and_an_adversary_are_refused():
    with pytest.raises(ConfigError, match=r"activations has 3 entries, but 'deep-svdd' with hidden=\[8\] has 2"):
        resolve_architecture("deep-svdd", 16, ArchitectureConfig(hidden=[8], activations=["relu"] * 3))
    with pytest.raises(ConfigError, match=r"adversary needs .* 'deep-svdd' has none"):
        resolve_architecture("deep-svdd", 16, ArchitectureConfig(), AdversaryConfig())


def test_deep_svdd_tells_decorrelated_events_apart_better_than_the_per_feature_mean(trained):
    cfg, summary, _ = trained
    baseline, found = separations(cfg, summary["checkpoints"]["best"])
    assert baseline < 0.6 and found > 0.9, (baseline, found)
    # Training pulled the background towards the centre.
    losses = [h["val_loss"] for h in summary["history"]]
    assert losses[-1] < 0.5 * losses[0]


def test_the_centre_is_fixed_by_the_untrained_network(trained):
    cfg, summary, _ = trained
    torch.manual_seed(cfg.training.seed)
    fresh = build_model("deep-svdd", 16, cfg.training.architecture)
    rows = torch.from_numpy(scaled_rows(cfg, "train"))
    with torch.no_grad():
        centre = fresh.encoder(rows).double().mean(0)
    centre = torch.where(centre.abs() < EPSILON, torch.where(centre < 0, -EPSILON, EPSILON), centre).float()
    for path in summary["checkpoints"].values():
        torch.testing.assert_close(load_checkpoint(path)["state"]["centre"], centre)


def test_scoring_writes_the_distance_of_the_rebuilt_model_and_no_blocks(trained):
    cfg, summary, scored = trained
    assert scored["column"] == "score/deep-svdd" and scored["blocks"] == []
    stored, direct, x = stored_and_rebuilt(cfg, "deep-svdd", "test")
    np.testing.assert_array_equal(stored, direct)
    model, _, meta = load_model(summary["checkpoints"]["best"])
    assert meta["architecture"]["latent"] == 4
    with pytest.raises(ConfigError, match=r"per-block errors need a reconstruction of the rows, but DeepSVDD"):
        reconstruction_errors(model, x, blocks=True)
