"""The boosted-jet simulator: the physics each sample must show, determinism, and the ROOT files."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from megaset.config import JET_SAMPLES, JetSimulateConfig
from megaset.pipeline.jet_features import jet_kinematics, nsubjettiness
from megaset.pipeline.jets_simulate import SAMPLES, generate, jet_inputs, simulate_jets

N = 600


def _features(sample: str, **kwargs) -> dict[str, np.ndarray]:
    b = generate(sample, N, seed=11, **kwargs)
    pt, eta, phi, e = (ak.to_numpy(ak.flatten(b[k])).astype(np.float64) for k in ("constPt", "constEta", "constPhi",
                                                                                   "constE"))
    offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(b["constPt"])))])
    kin = jet_kinematics(pt, eta, phi, e, offsets)
    taus, _ = nsubjettiness(pt, eta, phi, e, offsets, 3)
    taus[taus == 0] = np.nan  # a jet of fewer constituents has no ratio
    keep = (kin["pt"] > 800) & (kin["pt"] < 900)
    return {"mass": kin["mass"][keep], "tau21": (taus[:, 1] / taus[:, 0])[keep],
            "tau32": (taus[:, 2] / taus[:, 1])[keep], "n": np.diff(offsets)[keep]}


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, np.ndarray]]:
    return {s: _features(s) for s in ("qcd", "top", "w")}


def test_the_config_and_the_simulator_name_the_same_samples():
    assert tuple(SAMPLES) == JET_SAMPLES


def test_top_and_w_masses_peak_near_their_pole_masses(samples):
    for sample, pole in (("top", 172.5), ("w", 80.4)):
        counts, edges = np.histogram(samples[sample]["mass"], bins=np.arange(0, 400, 10))
        peak = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
        assert abs(peak - pole) < 20, (sample, peak)


def test_qcd_mass_falls_smoothly_above_its_sudakov_peak(samples):
    counts, _ = np.histogram(samples["qcd"]["mass"], bins=np.arange(100, 420, 40))
    assert counts[0] > 2 * counts[-1]
    # Coarse bins, at most one upward fluctuation: a falling spectrum, not resonant bumps.
    assert np.count_nonzero(np.diff(counts) > 0.1 * counts[:-1]) <= 1, counts


def test_n_subjettiness_ratios_separate_prongs_from_qcd_in_the_known_direction(samples):
    median = {s: {r: float(np.nanmedian(v[r])) for r in ("tau21", "tau32")} for s, v in samples.items()}
    assert median["w"]["tau21"] < median["qcd"]["tau21"] - 0.1, median
    assert median["top"]["tau32"] < median["qcd"]["tau32"] - 0.05, median


def test_gluon_jets_have_more_constituents_than_quark_jets():
    quark = _features("qcd", gluon_fraction=0.0)["n"]
    gluon = _features("gluon")["n"]
    assert gluon.mean() > 1.15 * quark.mean()


def test_the_same_seed_gives_the_same_jets():
    a, b = generate("gluino", 50, seed=3), generate("gluino", 50, seed=3)
    assert ak.all(a["constPt"] == b["constPt"])
    assert not ak.all(ak.num(generate("gluino", 50, seed=4)["constPt"]) == ak.num(a["constPt"]))


def test_simulate_writes_jagged_constituent_branches(tmp_path):
    cfg = JetSimulateConfig(output=str(tmp_path), jets=30, signal_jets=20, jets_per_file=20,
                            samples=["qcd", "top"])
    written = simulate_jets(cfg)
    assert [len(v) for v in written.values()] == [2, 1]
    with uproot.open(written["top"][0]) as f:
        tree = f["jets"]
        assert {"constPt", "constEta", "constPhi", "constE", "eventNumber"} <= set(tree.keys())
        pt = tree["constPt"].array()
        assert len(pt) == 20 and ak.all(ak.num(pt) > 0)
    inputs = jet_inputs(cfg)
    assert not inputs["qcd"].signal and inputs["top"].signal and inputs["top"].tree == "jets"
