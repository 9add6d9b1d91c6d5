from __future__ import annotations

import math

import numpy as np
import pytest

from megaset.report.metrics import (
    asimov_significance, auc, binned_mean, region_cuts, roc_curve, separation_matrix, signal_efficiency,
    significance, threshold_scan, weighted_median, weighted_quantile,
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
