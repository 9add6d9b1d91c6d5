from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
import vector

from megaset.config import SchemaConfig
from megaset.errors import BranchError
from megaset.pipeline.schema import check_branches, nonfinite_events, read_events, required_branches

# Four hand-made events: (pt, eta, phi, mass, btag) per jet; (pt, eta, phi, mass, flavor,
# charge, tight, iso, d0sig) per lepton; MET (et, phi); weight; run; event number.
JETS = [
    [(120.0, 0.4, 1.2, 12.0, 3.1), (45.0, -2.1, -2.9, 6.5, 0.2)],
    [],
    [(33.0, 1.7, 0.1, 4.2, 1.0)],
    [(80.0, -0.3, 3.0, 9.9, -0.5), (60.0, 2.5, -1.1, 7.7, 2.5), (21.0, 0.0, 0.7, 3.3, 0.1)],
]
LEPTONS = [
    [(55.0, 0.9, -0.4, 0.000511, 1, -1, True, True, 1.2), (41.0, -1.3, 2.6, 0.000511, 1, 1, True, False, -0.7)],
    [(30.0, 2.3, 1.9, 0.10566, 2, 1, False, True, 2.9)],
    [],
    [(72.0, 0.05, -3.1, 0.10566, 2, -1, True, True, 0.0), (18.0, -2.4, 0.3, 0.000511, 1, 1, False, True, -4.4)],
]
MET = [(35.0, 0.8), (12.5, -2.2), (80.0, 3.0), (5.0, -0.1)]
WEIGHT = [1.0, 0.5, -0.25, 2.0]
RUN = [284500, 284500, 300000, 310000]
EVENT = [11, 12, 13, 9_000_000_000]

LEP_FIELDS = {"lepFlavor": np.int32, "lepCharge": np.int32, "lepTight": bool, "lepIsoLoose_VarRad": bool,
              "lepD0Sig": np.float32}


def _jagged(rows, i, dtype):
    counts = [len(r) for r in rows]
    flat = np.array([obj[i] for r in rows for obj in r], dtype=dtype)
    return ak.unflatten(flat, counts)


def _common_branches() -> dict:
    out = {"jetdl1r": _jagged(JETS, 4, np.float32)}
    for i, (name, dtype) in enumerate(LEP_FIELDS.items()):
        out[name] = _jagged(LEPTONS, 4 + i, dtype)
    out["wgt"] = np.array(WEIGHT, dtype=np.float32)
    out["runNumber"] = np.array(RUN, dtype=np.uint32)
    out["eventNumber"] = np.array(EVENT, dtype=np.uint64)
    return out


def polar_branches() -> dict:
    out = _common_branches()
    for prefix, rows in (("jet", JETS), ("lep", LEPTONS)):
        for i, var in enumerate(("Pt", "Eta", "Phi", "M")):
            out[prefix + var] = _jagged(rows, i, np.float32)
    out["met_Et"] = np.array([m[0] for m in MET], dtype=np.float32)
    out["met_phi"] = np.array([m[1] for m in MET], dtype=np.float32)
    return out


def cartesian_branches() -> dict:
    """The same physics as px, py, pz, E (float64), computed by `vector` from the float32 values."""
    out = _common_branches()
    for prefix, rows in (("jet", JETS), ("lep", LEPTONS)):
        counts = [len(r) for r in rows]
        cols = [np.array([o[i] for r in rows for o in r], dtype=np.float32).astype(np.float64) for i in range(4)]
        v = vector.array({"pt": cols[0], "eta": cols[1], "phi": cols[2], "mass": cols[3]})
        for var, values in (("Px", v.px), ("Py", v.py), ("Pz", v.pz), ("E", v.E)):
            out[prefix + var] = ak.unflatten(np.asarray(values, dtype=np.float64), counts)
    met = vector.array({
        "pt": np.array([m[0] for m in MET], dtype=np.float32).astype(np.float64),
        "phi": np.array([m[1] for m in MET], dtype=np.float32).astype(np.float64),
    })
    out["metPx"], out["metPy"] = np.asarray(met.px), np.asarray(met.py)
    return out


CARTESIAN = SchemaConfig.model_validate({
    "collections": {
        "jet": {"px": "jetPx", "py": "jetPy", "pz": "jetPz", "energy": "jetE", "fields": {"btag": "jetdl1r"}},
        "lepton": {
            "px": "lepPx", "py": "lepPy", "pz": "lepPz", "energy": "lepE",
            "fields": {"flavor": "lepFlavor", "charge": "lepCharge", "tight": "lepTight",
                       "iso": "lepIsoLoose_VarRad", "d0sig": "lepD0Sig"},
        },
    },
    "met": {"px": "metPx", "py": "metPy"},
})


def write(path, branches) -> str:
    with uproot.recreate(path) as f:
        f["mini"] = branches
    return str(path)


