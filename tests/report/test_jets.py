"""The jet report's pairwise matrix: shape, sign convention, counts; mass sculpting."""

from __future__ import annotations

import numpy as np

from megaset.report import metrics
from megaset.report.jets import mass_sculpting, separated_cells


def test_pairwise_matrix_is_8_by_8_blue_above_red_below_white_on_the_diagonal():
    rng = np.random.default_rng(0)
    # Sample i scores around i: a later sample is the more anomalous of every pair.
    scores = [rng.normal(i, 0.1, 500) for i in range(8)]
    m = metrics.separation_matrix(scores, [np.ones(500)] * 8)
    assert m.shape == (8, 8)
    np.testing.assert_allclose(np.diag(m), 0.5)
    lower, upper = np.tril_indices(8, -1), np.triu_indices(8, 1)
    assert (m[lower] > 0.99).all()  # row i (anomaly) above column j (background): blue
    assert (m[upper] < 0.01).all()  # the reverse ordering: red
    np.testing.assert_allclose(m + m.T, 1.0)
    assert separated_cells(m) == 28


def test_heatmap_colours_blue_for_one_white_for_a_half_red_for_zero():
    import matplotlib

    cmap = matplotlib.colormaps["RdBu"]
    blue, white, red = cmap(1.0), cmap(0.5), cmap(0.0)
    assert blue[2] > blue[0] and red[0] > red[2] and min(white[:3]) > 0.9


def test_a_score_that_is_the_mass_sculpts_and_an_independent_one_does_not():
    rng = np.random.default_rng(1)
    mass = rng.exponential(80, 20_000)
    edges = np.linspace(0, 400, 21)
    w = np.ones_like(mass)
    sculpted = mass_sculpting(mass, mass, w, edges)["js"]["0.1"]
    flat = mass_sculpting(rng.random(len(mass)), mass, w, edges)["js"]["0.1"]
    assert sculpted > 0.5 > 0.02 > flat


def test_decorrelation_pairs_each_model_with_its_adversarial_twin():
    from megaset.report.jets import decorrelation

    sculpting = {"jet-dense": {"js": {"0.1": 0.30, "0.01": 0.50}}, "jet-dense-adv": {"js": {"0.1": 0.05, "0.01": 0.10}},
                 "pca": {"js": {"0.1": 0.2, "0.01": 0.4}}}
    table = [{"model": "jet-dense", "signal": "top", "auc": 0.8}, {"model": "jet-dense", "signal": "w", "auc": 0.6},
             {"model": "jet-dense-adv", "signal": "top", "auc": 0.7}, {"model": "pca", "signal": "top", "auc": 0.9}]
    out = decorrelation(sculpting, table)
    assert list(out) == ["jet-dense"]  # pca was not trained with the adversary
    assert out["jet-dense"] == {"js": {"0.1": 0.30, "0.01": 0.50}, "js_adv": {"0.1": 0.05, "0.01": 0.10},
                                "auc": 0.7, "auc_adv": 0.7}
