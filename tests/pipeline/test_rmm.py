"""The RMM kernel, cell by cell, against the ``vector`` package and values worked out by hand.

Note: the RMM's E_T = sqrt(m^2 + pT^2) is vector's ``.mt`` (vector's ``.Et`` is E sin(theta),
which differs for massive objects), and y is vector's ``.rapidity``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import vector

from megaset.config import RMMConfig, RMMObject, charged_rmm_objects
from megaset.pipeline.objects import Jagged
from megaset.pipeline.rmm import build_rmm, feature_names, rmm_inputs

C = 0.15
SQRT_S = 13000.0

# (pt, eta, phi, mass) per object; one list per event.
Obj = tuple[float, float, float, float]


def _small(**kwargs) -> RMMConfig:
    """ljet 3, bjet 2, ele 2, muo 2: a 10 x 10 matrix, small enough to read in a failure."""
    objects = [
        RMMObject(name="ljet", source="light_jets", count=3),
        RMMObject(name="bjet", source="b_jets", count=2),
        RMMObject(name="ele", source="electrons", count=2),
        RMMObject(name="muo", source="muons", count=2),
    ]
    return RMMConfig(objects=objects, **kwargs)


def _jagged(events: list[list[Obj]], dtype=np.float64) -> Jagged:
    counts = np.array([len(e) for e in events], dtype=np.int64)
    flat = [o for e in events for o in e]
    columns = {
        name: np.array([o[c] for o in flat], dtype=dtype).reshape(-1)
        for c, name in enumerate(("pt", "eta", "phi", "mass"))
    }
    return Jagged.from_counts(counts, columns)


def _build(
    events: list[list[list[Obj]]], met: list[float], met_phi: list[float], cfg: RMMConfig
) -> np.ndarray:
    """``events[i][t]``: the objects of type t in event i. Returns (n, size, size)."""
    per_type = [_jagged([ev[t] for ev in events]) for t in range(len(cfg.objects))]
    out = build_rmm(per_type, np.array(met, dtype=float), np.array(met_phi, dtype=float), cfg)
    assert out.dtype == np.float32
    return out.reshape(len(events), cfg.size, cfg.size)


def _vec(o: Obj):
    return vector.obj(pt=o[0], eta=o[1], phi=o[2], mass=o[3])


def _reference(event: list[list[Obj]], met: float, met_phi: float, cfg: RMMConfig) -> np.ndarray:
    """The matrix of one event, slot by slot with vector's four-vectors (float64)."""
    chekanov = cfg.convention == "chekanov"
    scale = SQRT_S if cfg.normalize == "sqrt_s" else 1.0
    slots = []
    k = 1
    for spec, objs in zip(cfg.objects, event, strict=True):
        leading = sorted(objs, key=lambda o: -o[0])[: spec.count]
        slots += [(k + r, _vec(o), r) for r, o in enumerate(leading)]
        k += spec.count
    rmm = np.zeros((cfg.size, cfg.size))
    rmm[0, 0] = met / scale
    mpx, mpy = met * math.cos(met_phi), met * math.sin(met_phi)
    for n, (i, v, rank) in enumerate(slots):
        if chekanov:
            mt2 = (v.mt + met) ** 2 - (v.px + mpx) ** 2 - (v.py + mpy) ** 2
            rmm[0, i] = math.sqrt(max(mt2, 0.0)) / scale if met > 0 else 0.0
        else:
            rmm[0, i] = math.sqrt(v.E**2 - v.pz**2) / scale
        rmm[i, 0] = C * (math.cosh(v.rapidity) - 1.0)
        if rank == 0:
            rmm[i, i] = v.mt / scale
        else:
            prev = slots[n - 1][1]
            a, b = (prev.mt, v.mt) if chekanov else (prev.pt, v.pt)
            rmm[i, i] = (a - b) / (a + b)
        for j, w, _ in slots[n + 1 :]:
            rmm[i, j] = (v + w).mass / scale
            rmm[j, i] = C * (math.cosh((w.rapidity - v.rapidity) / 2.0) - 1.0)
    return rmm


