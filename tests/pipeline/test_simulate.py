from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import vector

from megaset.config import SimulateConfig
from megaset.errors import ConfigError
from megaset.pipeline.inputs import expand_files
from megaset.pipeline.simulate import CHANNELS, demo_inputs, generate, simulate

LUMI = 139.0
BACKGROUNDS = ["zeejets", "zmmjets", "zttjets", "ttbar", "singletop", "wjets", "diboson", "higgs"]
SIGNALS = ["c1n2_wz_450_300", "c1n2_wz_800_50"]

# branch -> ROOT type name, as a flat ATLAS-style ntuple declares it
EXPECTED_BRANCHES = {
    "njet": "int32_t",
    "jetPt": "float[]",
    "jetEta": "float[]",
    "jetPhi": "float[]",
    "jetM": "float[]",
    "jetdl1r": "float[]",
    "nlep": "int32_t",
    "lepPt": "float[]",
    "lepEta": "float[]",
    "lepPhi": "float[]",
    "lepM": "float[]",
    "lepFlavor": "int32_t[]",
    "lepCharge": "int32_t[]",
    "lepTight": "bool[]",
    "lepIsoLoose_VarRad": "bool[]",
    "lepD0Sig": "float[]",
    "met_Et": "float",
    "met_phi": "float",
    "wgt": "float",
    "eventNumber": "int64_t",
    "runNumber": "int32_t",
}


def small_config(output: Path, **kw) -> SimulateConfig:
    values = {"output": str(output), "events": 6000, "signal_events": 700, "events_per_file": 1500, "seed": 3}
    return SimulateConfig(**(values | kw))


def read(path: str) -> ak.Array:
    with uproot.open(path) as f:
        return f["mini"].arrays()


