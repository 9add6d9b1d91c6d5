from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import vector

from megaset.config import PhotonSelection, SchemaConfig, SelectionConfig
from megaset.errors import ConfigError, NonFiniteInputError
from megaset.pipeline.schema import read_events
from megaset.pipeline.selection import cutflow_steps, select

PI = float(np.pi)
ME, MMU = 0.000511, 0.10566


def e(pt, eta, phi, *, tight=True, iso=True, d0sig=0.5):
    return (pt, eta, phi, ME, 1, tight, iso, d0sig)


def mu(pt, eta, phi, *, tight=True, iso=True, d0sig=0.5):
    return (pt, eta, phi, MMU, 2, tight, iso, d0sig)


def jet(pt, eta, phi, mass, btag):
    return (pt, eta, phi, mass, btag)


# Twelve events, each built to pass or fail one cut of the 2-lepton (default) selection.
EVENTS = [
    # 0: ee, passes. Jets: b-jet, light jet at |eta| = 2.8, an in-between b-tag, one below 20 GeV, one at |eta| 2.81.
    dict(w=1.0, leps=[e(50, 0.5, 0.0), e(45, -0.5, 2.8)],
         jets=[jet(60, 1.0, 1.0, 10, 3.0), jet(30, -2.8, 2.0, 5, 0.1), jet(25, 0.0, -1.0, 4, 1.0),
               jet(19.9, 0.0, 0.0, 1, 0.1), jet(40, 2.81, 0.5, 3, 0.1)]),
    # 1: mu mu + a third (electron) lepton, passes; muon at |eta| = 2.7; b-tags exactly at the working points.
    dict(w=0.5, leps=[mu(40, 2.7, 0.3), e(15, 0.0, 1.0), mu(35, -1.0, -2.5)],
         jets=[jet(40, 0.0, 0.0, 5, 0.665), jet(35, 1.0, 1.0, 5, 2.195)]),
    # 2: e mu, passes, negative weight.
    dict(w=-0.25, leps=[mu(50, -0.4, 3.0), e(60, 0.2, 0.0)], jets=[]),
    # 3: mu + non-tight electron: 1 lepton.
    dict(w=2.0, leps=[mu(50, 0.0, 0.0), e(45, 0.0, PI, tight=False)], jets=[jet(100, 0.0, 1.0, 10, 5.0)]),
    # 4: electron at |eta| = 2.47 (in), electron at 2.48 (out), muon at 2.6 (in): passes.
    dict(w=0.25, leps=[e(50, 2.47, 0.0), e(40, -2.48, 1.0), mu(40, 2.6, PI)], jets=[]),
    # 5: d0 significance: e at 5.0 (in), mu at -3.0 (in, not tight: muons need no tight),
    #    mu at 3.1 (out), e at -5.1 (out), mu at 4.0 (out: 4 is an electron's cut, not a muon's). Passes.
    dict(w=0.125, leps=[e(50, 0.3, 0.0, d0sig=5.0), mu(45, -0.3, PI, d0sig=-3.0, tight=False),
                        mu(44, 0.0, 1.0, d0sig=3.1), e(43, 0.0, 2.0, d0sig=-5.1), mu(42, 0.0, -1.0, d0sig=4.0)],
         jets=[]),
    # 6: two electrons, m_ll ~ 9 GeV: fails m_ll.
    dict(w=1.5, leps=[e(30, 0.0, 0.0), e(28, 0.1, 0.3)], jets=[jet(50, 0.0, 0.0, 5, 0.0)]),
    # 7: m_ll ~ 76 GeV but the second lepton has 24 GeV: fails the trigger.
    dict(w=0.75, leps=[mu(60, 0.0, 0.0), mu(24, 0.0, PI)], jets=[]),
    # 8: non-isolated muon: 1 lepton.
    dict(w=1.25, leps=[e(50, 0.0, 0.0), mu(45, 0.0, PI, iso=False)], jets=[]),
    # 9: electron at 9.9 GeV (out), muon at exactly 10 GeV (in): m_ll ~ 84 passes, trigger fails.
    dict(w=0.625, leps=[e(9.9, 0.0, 0.0), mu(50, 1.25, 0.0), mu(10, -1.25, PI)], jets=[]),
    # 10: empty event.
    dict(w=1.0, leps=[], jets=[]),
    # 11: three leptons with m_ll ~ 11 GeV: fails m_ll; in 3-lepton mode fails the 20 GeV trigger.
    dict(w=0.5, leps=[e(30, 0.0, 0.0), mu(15, 0.2, 0.5), mu(12, -0.2, 1.0)], jets=[]),
]


