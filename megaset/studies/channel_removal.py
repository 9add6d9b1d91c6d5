"""The thesis' channel-removal test (sec. 3.7 and appendix A.1).

One background channel is declared a signal, so it is left out of train, val and test and lands
in ``signal/<channel>``; the model trained without it scores it as an anomaly. The inputs are
ingested again with the channel's new role, under a work folder of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from megaset.config import Config
from megaset.errors import ConfigError
from megaset.progress import Progress, steps
from megaset.studies.common import anomaly_row, auc_cell, train_and_score

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["channel_removal"]


def channel_removal(cfg: Config, client: Client | None, channel: str, *, workdir: str | Path,
                    report: bool = True, progress: Progress | None = None) -> dict[str, Any]:
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
    progress
        Called as ``progress(done, total)`` in steps: ingest, mix, train, score and the report.

    The result is added to the report in ``report.output``, with a link to the derived report.

    Returns
    -------
    dict
        ``channel, model, auc, auc_error, e10, e100, store``, and ``report`` (the report's
        summary) when written.

    Raises
    ------
    ConfigError
        When ``channel`` is not a background channel of the inputs (they are listed).
    """
    from megaset.pipeline.ingest import ingest, ingest_record
    from megaset.pipeline.inputs import resolve_channels
    from megaset.report.markdown import add_study
    from megaset.reporting import write_report
    from megaset.storage.staging import remove_staging
    from megaset.storage.store import remove_store
    from megaset.studies.common import study_record

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
    params = {"kind": "channel-removal", "channel": channel, "workdir": str(work), "report": report}
    record = study_record(cfg, params, {"ingest": ingest_record(cfg)["fingerprint"]})
    # Built anew: a staging area or store left by an earlier run was made under other settings.
    remove_staging(derived.store.staging)
    remove_store(derived.store.url)
    step = steps(progress, 5 if report else 4)
    ingest(derived, client)
    step()
    train_and_score(derived, client, step)
    out = {"channel": channel, "model": cfg.training.model, "store": derived.store.url,
           **{k: v for k, v in anomaly_row(derived, channel).items() if k in ("auc", "auc_error", "e10", "e100")}}
    links = {}
    if report:
        out["report"] = write_report(derived, out_dir=work / "report")
        step()
        links = {f"report of the store without {channel} in training": out["report"]["markdown"]}
    add_study(cfg.report.output, f"channel-removal-{channel}",
              title=f"Channel removal: {channel} left out of training ({cfg.training.model})",
              header=["channel", "AUC", "E10", "E100"], rows=[[channel, auc_cell(out), out["e10"], out["e100"]]],
              plots=[out["report"]["plots"]["roc"]] if report else [], links=links, stage=record)
    return out