def leptons(batch) -> ak.Array:
    return vector.zip({"pt": batch["lepPt"], "eta": batch["lepEta"], "phi": batch["lepPhi"], "mass": batch["lepM"]})


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A full simulated sample on disk, with the events each progress call reported."""
    cfg = small_config(tmp_path_factory.mktemp("ntuples"))
    reported: list[int] = []
    written = simulate(cfg, lumi_ifb=LUMI, progress=reported.append)
    return cfg, written, reported


@pytest.fixture(scope="module")
def batches():
    """Larger in-memory batches for the physics checks."""
    sizes = {"zeejets": 4000, "zmmjets": 4000, "ttbar": 3000, "wjets": 6000, "zttjets": 3000,
             "c1n2_wz_450_300": 2000, "c1n2_wz_800_50": 2000}
    return {ch: generate(ch, n, seed=11) for ch, n in sizes.items()}


# ---------------------------------------------------------------------------- determinism


def test_generate_same_seed_same_events_other_seed_differs():
    a, b, c = (generate("ttbar", 500, seed=s) for s in (5, 5, 6))
    for name in a:
        assert ak.array_equal(a[name], b[name]), name
    assert not ak.array_equal(a["jetPt"], c["jetPt"])
    assert not np.array_equal(a["met_Et"], c["met_Et"])


def test_same_seed_writes_identical_files_and_another_seed_differs(sample, tmp_path):
    cfg, written, _ = sample
    again = simulate(cfg.model_copy(update={"output": str(tmp_path / "again")}), lumi_ifb=LUMI)
    other = simulate(cfg.model_copy(update={"output": str(tmp_path / "other"), "seed": 4}), lumi_ifb=LUMI)
    for channel, paths in written.items():
        assert [Path(p).name for p in again[channel]] == [Path(p).name for p in paths]
        for first, second, third in zip(paths, again[channel], other[channel], strict=True):
            x, y, z = read(first), read(second), read(third)
            assert all(ak.array_equal(x[f], y[f]) for f in x.fields), first
            assert not ak.array_equal(x["met_Et"], z["met_Et"]), first


def test_a_channel_simulated_alone_gives_the_same_files(sample, tmp_path):
    """Each file has its own seed stream, so it does not depend on the other channels or files."""
    cfg, written, _ = sample
    alone = simulate(cfg.model_copy(update={"output": str(tmp_path), "channels": ["c1n2_wz_800_50"]}), lumi_ifb=LUMI)
    assert list(alone) == ["c1n2_wz_800_50"]
    x, y = read(alone["c1n2_wz_800_50"][0]), read(written["c1n2_wz_800_50"][0])
    assert all(ak.array_equal(x[f], y[f]) for f in x.fields)


# ---------------------------------------------------------------------------- file format


def test_files_have_the_flat_ntuple_branches_and_shared_counters(sample):
    _, written, _ = sample
    with uproot.open(written["ttbar"][0]) as f:
        tree = f["mini"]
        assert {name: tree[name].typename for name in tree.keys()} == EXPECTED_BRANCHES  # noqa: SIM118 - uproot's keys
        # Every jagged branch of a collection is counted by the one counter branch.
        assert tree["jetPt"].count_branch.name == tree["jetdl1r"].count_branch.name == "njet"
        assert tree["lepPt"].count_branch.name == tree["lepIsoLoose_VarRad"].count_branch.name == "nlep"
        arrays = tree.arrays()
    assert ak.all(arrays["njet"] == ak.num(arrays["jetPt"]))
    assert ak.all(arrays["nlep"] == ak.num(arrays["lepFlavor"]))
    assert ak.sum(arrays["njet"]) > 0 and ak.sum(arrays["nlep"]) > 0


def test_layout_event_numbers_and_progress(sample):
    cfg, written, reported = sample
    assert list(written) == BACKGROUNDS + SIGNALS
    root = Path(cfg.output)
    total = 0
    for channel, paths in written.items():
        assert paths == [str(root / channel / f"{channel}_{i}.root") for i in range(len(paths))]
        entries = [read(p) for p in paths]
        assert all(len(e) == cfg.events_per_file for e in entries[:-1])
        numbers = np.concatenate([e["eventNumber"].to_numpy() for e in entries])
        assert len(np.unique(numbers)) == len(numbers)
        total += len(numbers)
        if CHANNELS[channel].signal:
            assert len(numbers) == cfg.signal_events
    assert sum(reported) == total == cfg.events + 2 * cfg.signal_events
    assert len(reported) == sum(len(p) for p in written.values())


def test_backgrounds_share_events_by_cross_section_with_a_floor(sample, tmp_path):
    cfg, written, _ = sample
    counts = {ch: sum(len(read(p)) for p in written[ch]) for ch in BACKGROUNDS}
    assert sum(counts.values()) == cfg.events
    # W+jets (60 nb) dominates; every other channel sits at the 3 % floor.
    assert all(counts[ch] == 0.03 * cfg.events for ch in BACKGROUNDS if ch != "wjets")
    # Two channels both above the floor share in proportion to their cross-sections.
    pair = simulate(small_config(tmp_path, channels=["ttbar", "diboson"], signal_events=0), lumi_ifb=LUMI)
    n = {ch: sum(len(read(p)) for p in pair[ch]) for ch in pair}
    xsec = {ch: CHANNELS[ch].xsec_pb for ch in pair}
    assert n["diboson"] == round(cfg.events * xsec["diboson"] / (xsec["ttbar"] + xsec["diboson"]))
    assert n["ttbar"] + n["diboson"] == cfg.events


def test_demo_inputs_point_at_the_written_files(sample):
    cfg, written, _ = sample
    inputs = demo_inputs(cfg)
    assert list(inputs) == list(written)
    assert {ch: spec.signal for ch, spec in inputs.items()} == {ch: ch in SIGNALS for ch in written}
    assert expand_files(inputs) == {ch: sorted(paths) for ch, paths in written.items()}


def test_rerun_with_fewer_events_removes_leftover_files(tmp_path):
    cfg = small_config(tmp_path, channels=["c1n2_wz_800_50"], signal_events=4000)
    assert len(simulate(cfg)["c1n2_wz_800_50"]) == 3
    smaller = simulate(cfg.model_copy(update={"signal_events": 1000}))
    assert sorted(p.name for p in (tmp_path / "c1n2_wz_800_50").iterdir()) == ["c1n2_wz_800_50_0.root"]
    assert smaller["c1n2_wz_800_50"] == [str(tmp_path / "c1n2_wz_800_50" / "c1n2_wz_800_50_0.root")]


def test_unknown_channel_names_list_the_valid_ones(tmp_path):
    cfg = small_config(tmp_path, channels=["ttbar", "zeejet"])
    with pytest.raises(ConfigError,
                       match=r"simulate.channels: unknown channel\(s\) 'zeejet'; valid channels: zeejets, zmmjets"):
        simulate(cfg)
    with pytest.raises(ConfigError, match=r"unknown channel\(s\) 'zeejet'.*c1n2_wz_800_50"):
        demo_inputs(cfg)
    with pytest.raises(ConfigError, match=r"generate: unknown channel\(s\) 'top'"):
        generate("top", 10, seed=1)
    assert not any(tmp_path.iterdir())


def test_remote_output_and_negative_seed_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"simulate.output: 's3://bucket/ntuples' is not a local folder"):
        simulate(small_config(tmp_path).model_copy(update={"output": "s3://bucket/ntuples"}))
    with pytest.raises(ConfigError, match=r"simulate.seed: must be a non-negative integer, got -1"):
        simulate(small_config(tmp_path, seed=-1))


# ---------------------------------------------------------------------------- physics


@pytest.mark.parametrize(("channel", "flavor"), [("zeejets", 1), ("zmmjets", 2)])
def test_z_peak_and_lepton_flavour_and_charge(batches, channel, flavor):
    b = batches[channel]
    two = ak.num(b["lepPt"]) >= 2
    flav, charge = b["lepFlavor"][two], b["lepCharge"][two]
    ossf = (flav[:, 0] == flav[:, 1]) & (charge[:, 0] == -charge[:, 1])
    assert ak.mean(ossf) > 0.97
    assert ak.mean(ak.flatten(b["lepFlavor"]) == flavor) > 0.97
    lep = leptons(b)[two][ossf]
    mll = (lep[:, 0] + lep[:, 1]).mass.to_numpy()
    counts, edges = np.histogram(mll, bins=40, range=(71.0, 111.0))
    peak = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    assert abs(peak - 91.19) <= 2.0
    assert abs(np.median(mll[(mll > 81) & (mll < 101)]) - 91.19) <= 1.0
    # Leptons are stored beyond the selection acceptance so that the eta cuts matter.
    assert ak.max(abs(b["lepEta"])) > 2.6 and ak.all(abs(b["lepEta"]) < 3.0)
    expected_mass = {1: 0.000511, 2: 0.10566}[flavor]
    assert np.allclose(ak.flatten(b["lepM"][b["lepFlavor"] == flavor]), expected_mass, rtol=1e-5)


def test_invariant_mass_by_hand_matches_vector(batches):
    """The ntuple's (pt, eta, phi, m) give the same m_ll by hand as with vector, on one event."""
    b = batches["zmmjets"]
    i = int(np.flatnonzero(ak.num(b["lepPt"]).to_numpy() >= 2)[0])
    pt, eta, phi, m = (b[k][i].to_numpy()[:2].astype(float) for k in ("lepPt", "lepEta", "lepPhi", "lepM"))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    by_hand = np.sqrt(energy.sum() ** 2 - px.sum() ** 2 - py.sum() ** 2 - pz.sum() ** 2)
    lep = leptons(b)[i]
    assert (lep[0] + lep[1]).mass == pytest.approx(by_hand, rel=1e-5)