def branches(events=EVENTS) -> dict:
    def jag(key, i, dtype):
        return ak.unflatten(np.array([o[i] for ev in events for o in ev[key]], dtype=dtype),
                            np.array([len(ev[key]) for ev in events], dtype=np.int64))

    out = {f"jet{v}": jag("jets", i, np.float32) for i, v in enumerate(("Pt", "Eta", "Phi", "M", "dl1r"))}
    out |= {f"lep{v}": jag("leps", i, np.float32) for i, v in enumerate(("Pt", "Eta", "Phi", "M"))}
    out |= {"lepFlavor": jag("leps", 4, np.int32), "lepTight": jag("leps", 5, bool),
            "lepIsoLoose_VarRad": jag("leps", 6, bool), "lepD0Sig": jag("leps", 7, np.float32)}
    out["lepCharge"] = ak.ones_like(out["lepFlavor"])
    n = len(events)
    out["met_Et"] = np.linspace(10, 120, n, dtype=np.float32)
    out["met_phi"] = np.linspace(-3, 3, n, dtype=np.float32)
    out["wgt"] = np.array([ev["w"] for ev in events], dtype=np.float32)
    out["runNumber"] = np.full(n, 284500, dtype=np.uint32)
    out["eventNumber"] = np.arange(1000, 1000 + n, dtype=np.uint64)
    return out


def sample(data=None, schema=SchemaConfig()):
    return read_events(branches() if data is None else data, schema, "sample.root")


def p4(obj):
    pt, eta, phi, mass = obj[:4]
    # The same float32 rounding as the ntuple branches.
    return vector.obj(pt=float(np.float32(pt)), eta=float(np.float32(eta)), phi=float(np.float32(phi)),
                      mass=float(np.float32(mass)))


def test_cutflow_2lep_raw_and_weighted():
    sel = select(sample(), SelectionConfig(), "sample.root")
    assert sel.cutflow == [
        ("all", 12, 9.25),
        ("finite", 12, 9.25),
        (">=2 leptons", 9, 5.0),
        ("m_ll > 70 GeV", 7, 3.0),
        ("trigger: >=2 leptons pT > 25 GeV", 5, 1.625),
    ]
    assert [step for step, _, _ in sel.cutflow] == cutflow_steps(SelectionConfig())
    assert np.flatnonzero(sel.mask).tolist() == [0, 1, 2, 4, 5]
    assert sel.entry.tolist() == [0, 1, 2, 4, 5]
    assert sel.event.tolist() == [1000, 1001, 1002, 1004, 1005]
    assert sel.weight.tolist() == [1.0, 0.5, -0.25, 0.25, 0.125]
    assert sel.nonfinite == {}


def test_thresholds_come_from_the_config():
    cfg = SelectionConfig(mll_min=100.0, trigger_pt_2lep=44.0)
    sel = select(sample(), cfg)
    # m_ll: event 0 ~105.7, 1 ~243, 2 ~114, 4 ~90, 5 ~99, 7 ~76, 9 ~84; then two leptons above 44 GeV.
    assert [step for step, _, _ in sel.cutflow][3:] == ["m_ll > 100 GeV", "trigger: >=2 leptons pT > 44 GeV"]
    assert np.flatnonzero(sel.mask).tolist() == [0, 2]


def test_object_counts_and_btag_split():
    sel = select(sample(), SelectionConfig())
    aux = sel.aux
    assert aux["n_electrons"].tolist() == [2, 1, 1, 1, 1]
    assert aux["n_muons"].tolist() == [0, 2, 1, 1, 1]
    assert aux["n_jets"].tolist() == [3, 2, 0, 0, 0]
    assert aux["n_light_jets"].tolist() == [1, 0, 0, 0, 0]  # btag 0.665 is not light (strict <)
    assert aux["n_b_jets"].tolist() == [1, 1, 0, 0, 0]  # btag 2.195 is a b-jet (>=)
    assert all(aux[k].dtype == np.int16 for k in aux if k.startswith("n_"))

    objs = sel.objects
    assert set(objs) == {"jets", "light_jets", "b_jets", "electrons", "muons"}
    assert all(o.n_events == 5 for o in objs.values())
    np.testing.assert_array_equal(objs["jets"]["pt"], np.float32([60, 30, 25, 40, 35]))
    np.testing.assert_array_equal(objs["light_jets"]["pt"], np.float32([30]))
    np.testing.assert_array_equal(objs["b_jets"]["pt"], np.float32([60, 35]))
    # The in-between jets (btag 1.0 and 0.665) are in "jets" only.
    assert sorted(objs["jets"]["btag"].tolist()) == pytest.approx([0.1, 0.665, 1.0, 2.195, 3.0])
    np.testing.assert_array_equal(objs["electrons"]["eta"], np.float32([0.5, -0.5, 0.0, 0.2, 2.47, 0.3]))
    np.testing.assert_array_equal(objs["muons"]["d0sig"], np.float32([0.5, 0.5, 0.5, 0.5, -3.0]))
    assert objs["electrons"]["flavor"].tolist() == [1] * 6 and objs["muons"]["flavor"].tolist() == [2] * 5


