"""The numbers of the report, as small pure functions of scores and weights.

Conventions: a higher score is more anomalous and an event is selected when its score is at or
above the cut. Negative event weights (NLO generators) count as zero where a probability is
needed (ROC curves, AUC, efficiencies, quantiles) and are kept where yields are summed
(significances, binned means).

>>> round(auc([1.0, 2.0], [3.0, 4.0]), 3)
1.0
>>> round(float(significance(10.0, 100.0)), 3), round(float(asimov_significance(10.0, 100.0)), 5)
(1.0, 0.98399)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "weighted_quantile", "weighted_median", "roc_curve", "auc", "signal_efficiency", "region_cuts",
    "significance", "asimov_significance", "threshold_scan", "binned_mean", "separation_matrix",
]


def _weights(values: np.ndarray, weights: Sequence[float] | np.ndarray | None, what: str) -> np.ndarray:
    if weights is None:
        return np.ones(len(values))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != values.shape:
        msg = f"{what}: {len(w)} weights for {len(values)} values"
        raise ValueError(msg)
    return w


def weighted_quantile(values, weights=None, q: float = 0.5) -> float:
    """The smallest value at which the cumulative weight reaches ``q`` of the total.

    >>> weighted_quantile([1.0, 2.0, 3.0], [1.0, 1.0, 3.0], 0.5)
    3.0

    Raises
    ------
    ValueError
        When no event has a positive weight.
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.clip(_weights(x, weights, "weighted_quantile"), 0.0, None)
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])
    if not len(cum) or cum[-1] <= 0:
        msg = "weighted_quantile: no event with a positive weight"
        raise ValueError(msg)
    return float(x[order][np.searchsorted(cum, q * cum[-1], side="left")])


def weighted_median(values, weights=None) -> float:
    """:func:`weighted_quantile` at one half (the lower weighted median)."""
    return weighted_quantile(values, weights, 0.5)