def read_dict(path, schema=SchemaConfig(), entry_start=0):
    with uproot.open(path) as f:
        tree = f["mini"]
        check_branches(tree.typenames(), schema, path)
        arrays = tree.arrays(required_branches(schema), how=dict)
    return read_events(arrays, schema, path, entry_start=entry_start)


@pytest.fixture(scope="module")
def polar_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("polar") / "flat.root", polar_branches())


@pytest.fixture(scope="module")
def cartesian_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("cart") / "cartesian.root", cartesian_branches())


def test_required_branches_follow_the_schema():
    assert required_branches(SchemaConfig()) == [
        "jetPt", "jetEta", "jetPhi", "jetM", "jetdl1r",
        "lepPt", "lepEta", "lepPhi", "lepM", "lepFlavor", "lepCharge", "lepTight", "lepIsoLoose_VarRad", "lepD0Sig",
        "met_Et", "met_phi", "wgt", "runNumber", "eventNumber",
    ]
    cart = required_branches(CARTESIAN)
    assert cart[:5] == ["jetPx", "jetPy", "jetPz", "jetE", "jetdl1r"]
    assert cart[-5:] == ["metPx", "metPy", "wgt", "runNumber", "eventNumber"]
    assert "jetPt" not in cart and "met_Et" not in cart
    assert set(cart) == set(CARTESIAN.branches())


def test_flat_file_gives_the_hand_made_events(polar_file):
    ev = read_dict(polar_file, entry_start=100)
    jets, leps = ev.collections["jet"], ev.collections["lepton"]
    assert jets.counts().tolist() == [2, 0, 1, 3]
    assert leps.counts().tolist() == [2, 1, 0, 2]
    f32 = lambda rows, i: np.array([o[i] for r in rows for o in r], dtype=np.float32)  # noqa: E731 - a one-line helper
    for i, col in enumerate(("pt", "eta", "phi", "mass")):
        np.testing.assert_array_equal(jets[col], f32(JETS, i))
        np.testing.assert_array_equal(leps[col], f32(LEPTONS, i))
        assert jets[col].dtype == np.float32
    np.testing.assert_array_equal(jets["btag"], f32(JETS, 4))
    assert leps["flavor"].tolist() == [1, 1, 2, 2, 1]
    assert leps["charge"].tolist() == [-1, 1, 1, -1, 1]
    assert leps["tight"].tolist() == [True, True, False, True, False]
    assert leps["iso"].tolist() == [True, False, True, True, True]
    np.testing.assert_array_equal(leps["d0sig"], f32(LEPTONS, 8))
    np.testing.assert_array_equal(ev.met_et, np.float32([m[0] for m in MET]))
    assert ev.weight.dtype == np.float64 and ev.weight.tolist() == WEIGHT
    assert ev.run.tolist() == RUN and ev.event.tolist() == EVENT
    assert ev.entry.tolist() == [100, 101, 102, 103]
    assert ev.branches["jet.pt"] == "jetPt" and ev.branches["met_et"] == "met_Et"


def test_cartesian_file_gives_the_same_physics(polar_file, cartesian_file):
    polar, cart = read_dict(polar_file), read_dict(cartesian_file, CARTESIAN)
    for name in ("jet", "lepton"):
        p, c = polar.collections[name], cart.collections[name]
        np.testing.assert_array_equal(p.offsets, c.offsets)
        for col in ("pt", "eta", "phi"):
            np.testing.assert_allclose(c[col], p[col], rtol=2e-7, atol=1e-7, err_msg=f"{name}.{col}")
        # E^2 - p^2 cancels ~8 digits for an electron at 50 GeV; float64 leaves ~1e-8 GeV.
        np.testing.assert_allclose(c["mass"], p["mass"], rtol=1e-5, atol=1e-7, err_msg=f"{name}.mass")
        assert set(c.columns) == set(p.columns)
        for role in set(p.columns) - {"pt", "eta", "phi", "mass"}:
            np.testing.assert_array_equal(c[role], p[role])
    np.testing.assert_allclose(cart.met_et, polar.met_et, rtol=2e-7)
    np.testing.assert_allclose(cart.met_phi, polar.met_phi, rtol=2e-7, atol=1e-7)
    assert cart.branches["jet.pt"] == "jet.pt from jetPx, jetPy"
    assert cart.branches["met_et"] == "met_et from metPx, metPy"