def _cfg(**changes) -> SelectionConfig:
    """The default selection with some fields of its lepton sections changed."""
    base = SelectionConfig()
    return base.model_copy(update={k: getattr(base, k).model_copy(update=v) for k, v in changes.items()})


def _signal_pts(sel, index) -> list[float] | None:
    """pT of the signal leptons of input event ``index``; None if the event is not selected."""
    rows = np.flatnonzero(sel.mask).tolist()
    if index not in rows:
        return None
    row = rows.index(index)
    pts = []
    for source in ("electrons", "muons"):
        objs = sel.objects[source]
        pts += objs["pt"][objs.offsets[row]:objs.offsets[row + 1]].tolist()
    return sorted(pts, reverse=True)


@pytest.mark.parametrize(
    ("changes", "pts"),
    [
        ({}, [50, 45]),
        ({"electrons": {"d0sig_max": 5.2}}, [50, 45, 43]),  # the -5.1 electron joins
        ({"muons": {"d0sig_max": 4.0}}, [50, 45, 44, 42]),  # the 3.1 and 4.0 muons join
        ({"muons": {"d0sig_max": None}}, [50, 45, 44, 42]),  # no d0 cut on muons at all
        ({"muons": {"require_tight": True}}, None),  # the non-tight muon leaves: one lepton
    ],
)
def test_d0_and_tight_cuts_follow_the_config(changes, pts):
    assert _signal_pts(select(sample(), _cfg(**changes)), 5) == pts


def test_masses_and_ht_against_vector():
    sel = select(sample(), SelectionConfig())
    rows = np.flatnonzero(sel.mask)
    for row, index in enumerate(rows):
        leps = sorted(EVENTS[index]["leps"], key=lambda lep: -lep[0])
        signal = [lep for lep in leps if _is_signal(lep)]
        m_ll = (p4(signal[0]) + p4(signal[1])).mass
        assert sel.aux["m_ll"][row] == pytest.approx(m_ll, rel=1e-6), f"event {index}"
        if len(signal) >= 3:
            m_lll = (p4(signal[0]) + p4(signal[1]) + p4(signal[2])).mass
            assert sel.aux["m_lll"][row] == pytest.approx(m_lll, rel=1e-6)
        else:
            assert sel.aux["m_lll"][row] == 0.0
        jets = [j for j in EVENTS[index]["jets"] if j[0] >= 20 and abs(j[1]) <= 2.8]
        ht = sum(p4(j).pt for j in jets)
        assert sel.aux["ht"][row] == pytest.approx(ht, rel=1e-6)
    # Concrete values: event 0's electrons, event 1's three leptons, event 0's jets.
    assert sel.aux["m_ll"][0] == pytest.approx(105.7, abs=0.1)
    assert sel.aux["m_lll"][1] == pytest.approx((p4(EVENTS[1]["leps"][0]) + p4(EVENTS[1]["leps"][1])
                                                 + p4(EVENTS[1]["leps"][2])).mass, rel=1e-6)
    assert sel.aux["ht"][0] == pytest.approx(115.0)
    assert sel.aux["m_lll"][1] > sel.aux["m_ll"][1] > 240
    np.testing.assert_array_equal(sel.aux["met"], branches()["met_Et"][rows])
    assert all(sel.aux[k].dtype == np.float32 for k in ("met", "met_phi", "m_ll", "m_lll", "ht"))


def _is_signal(lep) -> bool:
    pt, eta, _, _, flavor, tight, iso, d0sig = lep
    f32 = lambda x: float(np.float32(x))  # noqa: E731 - a one-line helper of this test
    if flavor == 1:
        return f32(pt) >= 10 and abs(f32(eta)) <= f32(2.47) and tight and iso and abs(f32(d0sig)) <= 5
    return f32(pt) >= 10 and abs(f32(eta)) <= f32(2.7) and iso and abs(f32(d0sig)) <= 3