def roc_curve(background, signal, w_background=None, w_signal=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted ROC curve: background and signal efficiencies of every cut ``score >= t``.

    Returns
    -------
    fpr, tpr, thresholds
        One point per distinct score, from the highest cut down, after a first point (0, 0)
        whose threshold is +inf. Events with equal scores enter together (a diagonal step).

    Raises
    ------
    ValueError
        When the background or the signal has no positive weight.
    """
    b = np.asarray(background, dtype=np.float64)
    s = np.asarray(signal, dtype=np.float64)
    wb = np.clip(_weights(b, w_background, "background"), 0.0, None)
    ws = np.clip(_weights(s, w_signal, "signal"), 0.0, None)
    if wb.sum() <= 0 or ws.sum() <= 0:
        which = "background" if wb.sum() <= 0 else "signal"
        msg = f"roc_curve: the {which} has no event with a positive weight"
        raise ValueError(msg)
    scores = np.concatenate([b, s])
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    cum_b = np.cumsum(np.concatenate([wb, np.zeros_like(ws)])[order])
    cum_s = np.cumsum(np.concatenate([np.zeros_like(wb), ws])[order])
    # The last event of each run of equal scores closes the point of that cut.
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    fpr = np.concatenate([[0.0], cum_b[last] / wb.sum()])
    tpr = np.concatenate([[0.0], cum_s[last] / ws.sum()])
    return fpr, tpr, np.concatenate([[np.inf], scores[last]])


def auc(background, signal, w_background=None, w_signal=None) -> float:
    """Area under the weighted ROC curve: P(signal score > background score) + P(equal) / 2.

    >>> auc([1.0, 3.0], [2.0, 4.0], [1.0, 1.0], [3.0, 1.0])
    0.625
    """
    fpr, tpr, _ = roc_curve(background, signal, w_background, w_signal)
    return float(np.trapezoid(tpr, fpr))


def signal_efficiency(fpr: np.ndarray, tpr: np.ndarray, background_efficiency: float) -> float:
    """The best signal efficiency at a background efficiency (Farina et al.'s E_x at 1 / x).

    The ROC curve is read as piecewise linear between its points; E10 is
    ``signal_efficiency(fpr, tpr, 0.1)`` (90 % background rejection), E100 at 0.01.
    """
    # A hair of tolerance: cumulative sums of weights land on 0.1 within rounding only.
    target = background_efficiency * (1 + 1e-12)
    idx = int(np.searchsorted(fpr, target, side="right"))
    if idx >= len(fpr):
        return float(tpr[-1])
    p = idx - 1
    return float(tpr[p] + (tpr[idx] - tpr[p]) * (background_efficiency - fpr[p]) / (fpr[idx] - fpr[p]))


def region_cuts(median: float, regions: int = 3, step: float = 0.2) -> list[float]:
    """The signal-region cuts of the thesis (sec. 3.7): ``m + i * step * |m|``, i = 1 .. regions.

    >>> [round(cut, 9) for cut in region_cuts(-2.5)]
    [-2.0, -1.5, -1.0]
    """
    return [median + i * step * abs(median) for i in range(1, regions + 1)]


def significance(s, b):
    """Z = s / sqrt(b); NaN where b <= 0."""
    s, b = np.asarray(s, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, s / np.sqrt(np.where(b > 0, b, 1.0)), np.nan)


def asimov_significance(s, b):
    """Z_A = sqrt(2 ((s + b) ln(1 + s / b) - s)), the median significance for small b; NaN where
    b <= 0 or s < 0.

    >>> round(float(asimov_significance(5.0, 1.0)), 4)
    3.3913
    """
    s, b = np.asarray(s, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = (b > 0) & (s >= 0)
    ss, bb = np.where(ok, s, 0.0), np.where(ok, b, 1.0)
    q = 2.0 * ((ss + bb) * np.log1p(ss / bb) - ss)
    return np.where(ok, np.sqrt(np.clip(q, 0.0, None)), np.nan)


def threshold_scan(values, weights, thresholds) -> np.ndarray:
    """The summed weight of the events with ``value >= t`` for every threshold ``t``.

    >>> threshold_scan([10.0, 20.0, 30.0], [1.0, 2.0, 4.0], [0.0, 20.0, 31.0]).tolist()
    [7.0, 6.0, 0.0]
    """
    x = np.asarray(values, dtype=np.float64)
    w = _weights(x, weights, "threshold_scan")
    order = np.argsort(x, kind="stable")
    tail = np.concatenate([np.cumsum(w[order][::-1])[::-1], [0.0]])
    return tail[np.searchsorted(x[order], np.asarray(thresholds, dtype=np.float64), side="left")]


def binned_mean(x, y, weights, edges) -> np.ndarray:
    """Weighted mean of ``y`` in each bin of ``x`` (NaN where a bin's weight is not positive).

    >>> binned_mean([0.5, 0.5, 1.5], [10.0, 20.0, 5.0], [1.0, 3.0, 1.0], [0, 1, 2, 3]).tolist()
    [17.5, 5.0, nan]
    """
    x = np.asarray(x, dtype=np.float64)
    w = _weights(x, weights, "binned_mean")
    sw = np.histogram(x, bins=edges, weights=w)[0]
    swy = np.histogram(x, bins=edges, weights=w * np.asarray(y, dtype=np.float64))[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sw > 0, swy / np.where(sw > 0, sw, 1.0), np.nan)


def separation_matrix(scores: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> np.ndarray:
    """``M[i, j]``: the AUC of sample ``i`` as the anomaly against sample ``j`` as the background.

    0.5 on the diagonal and for samples the score cannot tell apart, 1 for a perfect separation,
    below 0.5 when sample ``i`` looks *less* anomalous than sample ``j``; ``M[j, i] = 1 - M[i, j]``.
    NaN where a sample has no positive weight.
    """
    n = len(scores)
    out = np.full((n, n), np.nan)
    alive = [bool(np.clip(np.asarray(w, dtype=np.float64), 0.0, None).sum() > 0) for w in weights]
    for i in range(n):
        out[i, i] = 0.5 if alive[i] else np.nan
        for j in range(i + 1, n):
            if alive[i] and alive[j]:
                out[i, j] = auc(scores[j], scores[i], weights[j], weights[i])
                out[j, i] = 1.0 - out[i, j]
    return out
