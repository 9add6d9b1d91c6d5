"""Farina et al.'s Table I for one model: the AUC (with its bootstrap uncertainty), E10 and E100
of every signal against the whole background; shared by the event report, the jet report and the
studies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megaset.report import metrics
from megaset.report.samples import Sample

__all__ = ["anomaly_table"]


def anomaly_table(model: str, background: Sequence[Sample], signals: Sequence[Sample], *,
                  replicas: int = 200) -> tuple[list[dict], dict]:
    """AUC (with its bootstrap uncertainty), E10, E100 of every signal against the whole
    background (Farina et al. Table I).

    Returns the table rows (``signal, model, auc, auc_error, e10, e100``) and, per signal, the
    ROC curve ``(fpr, tpr, auc, auc_error)``.
    """
    b = np.concatenate([s.scores[model] for s in background])
    wb = np.concatenate([s.weight for s in background])
    rows, rocs = [], {}
    for sig in signals:
        fpr, tpr, _ = metrics.roc_curve(b, sig.scores[model], wb, sig.weight)
        area = float(np.trapezoid(tpr, fpr))
        error = metrics.auc_error(b, sig.scores[model], wb, sig.weight, replicas=replicas)
        rows.append({"signal": sig.name, "model": model, "auc": area, "auc_error": error,
                     "e10": metrics.signal_efficiency(fpr, tpr, 0.1),
                     "e100": metrics.signal_efficiency(fpr, tpr, 0.01)})
        rocs[sig.name] = (fpr, tpr, area, error)
    return rows, rocs
