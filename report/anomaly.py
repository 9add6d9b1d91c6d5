"""Farina et al.'s Table I for one model, taken to tight working points: the AUC (with its
bootstrap uncertainty), E10, E100, E1000 and the best significance improvement of every signal
against the whole background; shared by the event report, the jet report and the studies.

A selection may keep no event of a signal, or only events of non-positive weight (NLO): such a
signal has no ROC curve, and the table leaves it out (:func:`signals_without_events` names
it, for the report to say so)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megaset.report import metrics
from megaset.report.samples import Sample

__all__ = ["anomaly_table", "signals_without_events"]


def signals_without_events(signals: Sequence[Sample]) -> list[str]:
    """The signals with no event of positive weight: no ROC curve, AUC or efficiency exists for them."""
    return [s.name for s in signals if not metrics.has_positive_weight(s.weight)]


def anomaly_table(model: str, background: Sequence[Sample], signals: Sequence[Sample], *,
                  replicas: int = 200, min_background_events: int = 10) -> tuple[list[dict], dict]:
    """AUC (with its bootstrap uncertainty) and the working points of every signal against the
    whole background.

    Returns the table rows and, per signal, the ROC curve ``(fpr, tpr, auc, auc_error)``. A row
    holds ``signal, model, auc, auc_error``; for each working point of
    :data:`~megaset.report.metrics.WORKING_POINTS` (``e10, e100, e1000``) the signal efficiency
    ``<wp>``, its uncertainty from the background's MC statistics ``<wp>_error``, the significance
    improvement eps_S / sqrt(eps_B) ``<wp>_si`` with ``<wp>_si_error``, the background MC events
    its cut keeps ``<wp>_background_events`` and ``<wp>_enough`` (False below
    ``min_background_events``: not a measurement); and ``best_si``, the largest significance
    improvement over the cuts that keep ``min_background_events`` (a
    :func:`~megaset.report.metrics.best_significance_improvement`, or None). The signals of
    :func:`signals_without_events` have neither a row nor a curve.
    """
    b = np.concatenate([s.scores[model] for s in background])
    wb = np.concatenate([s.weight for s in background])
    rows, rocs = [], {}
    empty = set(signals_without_events(signals))
    for sig in (s for s in signals if s.name not in empty):
        roc = metrics.roc_curve(b, sig.scores[model], wb, sig.weight)
        fpr, tpr, _ = roc
        area = float(np.trapezoid(tpr, fpr))
        error = metrics.auc_error(b, sig.scores[model], wb, sig.weight, replicas=replicas)
        row = {"signal": sig.name, "model": model, "auc": area, "auc_error": error}
        for name, eps_b in metrics.WORKING_POINTS.items():
            wp = metrics.working_point(b, wb, roc, eps_b, min_events=min_background_events)
            row |= {name: wp["efficiency"], f"{name}_error": wp["efficiency_error"],
                    f"{name}_si": wp["significance_improvement"],
                    f"{name}_si_error": wp["significance_improvement_error"],
                    f"{name}_background_events": wp["background_events"], f"{name}_enough": wp["enough_background"]}
        row["best_si"] = metrics.best_significance_improvement(b, wb, roc, min_events=min_background_events)
        rows.append(row)
        rocs[sig.name] = (fpr, tpr, area, error)
    return rows, rocs