def test_top_channels_carry_b_jets(batches):
    def tagged(channel):
        b = batches[channel]
        central = (b["jetPt"] >= 20) & (abs(b["jetEta"]) <= 2.5)
        return ak.mean(ak.any(central & (b["jetdl1r"] >= 2.195), axis=1))

    assert tagged("ttbar") > 0.7
    assert tagged("ttbar") > 8 * tagged("zmmjets")
    # Light-jet dominated Z+jets: most jet scores below the light working point, some mistags.
    scores = ak.flatten(batches["zmmjets"]["jetdl1r"])
    assert 0.85 < np.mean(scores < 0.665) < 0.99
    assert np.mean(scores >= 2.195) > 0
    jets = ak.flatten(batches["ttbar"]["jetPt"])
    assert ak.min(jets) >= 15.0 and ak.max(abs(ak.flatten(batches["ttbar"]["jetEta"]))) > 3.5
    assert 1.0 < np.median(ak.flatten(batches["ttbar"]["jetM"]) / jets * 40) < 6.0  # a few GeV at 40 GeV


def test_signals_have_harder_met_than_z_jets(batches):
    median = {ch: np.median(b["met_Et"]) for ch, b in batches.items()}
    assert median["c1n2_wz_450_300"] > 3 * median["zmmjets"]
    assert median["c1n2_wz_800_50"] > 2 * median["c1n2_wz_450_300"]
    assert median["wjets"] > 2 * median["zmmjets"]  # the neutrino of W -> l nu