def test_energy_instead_of_mass():
    branches = polar_branches()
    v = vector.array({c: np.asarray(ak.flatten(branches[b]), dtype=np.float64)
                      for c, b in (("pt", "jetPt"), ("eta", "jetEta"), ("phi", "jetPhi"), ("mass", "jetM"))})
    branches["jetE"] = ak.unflatten(np.asarray(v.E, dtype=np.float32), ak.num(branches["jetPt"]))
    schema = SchemaConfig.model_validate({"collections": {
        "jet": {"pt": "jetPt", "eta": "jetEta", "phi": "jetPhi", "energy": "jetE", "fields": {"btag": "jetdl1r"}},
    }})
    ev = read_events(branches, schema, "mem.root")
    # E is float32 here: the recovered mass carries E's rounding (~1e-5 GeV at 500 GeV).
    np.testing.assert_allclose(ev.collections["jet"]["mass"], np.asarray(ak.flatten(branches["jetM"])), atol=3e-3)
    assert ev.branches["jet.mass"] == "jet.mass from jetPt, jetEta, jetE"


@pytest.mark.parametrize("cut", ["slice", "take"])
def test_cut_out_branches_read_like_freshly_built_ones(cut):
    """A chunk sliced from a longer array (its offsets do not start at 0) and events picked
    by index (a ListArray) give the objects of the same events built afresh."""
    pick = slice(1, None) if cut == "slice" else np.array([3, 0, 2])
    branches = {name: values[pick] for name, values in polar_branches().items()}
    fresh = {name: ak.to_packed(values) if isinstance(values, ak.Array) else values
             for name, values in branches.items()}
    got, want = read_events(branches, SchemaConfig(), "mem.root"), read_events(fresh, SchemaConfig(), "mem.root")
    for name in ("jet", "lepton"):
        np.testing.assert_array_equal(got.collections[name].offsets, want.collections[name].offsets)
        for col, values in want.collections[name].columns.items():
            np.testing.assert_array_equal(got.collections[name][col], values, err_msg=f"{name}.{col}")
    assert got.collections["jet"].counts().tolist() == [len(JETS[i]) for i in np.arange(4)[pick]]


