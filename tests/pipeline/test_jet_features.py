"""Jet features against hand-made jets and direct computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import vector

from megaset.pipeline.jet_features import jet_images, jet_kinematics, leading_constituents, nsubjettiness


def _image(pt, eta, phi, **kw):
    side = kw.get("padded", kw.get("pixels", 9))
    return jet_images(np.array(pt), np.array(eta), np.array(phi), np.array([0, len(pt)]), **kw).toarray().reshape(
        side, side)


def test_hand_built_jet_is_centred_rotated_and_normalised():
    # pT 3 at eta +1, pT 1 at eta -3 (around eta 0.5, phi 3.1): the centroid is the jet's
    # (0.5, 3.1); the principal axis lies along eta and is turned onto the vertical.
    img = _image([3.0, 1.0], [1.5, -2.5], [3.1, 3.1], pixels=9, padded=9, extent=9.0)
    expected = np.zeros((9, 9))
    expected[3, 4] = 0.75  # one pixel above the centre: y = +1
    expected[7, 4] = 0.25  # y = -3
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_a_mirrored_jet_is_flipped_back_and_padding_centres_the_image():
    plain = _image([3.0, 1.0], [1.5, -2.5], [3.1, 3.1], pixels=9, padded=11, extent=9.0)
    mirrored = _image([3.0, 1.0], [-0.5, 3.5], [3.1, 3.1], pixels=9, padded=11, extent=9.0)
    np.testing.assert_allclose(plain, mirrored, atol=1e-6)
    assert plain[4, 5] == pytest.approx(0.75) and plain[8, 5] == pytest.approx(0.25)
    assert plain[0].sum() == plain[:, 0].sum() == 0.0


def test_phi_wraps_around_pi_when_centring():
    img = _image([1.0, 1.0], [0.0, 0.0], [math.pi - 0.5, -math.pi + 0.5], pixels=9, padded=9, extent=9.0)
    assert img.sum() == pytest.approx(1.0)
    assert img[:, 4].sum() == pytest.approx(1.0)  # both on the vertical axis through the centre


def test_jet_kinematics_match_the_vector_library():
    rng = np.random.default_rng(1)
    pt, eta, phi = rng.uniform(1, 100, 12), rng.uniform(-1, 1, 12), rng.uniform(-3, 3, 12)
    energy = pt * np.cosh(eta) * 1.01  # slightly massive constituents
    kin = jet_kinematics(pt, eta, phi, energy, np.array([0, 5, 12]))
    for j, (lo, hi) in enumerate(((0, 5), (5, 12))):
        v = vector.array({"pt": pt[lo:hi], "eta": eta[lo:hi], "phi": phi[lo:hi], "E": energy[lo:hi]}).sum()
        assert kin["mass"][j] == pytest.approx(v.mass, rel=1e-9)
        assert kin["pt"][j] == pytest.approx(v.pt, rel=1e-9)
        assert kin["eta"][j] == pytest.approx(v.eta, rel=1e-9)


def test_leading_constituents_are_sorted_relative_and_padded():
    out = leading_constituents(np.array([2.0, 7.0, 5.0]), np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.1, 1.2]),
                               np.array([2.0, 7.0, 5.0]), np.array([0, 3]), np.array([0.2]), np.array([1.0]), 4)
    np.testing.assert_allclose(out[0, :, 0], [7.0, 5.0, 2.0, 0.0])
    np.testing.assert_allclose(out[0, :3, 1], [0.0, 0.1, -0.1], atol=1e-6)
    np.testing.assert_allclose(out[0, :3, 2], [0.1, 0.2, 0.0], atol=1e-6)


# ---------------------------------------------------------------------------- N-subjettiness, brute force

def _rap_phi(p):
    e, px, py, pz = p
    return 0.5 * math.log((e + pz) / (e - pz)), math.atan2(py, px)


def _dr2(a, b):
    (ya, pa), (yb, pb) = a, b
    dphi = abs(pa - pb)
    dphi = min(dphi, 2 * math.pi - dphi)
    return (ya - yb) ** 2 + dphi**2


def _brute_taus(pt, eta, phi, n_max):
    """Exclusive kT written out: recompute every pairwise distance, merge the closest pair (E-scheme)."""
    parts = [(p * math.cosh(y), p * math.cos(f), p * math.sin(f), p * math.sinh(y))
             for p, y, f in zip(pt, eta, phi, strict=True)]
    jets = list(parts)
    taus = {}
    while True:
        if len(jets) <= n_max:
            axes = [_rap_phi(j) for j in jets]
            taus[len(jets)] = sum(p * min(math.sqrt(_dr2((y, f), a)) for a in axes)
                                  for p, y, f in zip(pt, eta, phi, strict=True)) / sum(pt)
        if len(jets) == 1:
            break
        best = min(itertools.combinations(range(len(jets)), 2), key=lambda ij: min(
            jets[ij[0]][1] ** 2 + jets[ij[0]][2] ** 2, jets[ij[1]][1] ** 2 + jets[ij[1]][2] ** 2)
            * _dr2(_rap_phi(jets[ij[0]]), _rap_phi(jets[ij[1]])))
        i, j = best
        merged = tuple(a + b for a, b in zip(jets[i], jets[j], strict=True))
        jets = [x for k, x in enumerate(jets) if k not in (i, j)] + [merged]
    return [taus.get(n, 0.0) for n in range(1, n_max + 1)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nsubjettiness_matches_a_brute_force_computation(seed):
    rng = np.random.default_rng(seed)
    n = 7 + seed
    # Three hard prongs with soft spray around them: a top-like jet.
    centres = rng.uniform(-0.5, 0.5, size=(3, 2))
    pick = rng.integers(0, 3, n)
    eta = centres[pick, 0] + rng.normal(0, 0.05, n)
    phi = 3.0 + centres[pick, 1] + rng.normal(0, 0.05, n)  # near pi: the wrap is exercised
    pt = rng.uniform(5, 200, n)
    taus, _ = nsubjettiness(pt, eta, phi, pt * np.cosh(eta), np.array([0, n]), 5)
    np.testing.assert_allclose(taus[0], _brute_taus(pt, eta, _wrap(phi), 5), rtol=2e-5, atol=1e-7)


def _wrap(phi):
    return (phi + np.pi) % (2 * np.pi) - np.pi


def test_tau_vanishes_once_every_constituent_is_an_axis():
    taus, _ = nsubjettiness(np.array([50.0, 30.0, 20.0]), np.array([0.0, 0.3, -0.2]), np.array([0.0, 0.1, 0.4]),
                            np.array([50.0, 30.0, 20.0]) * np.cosh([0.0, 0.3, -0.2]), np.array([0, 3]), 5)
    assert taus[0, 0] > taus[0, 1] > 0
    np.testing.assert_array_equal(taus[0, 2:], 0.0)
