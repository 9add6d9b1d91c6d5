"""Event weights that cannot be right: counted at ingest, reported, or fatal.

A weight of 1e30 is finite, so the non-finite check lets it through, and one such event
outweighs a whole channel in every yield after it. Two checks on the stored weight (after the
cross-section scale):

- beyond ``inputs.weights.max_abs`` in size, or non-finite after the scale (a float32
  overflow);
- ``inputs.weights.outlier_orders`` orders of magnitude or more above the median ``|w|`` of
  its channel.

The second needs the channel's median before any event can be judged, so each piece records
a histogram of ``log10 |w|`` in quarter decades (a few bins: weights of one channel span a few
decades) and the judgement is made on the summed histograms once every chunk has run: the
outlier count is exact to a quarter of a decade.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from megaset.config import WeightsConfig

__all__ = ["weight_stats", "absurd_weights", "absurd_message"]

#: Histogram bins per decade of |w|.
_PER_DECADE = 4


def weight_stats(weight: np.ndarray, cfg: WeightsConfig) -> dict[str, Any]:
    """What one piece records of its stored weights: the count beyond the bound (non-finite
    included) and the histogram of ``log10 |w|`` (bin -> count, JSON keys) of the others,
    zeros left out.

    >>> weight_stats(np.array([0.0, 1.0, 1.5, 1e30]), WeightsConfig(max_abs=1e9))
    {'beyond': 1, 'hist': {'0': 2}}
    """
    size = np.abs(np.asarray(weight, dtype=np.float64))
    beyond = ~np.isfinite(size) if cfg.max_abs is None else ~(size <= cfg.max_abs)
    positive = size[~beyond & (size > 0)]
    bins, counts = np.unique(np.floor(np.log10(positive) * _PER_DECADE).astype(np.int64), return_counts=True)
    return {"beyond": int(beyond.sum()), "hist": {str(b): int(c) for b, c in zip(bins, counts, strict=True)}}


def _median_bin(hist: Mapping[int, int]) -> int | None:
    total = sum(hist.values())
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if 2 * seen >= total:
            return b
    return None


def absurd_weights(files: Mapping[str, Mapping[str, Any]], cfg: WeightsConfig) -> dict[str, Any]:
    """One channel's verdict from its files' summed :func:`weight_stats`: the channel's median
    ``|w|`` (to a quarter decade) and, per file with any, the weights beyond the bound and the
    outliers."""
    hists = {f: {int(b): int(n) for b, n in s.get("hist", {}).items()} for f, s in files.items()}
    channel: dict[int, int] = {}
    for hist in hists.values():
        for b, n in hist.items():
            channel[b] = channel.get(b, 0) + n
    median = _median_bin(channel)
    per_file = {}
    for f, stats in sorted(files.items()):
        outliers = 0
        if median is not None and cfg.outlier_orders is not None:
            lowest = median + round(cfg.outlier_orders * _PER_DECADE)
            outliers = sum(n for b, n in hists[f].items() if b >= lowest)
        if stats.get("beyond", 0) or outliers:
            per_file[f] = {"beyond_bound": int(stats.get("beyond", 0)), "outliers": outliers}
    return {"median_abs": None if median is None else float(10 ** (median / _PER_DECADE)), "files": per_file}


def absurd_message(verdicts: Mapping[str, Mapping[str, Any]], cfg: WeightsConfig, branch: str | None) -> str:
    """One line naming each channel and file with absurd weights and what was found."""
    parts = []
    for channel, verdict in verdicts.items():
        for f, found in verdict["files"].items():
            what = []
            if found["beyond_bound"]:
                what.append(f"{found['beyond_bound']} beyond inputs.weights.max_abs ({cfg.max_abs:g}) or not finite")
            if found["outliers"]:
                what.append(f"{found['outliers']} at least {cfg.outlier_orders:g} orders of magnitude above the "
                            f"channel's median |w| ({verdict['median_abs']:.3g})")
            parts.append(f"{f} (channel {channel!r}): {' and '.join(what)}")
    name = f"weight branch {branch!r}" if branch else "weights"
    return f"absurd event weights ({name}, after the cross-section scale): " + "; ".join(parts)