def test_coffea_nanoevents_and_uproot_dict_agree(polar_file, cartesian_file):
    from coffea.nanoevents import BaseSchema, NanoEventsFactory

    for path, schema in ((polar_file, SchemaConfig()), (cartesian_file, CARTESIAN)):
        events = NanoEventsFactory.from_root({path: "mini"}, schemaclass=BaseSchema, mode="virtual").events()
        a, b = read_events(events, schema, path, entry_start=7), read_dict(path, schema, entry_start=7)
        assert a.collections.keys() == b.collections.keys()
        for name in a.collections:
            ja, jb = a.collections[name], b.collections[name]
            np.testing.assert_array_equal(ja.offsets, jb.offsets)
            assert ja.columns.keys() == jb.columns.keys()
            for col in ja.columns:
                assert ja[col].dtype == jb[col].dtype
                np.testing.assert_array_equal(ja[col], jb[col])
        for attr in ("met_et", "met_phi", "weight", "run", "event", "entry"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
        assert a.branches == b.branches


def test_unmapped_weight_and_ids_default():
    schema = SchemaConfig(weight=None, run=None, event=None)
    ev = read_events(polar_branches(), schema, "mem.root", entry_start=5)
    assert ev.weight.tolist() == [1.0] * 4
    assert ev.run.tolist() == [0] * 4 and ev.event.tolist() == [0] * 4
    assert ev.entry.tolist() == [5, 6, 7, 8]
    assert "weight" not in ev.branches


def test_missing_branch_names_branch_file_and_closest(tmp_path):
    branches = polar_branches()
    branches["lepD0sig"] = branches.pop("lepD0Sig")
    path = write(tmp_path / "nod0.root", branches)
    with uproot.open(path) as f:
        typenames = f["mini"].typenames()
    with pytest.raises(BranchError, match=r"nod0\.root: branch 'lepD0Sig' "
                       r"\(schema\.collections\.lepton\.fields\.d0sig\) not found \(closest: lepD0sig"):
        check_branches(typenames, SchemaConfig(), path)
    with pytest.raises(BranchError, match=r"nod0\.root: branch 'lepD0Sig' .*not found .*closest: lepD0sig") as err:
        read_events(branches, SchemaConfig(), path)
    assert err.value.branch == "lepD0Sig"


def test_missing_branch_through_nanoevents(tmp_path):
    from coffea.nanoevents import BaseSchema, NanoEventsFactory

    branches = polar_branches()
    del branches["met_phi"]
    path = write(tmp_path / "nometphi.root", branches)
    events = NanoEventsFactory.from_root({path: "mini"}, schemaclass=BaseSchema, mode="virtual").events()
    with pytest.raises(BranchError, match=r"nometphi\.root: branch 'met_phi' \(schema\.met\.phi\) not found"):
        read_events(events, SchemaConfig(), path)


def test_wrongly_typed_branches(tmp_path):
    branches = polar_branches()
    branches["met_Et"] = ak.unflatten(branches["met_Et"], [1, 1, 1, 1])  # one list per event
    branches["lepPt"] = np.ones(4, dtype=np.float32)  # one number per event
    path = write(tmp_path / "types.root", branches)
    with uproot.open(path) as f:
        typenames = f["mini"].typenames()

    with pytest.raises(BranchError, match=r"types\.root: branch 'lepPt' \(schema\.collections\.lepton\.pt\) has type "
                       r"'float' \(one number per event\); expected one number per object"):
        check_branches(typenames, SchemaConfig(), path)
    typenames["lepPt"] = "std::vector<float>"
    with pytest.raises(BranchError, match=r"types\.root: branch 'met_Et' \(schema\.met\.et\) has type "
                       r"'std::vector<float>' \(one number per object\); expected one number per event"):
        check_branches(typenames, SchemaConfig(), path)
    # The same mistakes are caught when reading, whatever checked the file before.
    with pytest.raises(BranchError, match=r"types\.root: branch 'lepPt' .*expected one number per object"):
        read_events(branches, SchemaConfig(), path)


@pytest.mark.parametrize(
    ("branch", "typename", "found"),
    [
        ("met_Et", "std::string", "not a number"),
        ("jetPt", "std::vector<std::string>", r"a list of non-numbers \(string\)"),
        ("jetPt", "std::vector<std::vector<float>>", r"a list of non-numbers \(vector<float>\)"),
        ("met_phi", "float[3]", "a fixed-size array per event"),
    ],
)
def test_non_numeric_types_are_rejected(branch, typename, found):
    typenames = {b: ("float" if b in ("met_Et", "met_phi", "wgt") else "std::vector<float>")
                 for b in required_branches(SchemaConfig())}
    typenames |= {"runNumber": "std::uint32_t", "eventNumber": "std::uint64_t"}
    check_branches(typenames, SchemaConfig(), "ok.root")
    typenames[branch] = typename
    with pytest.raises(BranchError, match=rf"x\.root: branch '{branch}' .*\({found}\); expected"):
        check_branches(typenames, SchemaConfig(), "x.root")


def test_accepted_spellings_of_numbers():
    jagged = ["float[]", "ROOT::VecOps::RVec<float>", "std::vector<Float_t>", "vector<unsigned int>", "int32_t[]"]
    scalar = ["Float_t", "double", "std::int64_t", "unsigned long long", "ULong64_t", "bool"]
    names = required_branches(SchemaConfig())
    for i in range(len(jagged)):
        typenames = {b: jagged[(i + k) % len(jagged)] for k, b in enumerate(names[:14])}
        typenames |= {b: scalar[(i + k) % len(scalar)] for k, b in enumerate(names[14:])}
        check_branches(typenames, SchemaConfig(), "ok.root")


def test_collection_branches_with_different_lengths():
    branches = polar_branches()
    branches["lepEta"] = ak.Array([[0.1, 0.2], [0.3], [0.5], [0.1, 0.2]])
    with pytest.raises(BranchError, match=r"mem\.root: branches 'lepPt' and 'lepEta' of collection 'lepton' hold "
                       r"different numbers of objects \(first at event 2 of the chunk\)"):
        read_events(branches, SchemaConfig(), "mem.root")


def test_nonfinite_values_counted_per_branch_and_event(tmp_path):
    branches = polar_branches()
    eta = np.asarray(ak.flatten(branches["jetEta"])).copy()
    eta[[1, 4]] = [np.nan, np.inf]  # event 0 (second jet) and event 3 (second jet)
    branches["jetEta"] = ak.unflatten(eta, ak.num(branches["jetPt"]))
    met = branches["met_Et"].copy()
    met[1] = -np.inf
    branches["met_Et"] = met
    path = write(tmp_path / "nan.root", branches)

    mask, counts = nonfinite_events(read_dict(path))
    assert mask.tolist() == [True, True, False, True]
    assert counts == {"jetEta": 2, "met_Et": 1}

    clean_mask, clean_counts = nonfinite_events(read_dict(write(tmp_path / "ok.root", polar_branches())))
    assert not clean_mask.any() and clean_counts == {}


def test_nonfinite_from_cartesian_branches_are_named():
    branches = cartesian_branches()
    px = np.asarray(ak.flatten(branches["lepPx"])).copy()
    px[2] = np.nan  # the lepton of event 1
    branches["lepPx"] = ak.unflatten(px, ak.num(branches["lepPy"]))
    mask, counts = nonfinite_events(read_events(branches, CARTESIAN, "cart.root"))
    assert mask.tolist() == [False, True, False, False]
    assert counts == {
        "lepton.pt from lepPx, lepPy": 1,
        "lepton.phi from lepPx, lepPy": 1,
        "lepton.eta from lepPx, lepPy, lepPz": 1,
        "lepton.mass from lepPx, lepPy, lepPz, lepE": 1,
    }
