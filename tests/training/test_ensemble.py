from __future__ import annotations

import numpy as np
import pytest
import torch
from rows import scaled_rows, separations, stored_and_rebuilt

from megaset.config import ArchitectureConfig
from megaset.training.checkpoint import load_model
from megaset.training.ensemble import AEEnsemble
from megaset.training.registry import build_model, resolve_architecture
from megaset.training.score import reconstruction_errors, score
from megaset.training.trainer import train

SETTINGS = {"model": "ae-ensemble", "batch_size": 64, "learning_rate": 1e-2, "epochs": 4,
            "architecture": {"latent": 4, "ensemble_members": 3}}


@pytest.fixture(scope="module")
def trained(private_store):
    """An ensemble of three trained on (a copy of) the tiny store and scored into it."""
    cfg = private_store.replace(training=SETTINGS)
    return cfg, train(cfg), score(cfg)


def _member_errors(model: AEEnsemble, x: np.ndarray) -> np.ndarray:
    """Each member's mean squared error, member by member as a lone autoencoder computes it."""
    with torch.no_grad():
        return np.stack([m.reconstruction_error(torch.from_numpy(x)).numpy() for m in model.members], axis=1)


def test_members_are_shallow_autoencoders_of_their_own_start():
    arch = resolve_architecture("ae-ensemble", 529, ArchitectureConfig())
    shallow = resolve_architecture("ae-shallow", 529, ArchitectureConfig())
    assert arch == {**shallow, "members": 5}
    torch.manual_seed(0)
    model = build_model("ae-ensemble", 529, arch)
    assert len(model.members) == 5
    first = [m.layers[0].weight for m in model.members]
    assert all(not torch.equal(first[0], w) for w in first[1:])


def test_the_score_is_the_mean_of_the_members_errors_over_their_validation_medians(trained):
    cfg, summary, _ = trained
    model, _, meta = load_model(summary["checkpoints"]["best"])
    val = scaled_rows(cfg, "val")
    errors = _member_errors(model, val)
    # The lower median of an even count, computed apart from torch's.
    lower = np.sort(errors, axis=0)[(len(errors) - 1) // 2]
    np.testing.assert_allclose(model.scale.numpy(), lower, rtol=1e-6)
    assert meta["architecture"]["members"] == 3
    test = scaled_rows(cfg, "test")
    expected = (_member_errors(model, test) / lower).mean(1)
    np.testing.assert_allclose(reconstruction_errors(model, test)["total"], expected, rtol=1e-5)
    # The training loss stays the plain mean of the members' errors.
    best = summary["history"][summary["best_epoch"] - 1]
    with torch.no_grad():
        val_error = model.error(model(torch.from_numpy(val))[0], torch.from_numpy(val)).numpy()
    np.testing.assert_allclose(val_error, errors.mean(1), rtol=1e-6)
    assert best["val_error"] < np.mean(((val - scaled_rows(cfg, "train").mean(0)) ** 2).mean(1))


def test_scoring_writes_the_score_of_the_rebuilt_model_and_no_blocks(trained):
    cfg, summary, scored = trained
    assert scored["column"] == "score/ae-ensemble" and scored["blocks"] == []
    stored, direct, _ = stored_and_rebuilt(cfg, "ae-ensemble", "val")
    np.testing.assert_array_equal(stored, direct)
    # On the validation group every member's median standardised error is 1.
    assert np.median(direct) == pytest.approx(1.0, rel=0.2)
    # The score tells events whose feature correlations are destroyed from the background,
    # which the distance to the per-feature mean barely does.
    baseline, found = separations(cfg, summary["checkpoints"]["best"])
    assert baseline < 0.6 and found > 0.75, (baseline, found)