def test_tau_decays_give_softer_leptons(batches):
    ztt, zmm = batches["zttjets"], batches["zmmjets"]
    assert np.median(ak.flatten(ztt["lepPt"])) < 0.7 * np.median(ak.flatten(zmm["lepPt"]))
    assert np.median(ztt["met_Et"]) > np.median(zmm["met_Et"])  # neutrinos of the tau decays
    assert 0.3 < ak.mean(ak.flatten(ztt["lepFlavor"]) == 1) < 0.7  # e and mu in about equal parts


def test_w_charge_asymmetry_and_non_prompt_leptons(batches):
    w = batches["wjets"]
    one = ak.num(w["lepPt"]) >= 1
    # W+ -> l+ nu outnumbers W- -> l- nu at the LHC by about 11.6 / 8.6.
    assert 0.53 < ak.mean(w["lepCharge"][one][:, 0] == 1) < 0.62
    # Non-prompt leptons (from b decays in ttbar) fail isolation and have large |d0 significance|.
    tt = batches["ttbar"]
    iso, d0 = ak.flatten(tt["lepIsoLoose_VarRad"]), np.abs(ak.flatten(tt["lepD0Sig"]))
    assert np.mean(d0[~iso] > 3) > 2 * np.mean(d0[iso] > 3)
    assert np.mean(d0[iso] > 3) < 0.15


def test_weights_normalise_to_cross_section_and_luminosity(sample, batches):
    _, written, _ = sample
    for channel in ("ttbar", "singletop", "zeejets"):
        wgt = np.concatenate([read(p)["wgt"].to_numpy().astype(float) for p in written[channel]])
        target = CHANNELS[channel].xsec_pb * 1000 * LUMI
        assert wgt.sum() == pytest.approx(target, rel=1e-5)
        if channel == "zeejets":
            assert np.allclose(wgt, target / len(wgt), rtol=1e-6)
        else:
            assert 0.02 < np.mean(wgt < 0) < 0.12
            assert np.allclose(np.abs(wgt), np.abs(wgt[0]), rtol=1e-6)
    tt = batches["ttbar"]["wgt"]
    assert 0.05 < np.mean(tt < 0) < 0.09


# ---------------------------------------------------------------------------- kinematics helpers