# Three events, objects deliberately out of pT order; types: ljet, bjet, ele, muo.
EVENTS: list[list[list[Obj]]] = [
    [
        [(45.0, 0.3, 2.0, 7.0), (120.0, -1.2, 0.4, 15.0), (22.0, 2.5, -2.9, 4.0), (60.0, 1.9, -1.0, 9.5)],
        [(80.0, 2.0, 1.3, 100.0)],  # massive at eta 2: y = 1.26, far from eta
        [(35.0, -0.8, -0.5, 0.000511), (51.0, 1.1, 2.7, 0.000511)],
        [(28.0, -2.1, 0.9, 0.10566)],
    ],
    [[], [], [], [(40.0, 0.0, 0.0, 0.10566), (30.0, -0.5, 1.6, 0.10566)]],
    [
        [(33.0, -0.4, 3.0, 6.0), (150.0, 0.7, -2.2, 20.0)],
        [(90.0, -1.5, 0.1, 12.0), (41.0, -2.4, -1.9, 40.0)],
        [(25.5, -2.3, 1.0, 0.000511)],
        [(70.0, 0.2, -0.7, 0.10566), (66.0, -1.0, 2.2, 0.10566)],
    ],
]
MET = [63.2, 0.0, 150.0]
MET_PHI = [1.1, -0.3, -2.9]


@pytest.mark.parametrize("make_cfg", [_small, RMMConfig], ids=["small", "default"])
@pytest.mark.parametrize("convention", ["chekanov", "thesis"])
@pytest.mark.parametrize("normalize", ["none", "sqrt_s"])
def test_every_cell_matches_vector(make_cfg, convention, normalize):
    cfg = make_cfg(convention=convention, normalize=normalize)
    got = _build(EVENTS, MET, MET_PHI, cfg)
    for i, event in enumerate(EVENTS):
        want = _reference(event, MET[i], MET_PHI[i], cfg)
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-12, err_msg=f"event {i}")