def test_three_lepton_mode():
    cfg = SelectionConfig(mode="3lep")
    sel = select(sample(), cfg)
    assert sel.cutflow == [
        ("all", 12, 9.25),
        ("finite", 12, 9.25),
        ("==3 leptons", 2, 1.0),
        ("trigger: >=2 leptons pT > 20 GeV", 1, 0.5),
    ]
    assert np.flatnonzero(sel.mask).tolist() == [1]
    leps = EVENTS[1]["leps"]
    assert sel.aux["m_lll"][0] == pytest.approx((p4(leps[0]) + p4(leps[1]) + p4(leps[2])).mass, rel=1e-6)
    assert sel.aux["m_ll"][0] == pytest.approx((p4(leps[0]) + p4(leps[2])).mass, rel=1e-6)  # 40 and 35 GeV


def test_nonfinite_events_dropped_and_counted():
    data = branches()
    phi = np.asarray(ak.flatten(data["lepPhi"])).copy()
    phi[6] = np.nan  # event 2's electron, a signal lepton: would spoil every later sum
    data["lepPhi"] = ak.unflatten(phi, ak.num(data["lepPt"]))
    met = data["met_Et"].copy()
    met[6] = np.inf
    data["met_Et"] = met
    sel = select(sample(data), SelectionConfig(), "sample.root")
    assert sel.cutflow[:3] == [("all", 12, 9.25), ("finite", 10, 8.0), (">=2 leptons", 7, 3.75)]
    assert sel.cutflow[-1] == ("trigger: >=2 leptons pT > 25 GeV", 4, 1.875)
    assert sel.nonfinite == {"lepPhi": 1, "met_Et": 1}
    assert np.flatnonzero(sel.mask).tolist() == [0, 1, 4, 5]
    clean = select(sample(), SelectionConfig())
    keep = [0, 1, 3, 4]  # rows of events 0, 1, 4, 5 in the clean selection
    for key in ("m_ll", "m_lll", "ht", "met"):
        np.testing.assert_array_equal(sel.aux[key], clean.aux[key][keep])


def test_nonfinite_fail_names_file_and_branch():
    data = branches()
    met = data["met_Et"].copy()
    met[[3, 8]] = np.nan
    data["met_Et"] = met
    with pytest.raises(NonFiniteInputError, match=r"sample\.root: NaN/inf values in 2 events "
                       r"\(values per branch: 'met_Et': 2\); set selection\.on_nonfinite: drop"):
        select(sample(data), SelectionConfig(on_nonfinite="fail"), "sample.root")
    assert select(sample(), SelectionConfig(on_nonfinite="fail")).cutflow[1] == ("finite", 12, 9.25)


def test_negative_and_nonfinite_weights_in_the_cutflow():
    data = branches()
    w = data["wgt"].copy()
    w[10] = np.nan  # the empty event
    data["wgt"] = w
    sel = select(sample(data), SelectionConfig())
    assert sel.cutflow[0] == ("all", 12, 8.25)  # a NaN weight adds nothing, even to "all"
    assert sel.cutflow[1] == ("finite", 11, 8.25)
    assert sel.nonfinite == {"wgt": 1}


def test_missing_role_names_the_config_key():
    schema = SchemaConfig.model_validate({"collections": {
        "jet": SchemaConfig().collections["jet"].model_dump(),
        "lepton": {**SchemaConfig().collections["lepton"].model_dump(),
                   "fields": {"flavor": "lepFlavor", "tight": "lepTight", "iso": "lepIsoLoose_VarRad"}},
    }})
    ev = sample(schema=schema)
    with pytest.raises(ConfigError, match=r"selection\.electrons\.d0sig_max needs the 'd0sig' field, but collection "
                       r"'lepton' has none; add schema\.collections\.lepton\.fields\.d0sig"):
        select(ev, SelectionConfig())
    no_d0 = _cfg(electrons={"d0sig_max": None}, muons={"d0sig_max": None})
    assert _signal_pts(select(ev, no_d0), 5) == [50, 45, 44, 43, 42]
    with pytest.raises(ConfigError, match=r"selection\.photons\.collection is 'photon', but the schema has no such "
                       r"collection \(collections: jet, lepton\)"):
        select(ev, no_d0.model_copy(update={"photons": PhotonSelection()}))


