"""Farina et al.'s contamination study (sec. IV).

For each fraction f, a store mixed from the same staging area with ``f x train size`` events of a
signal injected into train; the AUC, E10 and E100 of the remaining signal events against the
test background as a function of f.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.config import Config
from megaset.progress import Progress, steps
from megaset.studies.common import anomaly_row, auc_cell, style, train_and_score

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["contamination", "contamination_params"]


def contamination_params(*, signal: str, fractions: Sequence[float], workdir: str | Path) -> dict[str, Any]:
    """The arguments of a contamination study, as its stage record holds them."""
    return {"kind": "contamination", "signal": signal, "fractions": [float(f) for f in fractions],
            "workdir": str(workdir)}


def contamination(cfg: Config, client: Client | None, *, signal: str, fractions: Sequence[float],
                  workdir: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """AUC, E10 and E100 of ``signal`` against the test background as a function of the
    fraction of it injected into train.

    The staging area of ``cfg`` (``megaset ingest``) is mixed once per fraction into
    ``<workdir>/f<fraction>/store.zarr``; fraction 0 is the uncontaminated store.

    The table and the plot are added to the report in ``report.output``. ``progress`` is called
    as ``progress(done, total)`` in steps: the mix, training and scoring of each fraction.

    Returns
    -------
    dict
        ``signal, model, rows`` (per fraction: ``fraction, auc, auc_error, e10, e100,
        train_signal_events``) and ``plot``.

    Raises
    ------
    StoreError
        When the staging area is missing or incomplete (run ``megaset ingest``).
    ConfigError
        When a fraction needs more signal events than were staged.
    """
    from megaset.report import plots
    from megaset.report.markdown import add_study
    from megaset.storage.staging import staging_attrs
    from megaset.storage.store import remove_store
    from megaset.studies.common import study_record

    staged = staging_attrs(cfg.store.staging)
    record = study_record(cfg, contamination_params(signal=signal, fractions=fractions, workdir=workdir),
                          {"ingest": (staged.get("stage") or {}).get("fingerprint")})
    work = Path(workdir)
    rows = []
    step = steps(progress, 3 * len(fractions))
    for fraction in fractions:
        base = work / f"f{fraction:g}"
        derived = cfg.replace(
            store={"url": str(base / "store.zarr"), "staging_url": cfg.store.staging,
                   "contamination": {"signal": signal, "fraction": fraction} if fraction > 0 else None},
            training={"output": str(base / "models")},
        )
        remove_store(derived.store.url)  # mixed anew: an earlier one may come from another staging area
        mixed = train_and_score(derived, client, step)["mix"]
        injected = mixed["groups"]["train"]["channels"].get(signal, 0)
        row = anomaly_row(derived, signal)
        rows.append({"fraction": fraction, "auc": row["auc"], "auc_error": row["auc_error"], "e10": row["e10"],
                     "e100": row["e100"], "train_signal_events": injected})
    x = np.array([r["fraction"] for r in rows])
    # The signal's colour for all three, told apart by the line.
    colour = style(cfg).colour(signal)
    plot = plots.curves(work / f"contamination_{signal}.png", x,
                        {k: np.array([r[k] for r in rows]) for k in ("auc", "e10", "e100")},
                        errors={"auc": np.array([r["auc_error"] for r in rows])},
                        colours=dict.fromkeys(("auc", "e10", "e100"), colour),
                        linestyles={"auc": "-", "e10": "--", "e100": ":"},
                        xlabel="signal fraction injected into train", ylabel=f"{signal} vs test background",
                        title=f"contamination ({cfg.training.model})", reference=0.5, style=style(cfg))
    add_study(cfg.report.output, f"contamination-{signal}",
              title=f"Contamination: {signal} injected into train ({cfg.training.model})",
              header=["fraction", "signal events in train", "AUC", "E10", "E100"],
              rows=[[r["fraction"], r["train_signal_events"], auc_cell(r), r["e10"], r["e100"]] for r in rows],
              plots=[plot], stage=record)
    return {"signal": signal, "model": cfg.training.model, "rows": rows, "plot": str(plot)}
