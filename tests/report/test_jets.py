"""The jet report's pairwise matrix: shape, sign convention, counts; mass sculpting."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def tau32_store(tmp_path_factory):
    """A small real jet store (QCD, top, W) scored by the tau32 cut (no training)."""
    from megaset.config import Config
    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.jets_simulate import simulate_jets
    from megaset.storage.mix import mix
    from megaset.training.score import score
    from megaset.training.trainer import train

    tmp_path = tmp_path_factory.mktemp("jets")
    cfg = Config.model_validate({
        "inputs": {"kind": "jets", "chunksize": 400},
        "jets": {"simulate": {"output": str(tmp_path / "jets"), "jets": 300, "signal_jets": 100, "jets_per_file": 300,
                              "samples": ["qcd", "top", "w"]}},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 128},
        "training": {"output": str(tmp_path / "models"), "model": "tau32", "scaling": "none"},
        "report": {"auc_replicas": 20, "bins": 10},
    })
    simulate_jets(cfg.jets.simulate)
    ingest(cfg, None)
    mix(cfg, None)
    train(cfg, None)
    score(cfg, None)
    return cfg


def test_farina_values_stand_beside_the_plain_models_only(tau32_store, tmp_path):
    """Table I: the published E10 / E100 beside a plain model's row, none beside its decorrelated
    twin's (Farina et al. published no decorrelated model), with a note saying so."""
    from dataclasses import replace

    from megaset.report.jets import FARINA_TABLE_I, jet_report
    from megaset.report.samples import load_samples
    from megaset.storage.store import open_store

    store = open_store(tau32_store.store.url)
    # The cut's scores under the names of a plain model and its decorrelated twin: the table's
    # published column depends on the row's model name alone.
    samples = [replace(s, scores={"jet-dense": s.scores["tau32"], "jet-dense-adv": s.scores["tau32"]})
               for s in load_samples(store, ["tau32"], "jet_mass")]
    jet_report(tau32_store, store, samples, ["jet-dense", "jet-dense-adv"], tmp_path)
    md = (tmp_path / "report.md").read_text()
    table_i = md.split("## Table I analogue")[1].split("## Every signal")[0]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line.strip("|").split("|")[-1].strip()
            for line in table_i.splitlines() if line.startswith("| jet-dense")}
    e10, e100 = FARINA_TABLE_I["jet-dense"]["top"]
    assert rows == {("jet-dense", "top"): f"{e10:.2f} / {e100:.2f}", ("jet-dense-adv", "top"): "-"}
    assert "no mass-decorrelated model: jet-dense-adv" in table_i


def test_the_jet_report_names_a_signal_without_positive_weight_and_one_without_jets(tau32_store, tmp_path):
    """The small tau32 store; one signal's weights made non-positive in the store, and a signal
    the selection kept no jet of."""
    import json
    import warnings

    from megaset.report.jets import jet_report
    from megaset.report.samples import Sample, load_samples
    from megaset.storage.store import open_store

    store = open_store(tau32_store.store.url)
    w = store.group("signal/w")
    for i, values in w.iter_chunks(("weight",)):
        w.write_chunks("weight", range(i, i + 1), -np.abs(values["weight"]))
    samples = load_samples(store, ["tau32"], "jet_mass")
    empty = np.zeros(0)
    nothing = Sample("nothing", "signal", empty, empty, empty, {"tau32": empty})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = jet_report(tau32_store, store, [*samples, nothing], ["tau32"], tmp_path / "out")
    assert result["signals_without_events"] == ["w", "nothing"]
    assert [r["signal"] for r in result["auc_table"]] == ["top"]
    assert set(json.loads(json.dumps(result))["plots"]) >= {"roc", "errors"}
    md = (tmp_path / "out" / "report.md").read_text()
    for name in ("w", "nothing"):
        assert f"- signal {name}: no selected event with a positive weight in the store: not in the table" in md