def test_separate_collections_without_flavor_and_photons():
    """NanoAOD-like: Electron, Muon and Photon collections, no flavour field."""
    data = branches()
    flavor = data["lepFlavor"]
    for name, code in (("Electron", 1), ("Muon", 2)):
        for v, b in (("pt", "lepPt"), ("eta", "lepEta"), ("phi", "lepPhi"), ("mass", "lepM"),
                     ("tightId", "lepTight"), ("iso", "lepIsoLoose_VarRad"), ("d0sig", "lepD0Sig")):
            data[f"{name}_{v}"] = data[b][flavor == code]
    data |= {"Photon_pt": ak.Array([[25.0, 19.0]] + [[]] * 11), "Photon_eta": ak.Array([[2.37, 0.0]] + [[]] * 11),
             "Photon_phi": ak.Array([[0.1, 0.2]] + [[]] * 11), "Photon_mass": ak.Array([[0.0, 0.0]] + [[]] * 11)}

    def coll(name, fields):
        kin = {v: f"{name}_{v}" for v in ("pt", "eta", "phi", "mass")}
        return {**kin, "fields": {role: f"{name}_{b}" for role, b in fields.items()}}

    fields = {"tight": "tightId", "iso": "iso", "d0sig": "d0sig"}
    schema = SchemaConfig.model_validate({"collections": {
        "jet": SchemaConfig().collections["jet"].model_dump(),
        "electron": coll("Electron", fields), "muon": coll("Muon", fields), "photon": coll("Photon", {}),
    }})
    # Only the collection and the flavour change: every other cut keeps its default.
    cfg = SelectionConfig.model_validate({
        "electrons": {"collection": "electron", "flavor": None},
        "muons": {"collection": "muon", "flavor": None},
        "photons": {},
    })
    sel = select(read_events(data, schema, "nano.root"), cfg)
    reference = select(sample(), SelectionConfig())
    assert sel.cutflow == reference.cutflow
    for key in ("m_ll", "m_lll", "n_electrons", "n_muons"):
        np.testing.assert_array_equal(sel.aux[key], reference.aux[key])
    assert sel.aux["n_photons"].tolist() == [1, 0, 0, 0, 0]  # 19 GeV out, |eta| = 2.37 in
    np.testing.assert_array_equal(sel.objects["photons"]["pt"], np.float32([25.0]))


def test_leading_leptons_in_busy_events_match_a_per_event_sort():
    rng = np.random.default_rng(7)
    events = []
    for _ in range(200):
        leps = [(rng.choice([e, mu]))(float(rng.uniform(5, 120)), float(rng.uniform(-2.6, 2.6)),
                                      float(rng.uniform(-PI, PI)), d0sig=float(rng.normal(0, 2)))
                for _ in range(rng.integers(0, 9))]
        events.append(dict(w=1.0, leps=leps, jets=[]))
    # No m_ll or trigger cut: every event with two signal leptons is kept.
    sel = select(sample(branches(events)), SelectionConfig(mll_min=-1.0, trigger_pt_2lep=0.0))
    expected_rows = []
    for index, ev in enumerate(events):
        signal = sorted((lep for lep in ev["leps"] if _is_signal(lep)), key=lambda lep: -float(np.float32(lep[0])))
        if len(signal) < 2:
            continue
        expected_rows.append(index)
        row = len(expected_rows) - 1
        assert sel.aux["m_ll"][row] == pytest.approx((p4(signal[0]) + p4(signal[1])).mass, rel=1e-6)
        m_lll = (p4(signal[0]) + p4(signal[1]) + p4(signal[2])).mass if len(signal) >= 3 else 0.0
        assert sel.aux["m_lll"][row] == pytest.approx(m_lll, rel=1e-6)
        assert sel.aux["n_electrons"][row] + sel.aux["n_muons"][row] == len(signal)
    assert np.flatnonzero(sel.mask).tolist() == expected_rows
    assert max(sel.aux["n_electrons"] + sel.aux["n_muons"]) >= 5  # several rounds of the pT ranking


def test_empty_chunk():
    sel = select(sample(branches([])), SelectionConfig())
    assert sel.cutflow[0] == ("all", 0, 0.0) and sel.cutflow[-1][1] == 0
    assert all(len(v) == 0 for v in sel.aux.values())
    assert all(o.n_events == 0 for o in sel.objects.values())


def _lepton_fields(**fields) -> SchemaConfig:
    """The default schema with some fields of its lepton collection mapped otherwise."""
    default = SchemaConfig().model_dump()
    lepton = default["collections"]["lepton"]
    lepton["fields"] |= fields
    return SchemaConfig.model_validate(default)


def _with_iso_cone_sums(events) -> dict:
    """The events' branches with a continuous isolation branch ``lepIso`` (a relative cone sum:
    0 is the best isolated) and an ID level ``lepID`` (0 fails to 4 tight, here 4)."""
    data = branches(events)
    data["lepIso"] = ak.unflatten(np.array([lep[6] for ev in events for lep in ev["leps"]], dtype=np.float32),
                                  np.array([len(ev["leps"]) for ev in events]))
    data["lepID"] = ak.values_astype(data["lepIso"] * 0 + 4, np.int32)
    return data