def test_cells_worked_out_by_hand():
    # One muon, pT 32 at phi 0, MET 50 at phi pi: m_T^2 = (32 + 50)^2 - (32 - 50)^2 = 6400.
    # Two massless-ish muons at eta 0, 90 degrees apart: m^2 = 2 * 40 * 30 = 2400;
    # dE_T = (40 - 30) / 70; same rapidity: h = 0; y = 0: h_L = 0.
    cfg = RMMConfig(objects=[RMMObject(name="muo", source="muons", count=3)])
    muons = [[(32.0, 0.0, 0.0, 0.0)], [(30.0, 0.0, math.pi / 2, 0.0), (40.0, 0.0, 0.0, 0.0)]]
    got = _build([[m] for m in muons], [50.0, 0.0], [math.pi, 0.0], cfg)
    np.testing.assert_allclose(got[0], [[50, 80, 0, 0], [0, 32, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], rtol=1e-7)
    np.testing.assert_allclose(
        got[1], [[0, 0, 0, 0], [0, 40, math.sqrt(2400), 0], [0, 0, 1 / 7, 0], [0, 0, 0, 0]], rtol=1e-7
    )
    # Pseudorapidity 1 and -1 for massless objects (y = eta): h_L = C (cosh 1 - 1),
    # h = C (cosh(1) - 1) with the half of Chekanov's code (dy = 2).
    pair = [[[(50.0, 1.0, 0.0, 0.0), (20.0, -1.0, 0.0, 0.0)]]]
    got = _build(pair, [0.0], [0.0], cfg)[0]
    assert got[1, 0] == pytest.approx(C * (math.cosh(1.0) - 1.0), rel=1e-7)
    assert got[2, 0] == pytest.approx(C * (math.cosh(1.0) - 1.0), rel=1e-7)
    assert got[2, 1] == pytest.approx(C * (math.cosh(1.0) - 1.0), rel=1e-7)
    # Back to back in rapidity: m^2 = 2 pT1 pT2 (cosh(dy) - cos(dphi)) = 2000 (cosh 2 - 1).
    assert got[1, 2] == pytest.approx(math.sqrt(2000.0 * (math.cosh(2.0) - 1.0)), rel=1e-7)


def test_rapidity_not_pseudorapidity_for_massive_objects():
    # A 100 GeV-mass object at eta 2: y = asinh(pT sinh(2) / sqrt(m^2 + pT^2)) = 1.2606.
    cfg = RMMConfig(objects=[RMMObject(name="x", source="jets", count=2)])
    heavy, light = (50.0, 2.0, 0.3, 100.0), (40.0, 2.0, -0.3, 0.0)
    got = _build([[[heavy, light]]], [0.0], [0.0], cfg)[0]
    y = vector.obj(pt=50.0, eta=2.0, phi=0.3, mass=100.0).rapidity
    assert y == pytest.approx(math.asinh(50.0 * math.sinh(2.0) / math.hypot(100.0, 50.0)))
    assert got[1, 0] == pytest.approx(C * (math.cosh(y) - 1.0), rel=1e-6)
    assert got[1, 0] < 0.5 * C * (math.cosh(2.0) - 1.0)  # an eta-based kernel gives 0.414
    # Same eta, different rapidity: h must not vanish.
    assert got[2, 1] == pytest.approx(C * (math.cosh((2.0 - y) / 2.0) - 1.0), rel=1e-6)
    assert got[2, 1] > 0.01


def test_missing_objects_leave_zero_rows_and_columns():
    cfg = _small()
    # One light jet, no b-jet, one electron, no muon.
    event = [[(50.0, 0.5, 0.1, 8.0)], [], [(30.0, -1.0, 2.0, 0.000511)], []]
    got = _build([event], [40.0], [1.0], cfg)[0]
    present = [1, 6]  # ljet_0, ele_0
    for k in range(1, cfg.size):
        if k not in present:
            assert not got[k].any(), f"row {k}"
            assert not got[:, k].any(), f"column {k}"
    for k in present:
        assert got[k, k] > 0 and got[0, k] > 0
    assert got[1, 6] == pytest.approx((_vec(event[0][0]) + _vec(event[2][0])).mass, rel=1e-6)
    # Exactly one object of a type: its E_T on the diagonal, nothing in the next slot's dE_T.
    assert got[1, 1] == pytest.approx(math.hypot(50.0, 8.0), rel=1e-7)
    assert got[2, 2] == 0.0


def test_unsorted_input_is_sorted_by_pt():
    cfg = _small()
    jets = [(30.0, 0.1, 0.0, 5.0), (90.0, -0.7, 1.0, 11.0), (55.0, 1.4, -2.0, 7.0)]
    shuffled = _build([[jets, [], [], []]], [10.0], [0.0], cfg)[0]
    ordered = _build([[sorted(jets, reverse=True), [], [], []]], [10.0], [0.0], cfg)[0]
    np.testing.assert_array_equal(shuffled, ordered)
    assert shuffled[1, 1] == pytest.approx(math.hypot(90.0, 11.0), rel=1e-7)
    et = [math.hypot(90.0, 11.0), math.hypot(55.0, 7.0), math.hypot(30.0, 5.0)]
    assert shuffled[3, 3] == pytest.approx((et[1] - et[2]) / (et[1] + et[2]), rel=1e-6)


def test_more_objects_than_slots_keeps_the_leading_ones():
    cfg = _small()  # three light-jet slots
    jets = [(25.0 + 10 * i, -2.0 + 0.5 * i, 0.7 * i - 3.0, 3.0 + i) for i in range(8)]
    np.random.default_rng(3).shuffle(jets)
    leading = sorted(jets, reverse=True)[:3]
    got = _build([[jets, [], [], []]], [20.0], [0.5], cfg)[0]
    want = _build([[leading, [], [], []]], [20.0], [0.5], cfg)[0]
    np.testing.assert_array_equal(got, want)
    assert got[1, 1] == pytest.approx(math.hypot(95.0, 10.0), rel=1e-7)
    # Over many events the per-event buffers start afresh each time.
    many = _build([[jets, [], [], []]] * 50, [20.0] * 50, [0.5] * 50, cfg)
    np.testing.assert_array_equal(many, np.broadcast_to(want, many.shape))


def test_zero_met():
    event = [[(50.0, 0.5, 0.1, 8.0)], [], [], [(30.0, -1.0, 2.0, 0.10566)]]
    chekanov = _build([event], [0.0], [0.7], _small())[0]
    assert not chekanov[0].any()  # E_T^miss and every m_T with MET vanish
    thesis = _build([event], [0.0], [0.7], _small(convention="thesis"))[0]
    assert thesis[0, 0] == 0.0
    assert thesis[0, 1] == pytest.approx(math.hypot(50.0, 8.0), rel=1e-7)
    assert thesis[0, 8] == pytest.approx(math.hypot(30.0, 0.10566), rel=1e-7)


@pytest.mark.parametrize("convention", ["chekanov", "thesis"])
def test_sqrt_s_divides_only_energy_and_mass_cells(convention):
    cfg = _small(convention=convention)
    plain = _build(EVENTS, MET, MET_PHI, cfg).reshape(len(EVENTS), -1)
    scaled = _build(EVENTS, MET, MET_PHI, _small(convention=convention, normalize="sqrt_s"))
    scaled = scaled.reshape(len(EVENTS), -1)
    names = feature_names(cfg)
    dimensionless = np.array([n.startswith(("h_", "delta_e_T_")) for n in names])
    assert dimensionless.sum() == 9 + 9 * 8 // 2 + 5  # h_L, lower triangle, dE_T of ranks >= 1
    np.testing.assert_array_equal(scaled[:, dimensionless], plain[:, dimensionless])
    np.testing.assert_allclose(scaled[:, ~dimensionless], plain[:, ~dimensionless] / SQRT_S, rtol=1e-6)
    assert scaled[0, 0] == pytest.approx(63.2 / SQRT_S, rel=1e-6)


def test_other_types_and_multiplicities():
    # Chekanov's layout: jets, b-jets, muons, electrons, photons x 10 -> 51 x 51.
    objects = [
        RMMObject(name=name, source=source, count=10)
        for name, source in (("jet", "jets"), ("bjet", "b_jets"), ("muo", "muons"),
                             ("ele", "electrons"), ("pho", "photons"))
    ]
    cfg = RMMConfig(objects=objects)
    assert cfg.size == 51
    names = feature_names(cfg)
    assert len(names) == 51 * 51
    assert names[41 * 51 + 41] == "e_T_pho_0"
    assert names[-1] == "delta_e_T_pho_9"
    assert names[41 * 51] == "h_L_pho_0"
    photon, jet = (60.0, 0.4, 1.0, 0.0), (35.0, -0.6, -2.0, 5.0)
    event = [[jet], [], [], [], [photon]]
    got = _build([event], [25.0], [0.0], cfg)[0]
    np.testing.assert_allclose(got, _reference(event, 25.0, 0.0, cfg), rtol=1e-6, atol=1e-12)
    assert got[41, 41] == pytest.approx(60.0, rel=1e-7)
    assert got[1, 41] == pytest.approx((_vec(jet) + _vec(photon)).mass, rel=1e-6)


def test_feature_names_default_layout():
    cfg = RMMConfig()
    names = feature_names(cfg)
    assert len(names) == 529 and len(set(names)) == 529
    slot = {f"{o.name}_{r}": 1 + sum(p.count for p in cfg.objects[:t]) + r
            for t, o in enumerate(cfg.objects) for r in range(o.count)}
    assert slot["ele_1"] == 14 and slot["muo_0"] == 18
    assert names[0] == "e_T_miss"
    assert names[1] == "m_T_ljet_0"
    assert names[1 * 23 + 14] == "m_ljet_0_ele_1"
    assert names[14 * 23 + 1] == "h_ele_1_ljet_0"
    assert names[18 * 23] == "h_L_muo_0"
    assert names[24] == "e_T_ljet_0"
    assert names[2 * 23 + 2] == "delta_e_T_ljet_1"
    assert names[7 * 23 + 7] == "e_T_bjet_0"
    assert names[22 * 23 + 22] == "delta_e_T_muo_4"
    assert sum(n.startswith("m_T_") for n in names) == 22
    assert sum(n.startswith("e_T_") for n in names) == 1 + 4


def test_empty_batch():
    cfg = RMMConfig()
    empty = _jagged([])
    assert empty.n_events == 0
    out = build_rmm([empty] * 4, np.zeros(0), np.zeros(0), cfg)
    assert out.shape == (0, 529) and out.dtype == np.float32


@pytest.mark.parametrize("convention", ["chekanov", "thesis"])
def test_sparse_form_holds_the_cells_of_present_objects(convention):
    """(n + 1)^2 cells per event for n objects in its slots (more objects than slots are cut),
    no cell twice. The dense form, checked cell by cell above, is this matrix made dense."""
    cfg = _small(convention=convention)
    events = [
        [[], [], [], []],
        [[(40.0, 0.5, 0.1, 5.0)] * 5, [(60.0, -1.0, 2.0, 4.7)], [], [(30.0, 0.2, -2.0, 0.1)]],
        [[], [(80.0, 2.0, 1.0, 4.7), (70.0, -2.0, -1.0, 4.7)], [(25.0, 0.0, 0.0, 0.0)] * 2, []],
    ]
    per_type = [_jagged([ev[t] for ev in events]) for t in range(4)]
    met, met_phi = np.array([0.0, 35.0, 20.0]), np.array([0.0, 1.0, -3.0])
    sparse = build_rmm(per_type, met, met_phi, cfg, sparse=True)
    assert np.diff(sparse.indptr).tolist() == [1, (3 + 1 + 1 + 1) ** 2, (2 + 2 + 1) ** 2]
    for i in range(3):
        cells = sparse.indices[sparse.indptr[i]:sparse.indptr[i + 1]]
        assert len(np.unique(cells)) == len(cells)


def test_computed_in_float64_from_float32_columns():
    # Two 1 TeV massless objects 1 mrad apart: m = 2 * 1000 * sin(0.0005) = 1.0000 GeV, which
    # float32 arithmetic (E1 E2 - p1.p2 = 0.5 out of 1e6) cannot resolve.
    cfg = RMMConfig(objects=[RMMObject(name="jet", source="jets", count=2)])
    jets = _jagged([[(1000.0, 0.0, 0.0, 0.0), (1000.0, 0.0, 0.001, 0.0)]], dtype=np.float32)
    got = build_rmm([jets], np.zeros(1, dtype=np.float32), np.zeros(1, dtype=np.float32), cfg)
    phi2 = float(np.float32(0.001))  # the stored input, exactly
    assert got[0, 1 * 3 + 2] == pytest.approx(2000.0 * math.sin(phi2 / 2.0), rel=1e-6)
    assert got[0, 1 * 3 + 2] == pytest.approx(1.0, rel=1e-6)


def test_wrong_number_of_collections():
    jets = _jagged([[(50.0, 0.0, 0.0, 0.0)]])
    with pytest.raises(ValueError, match=r"got 2 object collections but rmm.objects lists 4 types"):
        build_rmm([jets, jets], np.ones(1), np.zeros(1), RMMConfig())


def test_missing_kinematic_column():
    cfg = RMMConfig(objects=[RMMObject(name="jet", source="jets", count=2)])
    no_mass = Jagged.from_counts(np.array([1]), {"pt": np.ones(1), "eta": np.ones(1), "phi": np.ones(1)})
    with pytest.raises(ValueError, match=r"rmm object 'jet' \(source 'jets'\) lacks column\(s\) \['mass'\]"):
        build_rmm([no_mass], np.ones(1), np.zeros(1), cfg)


def test_event_count_mismatch():
    cfg = RMMConfig(objects=[RMMObject(name="jet", source="jets", count=2)])
    jets = _jagged([[(50.0, 0.0, 0.0, 0.0)], []])
    with pytest.raises(ValueError, match=r"'jet' .* has 2 events but met_et has 3"):
        build_rmm([jets], np.ones(3), np.zeros(3), cfg)
    with pytest.raises(ValueError, match=r"met_et has 2 events but met_phi has 1"):
        build_rmm([jets], np.ones(2), np.zeros(1), cfg)


# Two electrons, pT 40 and 30, and a muon; charges given per electron.
_DILEPTON = [(40.0, 0.5, 0.0, 0.000511), (30.0, -0.3, 2.0, 0.000511)]


def _charged_leptons(charges: list[int]) -> dict[str, Jagged]:
    electrons = _jagged([_DILEPTON])
    muons = _jagged([[(25.0, 1.2, -1.0, 0.10566)]])
    return {"electrons": Jagged(electrons.offsets, {**electrons.columns, "charge": np.array(charges)}),
            "muons": Jagged(muons.offsets, {**muons.columns, "charge": np.array([1])})}


def test_charged_types_put_opposite_and_same_sign_pairs_in_different_cells():
    cfg = RMMConfig(objects=[RMMObject(name="ep", source="electrons", count=2, charge="positive"),
                             RMMObject(name="em", source="electrons", count=2, charge="negative"),
                             RMMObject(name="mp", source="muons", count=1, charge="positive"),
                             RMMObject(name="mm", source="muons", count=1, charge="negative")])
    names = feature_names(cfg)
    e1, e2 = (_vec(o) for o in _DILEPTON)
    mu = _vec((25.0, 1.2, -1.0, 0.10566))
    os_ = build_rmm(rmm_inputs(_charged_leptons([1, -1]), cfg), np.array([20.0]), np.array([0.3]), cfg)[0]
    ss = build_rmm(rmm_inputs(_charged_leptons([1, 1]), cfg), np.array([20.0]), np.array([0.3]), cfg)[0]
    cell = {name: i for i, name in enumerate(names)}
    # Opposite sign: e+ (pT 40) and e- (pT 30) lead their own types; their mass sits between them.
    assert os_[cell["m_ep_0_em_0"]] == pytest.approx((e1 + e2).mass, rel=1e-6)
    assert os_[cell["e_T_em_0"]] == pytest.approx(e2.mt, rel=1e-6) and os_[cell["m_ep_0_ep_1"]] == 0.0
    # Same sign: both are e+; the mass moves into the e+ block and dE_T appears.
    assert ss[cell["m_ep_0_ep_1"]] == pytest.approx((e1 + e2).mass, rel=1e-6)
    assert ss[cell["delta_e_T_ep_1"]] == pytest.approx((e1.mt - e2.mt) / (e1.mt + e2.mt), rel=1e-6)
    assert ss[cell["m_ep_0_em_0"]] == 0.0 and ss[cell["e_T_em_0"]] == 0.0
    # The mu+ pairs with whichever electrons exist, the mu- slot stays empty.
    assert os_[cell["m_em_0_mp_0"]] == pytest.approx((e2 + mu).mass, rel=1e-6)
    assert ss[cell["m_ep_1_mp_0"]] == pytest.approx((e2 + mu).mass, rel=1e-6)
    assert os_[cell["e_T_mm_0"]] == ss[cell["e_T_mm_0"]] == 0.0
    # Without the charge option both events give one and the same matrix.
    plain = RMMConfig(objects=[RMMObject(name="ele", source="electrons", count=2),
                               RMMObject(name="muo", source="muons", count=1)])
    np.testing.assert_array_equal(
        build_rmm(rmm_inputs(_charged_leptons([1, -1]), plain), np.array([20.0]), np.array([0.3]), plain),
        build_rmm(rmm_inputs(_charged_leptons([1, 1]), plain), np.array([20.0]), np.array([0.3]), plain))


def test_charged_preset_and_its_cost_in_features():
    cfg = RMMConfig(objects="charged")
    assert [(o.name, o.source, o.count, o.charge) for o in cfg.objects[2:]] == [
        ("ep", "electrons", 3, "positive"), ("em", "electrons", 3, "negative"),
        ("mp", "muons", 3, "positive"), ("mm", "muons", 3, "negative")]
    assert cfg.objects == charged_rmm_objects()
    # 1 + 6 + 6 + 4 * 3 = 25 rows: 625 cells against the default's 529.
    assert cfg.size**2 == 625 and RMMConfig().size**2 == 529


def test_charge_option_without_a_charge_field():
    cfg = RMMConfig(objects=[RMMObject(name="ep", source="electrons", count=2, charge="positive")])
    with pytest.raises(ValueError, match=r"rmm object 'ep' takes the positive electrons only, but they have no "
                                         r"'charge' field .* schema.collections.<collection>.fields.charge"):
        rmm_inputs({"electrons": _jagged([_DILEPTON])}, cfg)
