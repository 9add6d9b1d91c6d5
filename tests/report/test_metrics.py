from __future__ import annotations

import math

import numpy as np
import pytest

from megaset.report.metrics import (
    _ReweightedAUC,
    asimov_significance,
    auc,
    auc_error,
    background_uncertainty,
    best_cut,
    best_significance_improvement,
    binned_mean,
    efficiency_error,
    region_cuts,
    roc_curve,
    separation_matrix,
    signal_efficiency,
    significance,
    threshold_scan,
    weighted_median,
    weighted_quantile,
    working_point,
    yield_summary,
)


def test_auc_of_perfect_reversed_identical_and_tied_samples():
    assert auc([0.1, 0.2, 0.3], [0.5, 0.9]) == 1.0
    assert auc([0.5, 0.9], [0.1, 0.2, 0.3]) == 0.0
    rng = np.random.default_rng(0)
    same = rng.normal(size=50)
    assert auc(same, same.copy()) == pytest.approx(0.5, abs=1e-12)
    assert auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    # Pairs (s, b): (1, 0) won, (1, 1) tied, (2, 0) and (2, 1) won: (1 + 0.5 + 2) / 4.
    assert auc([0.0, 1.0], [1.0, 2.0]) == pytest.approx(0.875)


def test_weighted_auc_is_the_weighted_pair_count():
    # sum over pairs of w_s w_b [s > b] / (W_s W_b): (3*1 [2>1]) + (1*1 [4>1]) + (1*1 [4>3]) = 5 over 4 * 2.
    assert auc([1.0, 3.0], [2.0, 4.0], [1.0, 1.0], [3.0, 1.0]) == pytest.approx(0.625)
    # Negative weights count as zero: the second background event drops out.
    assert auc([1.0, 3.0], [2.0], [1.0, -2.0], [1.0]) == 1.0
    with pytest.raises(ValueError, match=r"the signal has no event with a positive weight"):
        auc([1.0], [2.0], [1.0], [-1.0])
    with pytest.raises(ValueError, match=r"background: 1 weights for 2 values"):
        auc([1.0, 2.0], [2.0], [1.0])