def test_two_body_decay_conserves_four_momentum_and_matches_vector_boost():
    from megaset.pipeline import _kinematics as kin

    rng = np.random.default_rng(2)
    parent_mass = np.array([172.5, 91.19, 800.0])
    parent = kin.from_pxpy_y_m(np.array([40.0, 250.0, 5.0]), np.array([-30.0, 10.0, 0.0]),
                               np.array([0.3, -2.1, 1.0]), parent_mass)
    a, b = kin.two_body(rng, parent, parent_mass, np.array([80.4, 0.0, 300.0]), np.array([4.18, 0.0, 91.19]))
    np.testing.assert_allclose(a + b, parent, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(kin.mass(a), [80.4, 0.0, 300.0], atol=1e-3)
    # Back in the parent's rest frame (with vector), the daughters are back to back with p* by hand.
    boost = vector.array({"px": parent[:, 1], "py": parent[:, 2], "pz": parent[:, 3], "E": parent[:, 0]})
    rest = vector.array({"px": a[:, 1], "py": a[:, 2], "pz": a[:, 3], "E": a[:, 0]}).boost_beta3(-boost.to_beta3())
    m, m1, m2 = parent_mass, np.array([80.4, 0.0, 300.0]), np.array([4.18, 0.0, 91.19])
    p_star = np.sqrt((m**2 - (m1 + m2) ** 2) * (m**2 - (m1 - m2) ** 2)) / (2 * m)
    np.testing.assert_allclose(rest.p, p_star, rtol=1e-7)


def test_breit_wigner_and_off_shell_pair_masses():
    from megaset.pipeline import _kinematics as kin

    rng = np.random.default_rng(3)
    z = kin.breit_wigner(rng, 91.1876, 2.4955, 40.0, 250.0, 200_000)
    q1, q2, q3 = np.percentile(z, [25, 50, 75])
    assert q2 == pytest.approx(91.19, abs=0.05)
    assert q3 - q1 == pytest.approx(2.4955, rel=0.05)  # a Breit-Wigner's quartiles sit at m0 -+ width / 2
    assert z.min() >= 40.0 and z.max() <= 250.0
    m1, m2 = kin.off_shell_pair(rng, np.full(20_000, 125.2), 80.3692, 2.085, low=4.0)
    assert np.all(m1 + m2 < 125.2) and np.all(m1 >= m2) and m2.min() >= 4.0
    assert 76.0 < np.median(m1) < 81.0 and 20.0 < np.median(m2) < 45.0


def _leading_pair(b) -> tuple[np.ndarray, ...]:
    """Per event with two leptons or more: the leading pair's mass, rapidity, charge product, pTs."""
    vector.register_awkward()
    lep = ak.zip({"pt": b["lepPt"], "eta": b["lepEta"], "phi": b["lepPhi"], "mass": b["lepM"]},
                 with_name="Momentum4D")[ak.num(b["lepPt"]) >= 2]
    q = b["lepCharge"][ak.num(b["lepPt"]) >= 2]
    pair = lep[:, 0] + lep[:, 1]
    return tuple(ak.to_numpy(x) for x in (pair.mass, abs(pair.rapidity), q[:, 0] * q[:, 1], lep[:, 0].pt,
                                          lep[:, 1].pt))


def test_signal_zoo_kinematics():
    from megaset.pipeline._processes import ZOO

    assert set(ZOO) == {"sleptons_200_180", "hpp_vbf_500", "heavy_higgs_llvv_700", "zprime_forward_300", "four_tops"}
    # Simulated when named, not by default.
    assert not set(ZOO) & set(demo_inputs(SimulateConfig()))
    assert all(CHANNELS[name].signal for name in ZOO)
    b = {name: generate(name, 3000, 5) for name in ZOO}
    # Compressed sleptons: soft opposite-sign same-flavour pairs (Delta m = 20 GeV).
    m, _, qq, lead, sub = _leading_pair(b["sleptons_200_180"])
    assert np.median(sub) < 20 and np.median(lead) < 35 and np.mean(qq < 0) > 0.95 and np.median(m) < 60
    # The thesis' selection (m_ll > 70, both above 25 GeV) keeps few of them.
    assert np.mean((m > 70) & (sub > 25)) < 0.05
    # Doubly charged scalar: same-sign pairs, forward tagging jets in opposite hemispheres.
    _, _, qq, _, _ = _leading_pair(b["hpp_vbf_500"])
    assert np.mean(qq > 0) > 0.95
    eta = b["hpp_vbf_500"]["jetEta"]
    assert np.mean(ak.to_numpy((ak.sum(eta > 2, axis=1) >= 1) & (ak.sum(eta < -2, axis=1) >= 1))) > 0.3
    # Heavy scalar -> ZZ -> ll nu nu: a Z peak in m_ll and MET of a few hundred GeV.
    m, _, qq, _, _ = _leading_pair(b["heavy_higgs_llvv_700"])
    assert abs(np.median(m) - 91.2) < 3 and np.mean(qq < 0) > 0.95
    assert np.median(b["heavy_higgs_llvv_700"]["met_Et"]) > 200
    # Forward resonance: m_ll at 300 GeV, the pair at |y| around 2.
    m, y, _, _, _ = _leading_pair(b["zprime_forward_300"])
    assert abs(np.median(m) - 300) < 10 and np.median(y) > 1.8
    # Four tops: many jets, the leading lepton pair same-sign in a good part of the events.
    _, _, qq, _, _ = _leading_pair(b["four_tops"])
    assert np.median(ak.to_numpy(ak.num(b["four_tops"]["jetPt"]))) >= 6 and 0.25 < np.mean(qq > 0) < 0.6


def test_held_out_zoo_kinematics():
    from megaset.pipeline._processes import HELD_OUT, ZOO

    assert set(HELD_OUT) == {"chargino_ww_400_100", "wprime_wz_1200", "higgsino_150_130", "same_sign_tops"}
    assert not set(HELD_OUT) & (set(ZOO) | set(demo_inputs(SimulateConfig())))
    assert all(CHANNELS[name].signal and CHANNELS[name].zoo for name in HELD_OUT)
    b = {name: generate(name, 3000, 5) for name in HELD_OUT}
    # Chargino pairs: opposite-sign pairs of any flavours (e mu in half), hard leptons, MET.
    m, _, qq, _, sub = _leading_pair(b["chargino_ww_400_100"])
    lead_flavour = b["chargino_ww_400_100"]["lepFlavor"][ak.num(b["chargino_ww_400_100"]["lepPt"]) >= 2]
    assert np.mean(qq < 0) > 0.95 and np.median(sub) > 25
    assert 0.3 < np.mean(ak.to_numpy(lead_flavour[:, 0] != lead_flavour[:, 1])) < 0.7
    assert np.median(b["chargino_ww_400_100"]["met_Et"]) > 60
    # W' -> WZ: a Z peak in the leading pair's mass for most events, a third lepton in part, hard leptons.
    m, _, _, lead, _ = _leading_pair(b["wprime_wz_1200"])
    assert np.mean(np.abs(m - 91.2) < 10) > 0.5 and np.median(lead) > 200
    assert np.mean(ak.to_numpy(ak.num(b["wprime_wz_1200"]["lepPt"])) >= 3) > 0.1
    # Higgsinos (150, 130): a soft opposite-sign pair, m_ll below the 20 GeV splitting.
    m, _, qq, lead, _ = _leading_pair(b["higgsino_150_130"])
    assert np.mean(qq < 0) > 0.9 and np.quantile(m, 0.9) < 21 and np.median(lead) < 25
    # Same-sign tops: the leading pair same-sign in most events, b-jets among the jets.
    _, _, qq, _, _ = _leading_pair(b["same_sign_tops"])
    assert np.mean(qq > 0) > 0.75 and np.median(ak.to_numpy(ak.num(b["same_sign_tops"]["jetPt"]))) >= 2