def test_thresholded_isolation_selects_exactly_the_leptons_within_the_cut():
    """Read as a pass flag, a cone sum drops exactly the best-isolated leptons (value 0); with its cut
    the leptons at or below 0.15 are kept, as a loop over every lepton says."""
    rng = np.random.default_rng(11)
    events = []
    for _ in range(400):
        leps = []
        for _ in range(rng.integers(0, 6)):
            make = e if rng.random() < 0.5 else mu
            iso = float(rng.choice([0.0, 0.15, float(np.float32(rng.exponential(0.2)))]))
            leps.append(make(float(rng.uniform(5, 100)), float(rng.uniform(-2.6, 2.6)), float(rng.uniform(-PI, PI)),
                             tight=bool(rng.random() < 0.8), iso=iso, d0sig=float(rng.normal(0, 2))))
        events.append(dict(w=1.0, leps=leps, jets=[]))
    data, schema = _with_iso_cone_sums(events), _lepton_fields(iso={"branch": "lepIso", "max": 0.15})
    # No m_ll or trigger cut: every event with two signal leptons is kept.
    sel = select(read_events(data, schema, "iso.root"), SelectionConfig(mll_min=-1.0, trigger_pt_2lep=0.0))

    kept_iso = []
    for index, ev in enumerate(events):
        isolated = [(*lep[:6], np.float32(lep[6]) <= np.float32(0.15), lep[7]) for lep in ev["leps"]]
        signal = [lep for lep, flagged in zip(ev["leps"], isolated, strict=True) if _is_signal(flagged)]
        expected = sorted((float(np.float32(lep[0])) for lep in signal), reverse=True) if len(signal) >= 2 else None
        assert _signal_pts(sel, index) == expected, f"event {index}"
        kept_iso += [lep[6] for lep in signal] if expected else []
    assert len(kept_iso) > 100 and kept_iso.count(0.0) > 30 and kept_iso.count(0.15) > 30  # both ends kept
    assert max(kept_iso) == 0.15


def test_continuous_branch_mapped_as_a_flag_is_refused():
    events = [dict(w=1.0, leps=[e(50, 0.0, 0.0, iso=0.0), mu(45, 0.0, 1.0, iso=0.37)], jets=[])]
    data = _with_iso_cone_sums(events)
    with pytest.raises(ConfigError, match=r"iso\.root: branch 'lepIso' \(schema\.collections\.lepton\.fields\.iso\) "
                       r"is read as a pass flag \(0 fails, 1 passes\) but holds other values "
                       r"\(0\.37: 1 of 2 objects\); if it is a continuous variable, give its cut: "
                       r"iso: \{branch: lepIso, max: <cut>\}"):
        read_events(data, _lepton_fields(iso="lepIso"), "iso.root")
    # An ID level (0 to 4) is no flag either; with min it passes at or above.
    with pytest.raises(ConfigError, match=r"branch 'lepID' .*holds other values \(4: 2 of 2 objects\)"):
        read_events(data, _lepton_fields(tight="lepID"), "iso.root")
    tight = read_events(data, _lepton_fields(tight={"branch": "lepID", "min": 4}), "iso.root").collections["lepton"]
    assert tight["tight"].tolist() == [True, True]
    with pytest.raises(ValueError, match=r"fields\.d0sig: only tight and iso take \{branch, max \| min\}; map d0sig "
                       r"to the branch name \(lepD0Sig\) and set its cut in selection\.electrons / muons\.d0sig_max"):
        _lepton_fields(d0sig={"branch": "lepD0Sig", "max": 3.0})
    with pytest.raises(ValueError, match=r"give the cut of 'lepIso' as max \(passes at or below\) or min"):
        _lepton_fields(iso={"branch": "lepIso"})


def _relative_iso_events(rng) -> list[dict]:
    """Leptons whose ``iso`` slot holds an absolute cone sum in GeV: 0, exactly 0.15 pT (pT a
    multiple of 20 GeV and the sum 3/20 of it, both exact in float32 and in MeV) or a random one."""
    events = []
    for _ in range(400):
        leps = []
        for _ in range(rng.integers(0, 6)):
            make = e if rng.random() < 0.5 else mu
            pt = float(rng.choice([20.0 * rng.integers(1, 6), float(rng.integers(5, 100))]))
            cone = float(rng.choice([0.0, 3.0 * pt / 20.0, float(np.float32(rng.exponential(0.2) * pt))]))
            leps.append(make(pt, float(rng.uniform(-2.6, 2.6)), float(rng.uniform(-PI, PI)),
                             tight=bool(rng.random() < 0.8), iso=cone, d0sig=float(rng.normal(0, 2))))
        events.append(dict(w=1.0, leps=leps, jets=[]))
    return events


