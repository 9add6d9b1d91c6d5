"""End-to-end studies on a configuration: the thesis' channel removal, Farina et al.'s contamination.

Each study derives configurations from the given one, writing its stores, checkpoints and
reports under ``workdir``, runs the stages (ingest, mix, train, score) on the client, and
measures how well the model tells the studied sample from the test background.

* :func:`channel_removal` (thesis sec. 3.7 and appendix A.1): one background channel is
  declared a signal, so it is left out of train, val and test and lands in
  ``signal/<channel>``; the model trained without it scores it as an anomaly. The inputs are
  ingested again with the channel's new role.
* :func:`contamination` (Farina et al. sec. IV): for each fraction f, a store mixed from the
  same staging area with ``f x train size`` events of a signal injected into train; the AUC
  of the remaining signal events against the test background as a function of f.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.config import Config
from megaset.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["train_and_score", "channel_removal", "contamination"]


def train_and_score(cfg: Config, client: Client | None) -> dict[str, Any]:
    """Mix ``cfg``'s staging area into its store, train ``training.model`` and score the store."""
    from megaset.storage.mix import mix
    from megaset.training.score import score
    from megaset.training.trainer import train

    mixed = mix(cfg, client)
    trained = train(cfg, client)
    scored = score(cfg, client)
    return {"mix": mixed, "train": trained, "score": scored}


def _anomaly_rows(cfg: Config, signal: str) -> dict[str, Any]:
    """AUC, E10, E100 of ``signal`` against the test background in the store of ``cfg``."""
    from megaset.report.report import anomaly_table
    from megaset.report.samples import load_samples, mass_variable
    from megaset.storage.store import open_store

    store = open_store(cfg.store.url)
    model = cfg.training.model
    samples = load_samples(store, [model], mass_variable(store))
    background = [s for s in samples if s.kind == "background"]
    rows, _ = anomaly_table(model, background, [s for s in samples if s.kind == "signal" and s.name == signal])
    return rows[0]


def channel_removal(cfg: Config, client: Client | None, channel: str, *, workdir: str | Path,
                    report: bool = True) -> dict[str, Any]:
    """Train without the background ``channel`` and score it as a signal.

    Parameters
    ----------
    cfg
        The configuration of the full analysis (its inputs, or the simulated demo sample).
    client
        A Dask client for every stage; ``None`` runs them here.
    channel
        A background channel of the inputs.
    workdir
        Receives ``staging.zarr``, ``store.zarr``, ``models/`` and, with ``report``, ``report/``.
    report
        Also write the full report of the derived store.

    Returns
    -------
    dict
        ``channel, model, auc, e10, e100, store``, and ``report`` (the report's summary) when
        written.

    Raises
    ------
    ConfigError
        When ``channel`` is not a background channel of the inputs (they are listed).
    """
    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.inputs import resolve_channels
    from megaset.report.report import report as write_report

    channels = resolve_channels(cfg)
    backgrounds = [n for n, c in channels.items() if not (c.signal or c.data)]
    if channel not in backgrounds:
        msg = f"channel removal needs a background channel, got {channel!r}; the inputs have {', '.join(backgrounds)}"
        raise ConfigError(msg)
    work = Path(workdir)
    inputs = {n: {**c.model_dump(mode="json"), "signal": c.signal or n == channel} for n, c in channels.items()}
    derived = cfg.replace(
        inputs={"channels": inputs},
        store={"url": str(work / "store.zarr"), "staging_url": str(work / "staging.zarr"), "contamination": None},
        training={"output": str(work / "models")},
    )
    ingest(derived, client)
    train_and_score(derived, client)
    out = {"channel": channel, "model": cfg.training.model, "store": derived.store.url,
           **{k: v for k, v in _anomaly_rows(derived, channel).items() if k in ("auc", "e10", "e100")}}
    if report:
        out["report"] = write_report(derived, out_dir=work / "report")
    return out


def contamination(cfg: Config, client: Client | None, *, signal: str, fractions: Sequence[float],
                  workdir: str | Path) -> dict[str, Any]:
    """AUC, E10 and E100 of ``signal`` against the test background as a function of the
    fraction of it injected into train.

    The staging area of ``cfg`` (``megaset ingest``) is mixed once per fraction into
    ``<workdir>/f<fraction>/store.zarr``; fraction 0 is the uncontaminated store.

    Returns
    -------
    dict
        ``signal, model, rows`` (per fraction: ``fraction, auc, e10, e100, train_signal_events``)
        and ``plot``.

    Raises
    ------
    StoreError
        When the staging area is missing or incomplete (run ``megaset ingest``).
    ConfigError
        When a fraction needs more signal events than were staged.
    """
    from megaset.report import plots
    from megaset.storage.staging import staging_attrs

    staging_attrs(cfg.store.staging)
    work = Path(workdir)
    rows = []
    for fraction in fractions:
        base = work / f"f{fraction:g}"
        derived = cfg.replace(
            store={"url": str(base / "store.zarr"), "staging_url": cfg.store.staging,
                   "contamination": {"signal": signal, "fraction": fraction} if fraction > 0 else None},
            training={"output": str(base / "models")},
        )
        mixed = train_and_score(derived, client)["mix"]
        injected = mixed["groups"]["train"]["channels"].get(signal, 0)
        row = _anomaly_rows(derived, signal)
        rows.append({"fraction": fraction, "auc": row["auc"], "e10": row["e10"], "e100": row["e100"],
                     "train_signal_events": injected})
    x = np.array([r["fraction"] for r in rows])
    plot = plots.curves(work / f"contamination_{signal}.png", x,
                        {k: np.array([r[k] for r in rows]) for k in ("auc", "e10", "e100")},
                        xlabel="signal fraction injected into train", ylabel=f"{signal} vs test background",
                        title=f"contamination ({cfg.training.model})", reference=0.5)
    return {"signal": signal, "model": cfg.training.model, "rows": rows, "plot": str(plot)}