def test_roc_points_and_e10_e100_by_hand():
    background = np.arange(10.0)
    signal = np.array([5.5, 8.5, 9.5, 20.0])
    fpr, tpr, thresholds = roc_curve(background, signal)
    # From the highest cut down: 20 (s), 9.5 (s), 9 (b), 8.5 (s), 8 (b), ...
    np.testing.assert_allclose(fpr[:6], [0.0, 0.0, 0.0, 0.1, 0.1, 0.2])
    np.testing.assert_allclose(tpr[:6], [0.0, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert thresholds[0] == np.inf and thresholds[1] == 20.0
    # At 10 % background efficiency the cut 8.5 keeps b = 9 and three signal events.
    assert signal_efficiency(fpr, tpr, 0.1) == 0.75
    # At 1 %: between (0, 0.5) and (0.1, 0.5).
    assert signal_efficiency(fpr, tpr, 0.01) == 0.5
    assert signal_efficiency(fpr, tpr, 1.0) == 1.0


def test_efficiency_is_interpolated_along_a_tied_step():
    # b = {1, 2}, s = {2, 0}: the tie at 2 is one diagonal step to (0.5, 0.5), then (1, 0.5), (1, 1).
    fpr, tpr, _ = roc_curve([1.0, 2.0], [2.0, 0.0])
    np.testing.assert_allclose(fpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0])
    assert signal_efficiency(fpr, tpr, 0.1) == pytest.approx(0.1)
    assert signal_efficiency(fpr, tpr, 0.25) == pytest.approx(0.25)


def test_weighted_quantiles():
    # Sorted 1, 2, 3 with weights 1, 1, 3: cumulative 1, 2, 5; half of 5 is first reached at 3.
    assert weighted_median([3.0, 1.0, 2.0], [3.0, 1.0, 1.0]) == 3.0
    assert weighted_median([1.0, 2.0, 3.0, 4.0]) == 2.0
    assert weighted_quantile([1.0, 2.0, 3.0, 4.0], None, 0.75) == 3.0
    # A negative weight counts as zero: cumulative 1, 1, 2, half is 1, reached at the first value.
    assert weighted_median([1.0, 2.0, 3.0], [1.0, -5.0, 1.0]) == 1.0
    with pytest.raises(ValueError, match=r"no event with a positive weight"):
        weighted_median([1.0], [0.0])


def test_significances_by_hand():
    assert significance(10.0, 100.0) == 1.0
    # sqrt(2 (110 ln 1.1 - 10)) = sqrt(2 (10.4841198 - 10)) = sqrt(0.9682396)
    assert asimov_significance(10.0, 100.0) == pytest.approx(math.sqrt(2 * (110 * math.log(1.1) - 10)), rel=1e-12)
    assert asimov_significance(10.0, 100.0) == pytest.approx(0.9839916, abs=1e-7)
    assert asimov_significance(5.0, 1.0) == pytest.approx(math.sqrt(2 * (6 * math.log(6) - 5)), rel=1e-12)
    # s << b: both agree.
    assert asimov_significance(1.0, 1e6) == pytest.approx(significance(1.0, 1e6), rel=1e-6)
    np.testing.assert_array_equal(np.isnan(significance([1.0, 1.0], [0.0, -1.0])), [True, True])
    assert np.isnan(asimov_significance(1.0, 0.0)) and asimov_significance(0.0, 4.0) == 0.0
    np.testing.assert_allclose(significance(np.array([2.0, 3.0]), np.array([4.0, 9.0])), [1.0, 1.0])


def test_region_cuts_threshold_scan_and_binned_mean():
    np.testing.assert_allclose(region_cuts(-3.0), [-2.4, -1.8, -1.2])
    np.testing.assert_allclose(region_cuts(0.5, 2, 0.5), [0.75, 1.0])
    # Events at or above each threshold: 10, 20, 30 weighing 1, 2, 4.
    np.testing.assert_allclose(threshold_scan([30.0, 10.0, 20.0], [4.0, 1.0, 2.0], [0.0, 10.0, 10.5, 30.0, 31.0]),
                               [7.0, 7.0, 6.0, 4.0, 0.0])
    # Bin [0, 1): (1*10 + 3*20) / 4; bin [1, 2): 5; bin [2, 3): empty.
    means = binned_mean([0.5, 0.5, 1.5], [10.0, 20.0, 5.0], [1.0, 3.0, 1.0], [0, 1, 2, 3])
    np.testing.assert_allclose(means[:2], [17.5, 5.0])
    assert np.isnan(means[2])


def test_separation_matrix_of_shifted_and_identical_samples():
    a, b, c = np.array([0.0, 1.0]), np.array([2.0, 3.0]), np.array([0.0, 1.0])
    ones = np.ones(2)
    m = separation_matrix([a, b, c], [ones, ones, ones])
    # Row: the anomaly, column: the background. b scores above a and c everywhere.
    np.testing.assert_allclose(m, [[0.5, 0.0, 0.5], [1.0, 0.5, 1.0], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(m + m.T, 1.0)
    empty = separation_matrix([a, b], [ones, np.zeros(2)])
    assert empty[0, 0] == 0.5 and np.isnan(empty[0, 1]) and np.isnan(empty[1, 1])


def _profile_likelihood_z(s: float, b: float, sigma: float) -> float:
    """Z from the Asimov data set by a numerical fit: n ~ Pois(mu s + beta), m ~ Pois(tau beta),
    tau = b / sigma^2, n = s + b, m = tau b; q0 = -2 ln(L(0, beta fitted) / L(1, b))."""
    from scipy.optimize import minimize_scalar

    tau, n = b / sigma**2, s + b
    m = tau * b

    def nll(beta: float, mu: float) -> float:
        return -(n * math.log(mu * s + beta) - (mu * s + beta) + m * math.log(tau * beta) - tau * beta)

    fit = minimize_scalar(lambda beta: nll(beta, 0.0), bounds=(1e-9, 10 * n), method="bounded",
                          options={"xatol": 1e-12})
    return math.sqrt(2 * (fit.fun - nll(b, 1.0)))


@pytest.mark.parametrize(("s", "b", "sigma"), [(10.0, 100.0, 10.0), (5.0, 1.0, 0.5), (3.0, 20.0, 8.0),
                                                (50.0, 400.0, 4.0)])
def test_asimov_significance_with_a_background_uncertainty_is_the_profile_likelihood_fit(s, b, sigma):
    assert asimov_significance(s, b, sigma) == pytest.approx(_profile_likelihood_z(s, b, sigma), rel=1e-6)
    # An uncertain background lowers the significance; a vanishing one gives the plain formula.
    assert asimov_significance(s, b, sigma) < asimov_significance(s, b)
    assert asimov_significance(s, b, 1e-6 * b) == pytest.approx(asimov_significance(s, b), rel=1e-9)


def test_asimov_significance_broadcasts_over_a_scan():
    z = asimov_significance(np.array([10.0, 10.0, 1.0]), np.array([100.0, 100.0, 0.0]), np.array([0.0, 10.0, 1.0]))
    assert z[0] == pytest.approx(0.9839916, abs=1e-7) and z[1] == pytest.approx(0.6901961, abs=1e-7)
    assert np.isnan(z[2])


def test_yields_carry_the_sum_of_weights_squared():
    summary = yield_summary([2.0, 2.0, -1.0, 3.0])
    assert summary == {"events": 4, "yield": 6.0, "error": pytest.approx(math.sqrt(18.0)),
                       "n_eff": pytest.approx(36.0 / 18.0)}
    # Equal weights: N_eff is the number of events and the error sqrt(N) times the weight.
    assert yield_summary(np.full(100, 0.5)) == {"events": 100, "yield": 50.0, "error": 5.0, "n_eff": 100.0}
    assert yield_summary([])["n_eff"] == 0.0
    assert background_uncertainty(16.0, 30.0) == 4.0
    assert background_uncertainty(16.0, 30.0, 0.1) == 5.0


def test_best_cut_refuses_cuts_with_too_few_background_mc_events():
    z = [0.5, 1.0, 1.5, 8.0, np.nan]
    # The 8 sigma sits on 3 MC events: refused; the best cut with >= 10 is the third.
    assert best_cut(z, [100, 40, 10, 3, 0]) == 2
    assert best_cut(z, [100, 40, 10, 3, 0], min_events=1) == 3
    assert best_cut(z, [9, 9, 9, 3, 0]) is None


def _hanley_mcneil(a: float, n_s: int, n_b: int) -> float:
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt((a * (1 - a) + (n_s - 1) * (q1 - a * a) + (n_b - 1) * (q2 - a * a)) / (n_s * n_b))


def test_auc_error_agrees_with_hanley_mcneil_and_follows_the_effective_events():
    rng = np.random.default_rng(3)
    b, s = rng.normal(size=2000), rng.normal(1.0, size=1500)
    a = auc(b, s)
    expected = _hanley_mcneil(a, len(s), len(b))
    assert auc_error(b, s, replicas=400) == pytest.approx(expected, rel=0.15)
    # A common weight changes nothing; half the events at (almost) zero weight: sqrt(2) more.
    assert auc_error(b, s, np.full(2000, 7.0), np.full(1500, 7.0), replicas=400) == pytest.approx(
        auc_error(b, s, replicas=400), rel=1e-9)
    light = np.where(np.arange(2000) % 2 == 0, 1.0, 1e-9), np.where(np.arange(1500) % 2 == 0, 1.0, 1e-9)
    assert auc_error(b, s, *light, replicas=400) == pytest.approx(
        _hanley_mcneil(a, len(s) // 2, len(b) // 2), rel=0.15)


def test_auc_and_its_replicas_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    # Rounded scores: many ties, which both count as half.
    b, s = np.round(rng.normal(size=300), 1), np.round(rng.normal(0.7, size=200), 1)
    wb, ws = rng.uniform(-0.2, 2.0, 300), rng.uniform(0.0, 2.0, 200)
    labels, scores = np.r_[np.zeros(300), np.ones(200)], np.r_[b, s]
    weights = np.clip(np.r_[wb, ws], 0.0, None)
    assert auc(b, s, wb, ws) == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), rel=1e-12)
    # Each replica is the AUC of Poisson(1)-reweighted samples: the same number as scikit-learn's.
    draws = np.random.default_rng(0)
    replica = _ReweightedAUC(b, s, np.clip(wb, 0, None), ws)
    for _ in range(5):
        factor = draws.poisson(1.0, 500)
        assert replica(factor) == pytest.approx(
            roc_auc_score(labels, scores, sample_weight=weights * factor), rel=1e-12)


def test_auc_error_drops_the_replicas_that_draw_no_signal():
    import warnings

    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    b, s = rng.normal(size=40), np.array([0.8, 2.0])
    ws = np.array([1.0, -0.5])  # one signal event of positive weight: a replica misses it about 37 % of the time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = auc_error(b, s, None, ws, replicas=300, seed=2)
    # The same draws by hand: the replicas with signal weight, each scikit-learn's AUC.
    draws = np.random.default_rng(2)
    labels, scores, weights = np.r_[np.zeros(40), np.ones(2)], np.r_[b, s], np.r_[np.ones(40), 1.0, 0.0]
    values = []
    for _ in range(300):
        factor = draws.poisson(1.0, 42)
        if factor[40] > 0:
            values.append(roc_auc_score(labels, scores, sample_weight=weights * factor))
    assert 150 < len(values) < 250
    assert error == pytest.approx(np.std(values, ddof=1), rel=1e-10)
    # Fewer than two replicas left: no spread to take.
    assert math.isnan(auc_error(b, s, None, ws, replicas=1))


def _staircase(n: int = 20_000, m: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    """Background scores 0 .. n-1; half the signal half a unit above each of the top m/2
    background scores, the other half far below. A cut keeping the top k background events
    (k < m/2) keeps k + 1 signal events: E(x) = (floor(x n) + 1) / m."""
    background = np.arange(float(n))
    signal = np.concatenate([background[-(m // 2):] + 0.5, np.full(m // 2, -1.0)])
    return background, signal


def test_e1000_its_background_mc_uncertainty_and_significance_improvement_by_hand():
    n, m = 20_000, 2_000
    background, signal = _staircase(n, m)
    roc = roc_curve(background, signal)
    wp = working_point(background, None, roc, 1e-3, min_events=20)
    # eps_B = 1e-3 keeps the top 20 background events and 21 signal events.
    assert wp["efficiency"] == pytest.approx(21 / m, rel=1e-12)
    assert wp["background_events"] == 20 and wp["enough_background"] is True
    # Binomial sigma_B = sqrt(eps (1 - eps) / n): 4.4699 background events either side of 20,
    # so the cut moves between E = (15 + 1) / m and (24 + 1) / m.
    sigma_events = math.sqrt(1e-3 * (1 - 1e-3) / n) * n
    assert math.floor(20 - sigma_events) == 15 and math.floor(20 + sigma_events) == 24
    assert wp["efficiency_error"] == pytest.approx((25 - 16) / 2 / m, rel=1e-12)
    assert wp["significance_improvement"] == pytest.approx(21 / m / math.sqrt(1e-3), rel=1e-12)
    assert wp["significance_improvement_error"] == pytest.approx(4.5 / m / math.sqrt(1e-3), rel=1e-12)
    # One more background MC event required than the cut keeps: marked, still computed.
    short = working_point(background, None, roc, 1e-3, min_events=21)
    assert short["enough_background"] is False and short["efficiency"] == wp["efficiency"]
    # Weights scaled by a constant change no efficiency and no uncertainty.
    scaled = working_point(background, np.full(n, 7.0), roc_curve(background, signal, np.full(n, 7.0)), 1e-3)
    assert scaled["efficiency"] == pytest.approx(wp["efficiency"]) and scaled["efficiency_error"] == pytest.approx(
        wp["efficiency_error"])


def test_weighted_efficiency_error_by_hand():
    # Passing weights 1, 2 (sum w^2 = 5), failing 3, 4 (25): eff = 3 / 10.
    expected = math.sqrt((0.7**2 * 5 + 0.3**2 * 25) / 100)
    assert float(efficiency_error(5.0, 25.0, 0.3, 10.0)) == pytest.approx(expected, rel=1e-12)
    # Unit weights: the binomial sqrt(eps (1 - eps) / N).
    assert float(efficiency_error(30.0, 70.0, 0.3, 100.0)) == pytest.approx(math.sqrt(0.3 * 0.7 / 100), rel=1e-12)


def test_best_significance_improvement_respects_the_background_floor():
    n, m = 20_000, 2_000
    background, signal = _staircase(n, m)
    roc = roc_curve(background, signal)
    # eps_S / sqrt(eps_B) = (k + 1) / m / sqrt(k / n) grows with k up to k = 999, where the
    # signal runs out (E = 1/2 from then on).
    best = best_significance_improvement(background, None, roc, min_events=10)
    assert best["background_efficiency"] == pytest.approx(999 / n)
    assert best["significance_improvement"] == pytest.approx(0.5 / math.sqrt(999 / n), rel=1e-12)
    # A floor of 1000 background MC events moves it to k = 1000.
    floor = best_significance_improvement(background, None, roc, min_events=1000)
    assert floor["background_efficiency"] == pytest.approx(1000 / n) and floor["background_events"] == 1000
    assert best_significance_improvement(background, None, roc, min_events=n + 1) is None