@pytest.mark.parametrize("units", ["GeV", "MeV"])
def test_relative_isolation_from_an_absolute_cone_sum_selects_exactly_the_right_leptons(units):
    """``relative: true`` divides the cone sum by the lepton's pT after the unit conversion: the
    leptons kept are those whose float32 cone sum / pT (in GeV) is at most 0.15, as a loop over
    every lepton says, whether the file is in GeV or in MeV."""
    events = _relative_iso_events(np.random.default_rng(12))
    data = _with_iso_cone_sums(events)
    if units == "MeV":
        for name in ("lepPt", "lepM", "lepIso", "jetPt", "jetM", "met_Et"):
            data[name] = data[name] * np.float32(1000)
    schema = _lepton_fields(iso={"branch": "lepIso", "max": 0.15, "relative": True}).model_copy(
        update={"units": units})
    sel = select(read_events(data, schema, "iso.root"), SelectionConfig(mll_min=-1.0, trigger_pt_2lep=0.0))

    kept_ratio, dropped_ratio = [], []
    for index, ev in enumerate(events):
        ratio = [np.float32(lep[6]) / np.float32(lep[0]) for lep in ev["leps"]]
        isolated = [(*lep[:6], r <= np.float32(0.15), lep[7]) for lep, r in zip(ev["leps"], ratio, strict=True)]
        signal = [flagged for flagged in isolated if _is_signal(flagged)]
        expected = sorted((float(np.float32(lep[0])) for lep in signal), reverse=True) if len(signal) >= 2 else None
        assert _signal_pts(sel, index) == (None if expected is None else pytest.approx(expected, rel=1e-6)), \
            f"event {index}"
        passing = [r for lep, r in zip(isolated, ratio, strict=True) if _is_signal((*lep[:6], True, lep[7]))]
        kept_ratio += [r for r in passing if r <= np.float32(0.15)] if expected else []
        dropped_ratio += [r for r in passing if r > np.float32(0.15)]
    # Both ends of the cut are met: the best isolated and those at exactly 0.15 are kept, the others not.
    assert kept_ratio.count(0.0) > 30 and kept_ratio.count(np.float32(0.15)) > 30
    assert max(kept_ratio) == np.float32(0.15) and len(dropped_ratio) > 100
    # The same cut on the cone sum as stored (not relative) selects other leptons.
    absolute = _lepton_fields(iso={"branch": "lepIso", "max": 0.15}).model_copy(update={"units": units})
    other = select(read_events(data, absolute, "iso.root"), SelectionConfig(mll_min=-1.0, trigger_pt_2lep=0.0))
    assert not np.array_equal(other.mask, sel.mask)


def test_relative_applies_to_isolation_only():
    with pytest.raises(ValueError, match=r"fields\.tight: relative: true divides an isolation cone sum by pT; it "
                       r"applies to iso only, remove it from tight"):
        _lepton_fields(tight={"branch": "lepID", "min": 4, "relative": True})
def _charged_sample(events: list[dict], charges: list[list[int]], schema=SchemaConfig()):
    data = branches(events)
    data["lepCharge"] = ak.Array([np.array(c, dtype=np.int32) for c in charges])
    return read_events(data, schema, "charged.root")


# Events for the soft and same-sign presets, each built to pass or fail one of their cuts.
SOFT = [
    # 0: two soft muons from a compressed spectrum, m_ll ~ 10 GeV: soft passes, the thesis' 2lep does not.
    dict(w=1.0, leps=[mu(12, 0.0, 0.0), mu(8, 0.3, 0.8)], jets=[]),
    # 1: two electrons at 8 and 9.5 GeV: no lepton above 10 GeV, fails the soft trigger.
    dict(w=1.0, leps=[e(8, 0.0, 0.0), e(9.5, 0.0, 2.0)], jets=[]),
    # 2: an electron at 6.9 GeV is below the soft threshold: one lepton.
    dict(w=1.0, leps=[mu(15, 0.0, 0.0), e(6.9, 0.0, 2.0)], jets=[]),
    # 3: an electron at exactly 7 GeV is in: passes.
    dict(w=1.0, leps=[mu(15, 0.0, 0.0), e(7.0, 0.0, 2.0)], jets=[]),
    # 4: the thesis' Z -> ee event: passes both.
    dict(w=1.0, leps=[e(50, 0.5, 0.0), e(45, -0.5, 2.8)], jets=[]),
]


def test_soft_dilepton_preset_keeps_soft_pairs_without_an_mll_floor():
    cfg = SelectionConfig(mode="soft2lep")
    assert cfg.electrons.pt_min == cfg.muons.pt_min == 7.0
    ev = _charged_sample(SOFT, [[1, -1]] * len(SOFT))
    sel = select(ev, cfg)
    assert np.flatnonzero(sel.mask).tolist() == [0, 3, 4]
    assert [(step, raw) for step, raw, _ in sel.cutflow] == [
        ("all", 5), ("finite", 5), (">=2 leptons", 4), ("trigger: >=1 lepton pT > 10 GeV", 3)]
    assert sel.aux["m_ll"][0] == pytest.approx((p4(mu(12, 0.0, 0.0)) + p4(mu(8, 0.3, 0.8))).mass, rel=1e-5)
    assert np.flatnonzero(select(ev, SelectionConfig()).mask).tolist() == [4]
    # A threshold given in the configuration wins over the preset's.
    assert SelectionConfig(mode="soft2lep", muons={"pt_min": 9.0}).muons.pt_min == 9.0
    assert np.flatnonzero(select(ev, SelectionConfig(mode="soft2lep", muons={"pt_min": 9.0})).mask).tolist() == [3, 4]


SAME_SIGN = [
    # 0: e+ mu+: passes.
    dict(w=1.0, leps=[e(50, 0.0, 0.0), mu(40, 0.5, 2.0)], jets=[]),
    # 1: e+ e-: opposite sign, fails.
    dict(w=1.0, leps=[e(50, 0.0, 0.0), e(45, 0.5, 2.0)], jets=[]),
    # 2: e+ mu- mu+: the leading pair is opposite-sign although a same-sign pair exists: fails.
    dict(w=1.0, leps=[e(50, 0.0, 0.0), mu(40, 0.5, 2.0), mu(30, -0.5, -2.0)], jets=[]),
    # 3: e+ (20 GeV), e- (60), mu- (35), out of pT order: the leading two are e- mu-: passes.
    dict(w=1.0, leps=[e(20, 0.0, 0.0), e(60, 0.5, 2.0), mu(35, -0.5, -2.0)], jets=[]),
    # 4: mu- mu- with the second at 20 GeV: fails the 25 GeV trigger.
    dict(w=1.0, leps=[mu(50, 0.0, 0.0), mu(20, 0.5, 2.0)], jets=[]),
    # 5: one lepton.
    dict(w=1.0, leps=[mu(50, 0.0, 0.0)], jets=[]),
]
SAME_SIGN_CHARGES = [[1, 1], [1, -1], [1, -1, 1], [1, -1, -1], [-1, -1], [1]]


def test_same_sign_preset_requires_the_leading_pair_of_one_sign():
    cfg = SelectionConfig(mode="ss2lep")
    sel = select(_charged_sample(SAME_SIGN, SAME_SIGN_CHARGES), cfg)
    assert np.flatnonzero(sel.mask).tolist() == [0, 3]
    assert [(step, raw) for step, raw, _ in sel.cutflow] == [
        ("all", 6), ("finite", 6), (">=2 leptons", 5), ("same-sign leading leptons", 3),
        ("trigger: >=2 leptons pT > 25 GeV", 2)]
    assert [step for step, _, _ in sel.cutflow] == cutflow_steps(cfg)
    # Every charge flipped: the same events.
    flipped = select(_charged_sample(SAME_SIGN, [[-q for q in c] for c in SAME_SIGN_CHARGES]), cfg)
    assert np.flatnonzero(flipped.mask).tolist() == [0, 3]
    schema = SchemaConfig.model_validate({"collections": {
        "jet": SchemaConfig().collections["jet"].model_dump(),
        "lepton": {**SchemaConfig().collections["lepton"].model_dump(),
                   "fields": {"flavor": "lepFlavor", "tight": "lepTight", "iso": "lepIsoLoose_VarRad",
                              "d0sig": "lepD0Sig"}},
    }})
    with pytest.raises(ConfigError, match=r"selection\.mode: ss2lep needs the 'charge' field, but collection "
                       r"'lepton' has none; add schema\.collections\.lepton\.fields\.charge"):
        select(_charged_sample(SAME_SIGN, SAME_SIGN_CHARGES, schema), cfg)
