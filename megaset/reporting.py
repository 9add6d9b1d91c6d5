"""The report with what only the orchestration can gather: the training of every scored model,
and the stage record of the report.

A score column records the checkpoint it was made with; the training summary is read back from
the checkpoints beside it and handed to :func:`megaset.report.report.report`, which does not
read checkpoints itself (the report and training layers do not import each other). The report's
stage record (:mod:`megaset.provenance`: its configuration, the fingerprints of the scores it
shows) is added to ``report.json`` under ``stage``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from megaset.config import Config
from megaset.errors import CheckpointError
from megaset.progress import Progress

__all__ = ["write_report", "training_records", "report_record", "REPORT_JSON"]

#: The file of the report that carries its stage record.
REPORT_JSON = "report.json"


def training_records(cfg: Config, models: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per scored model of ``cfg.store.url`` (or of ``models``), the summary of its training,
    where its checkpoint can still be read."""
    from megaset.report.samples import BACKGROUND_GROUP
    from megaset.storage.scores import score_column
    from megaset.storage.store import open_store
    from megaset.training.loop import recorded_summary

    group = open_store(cfg.store.url).group(BACKGROUND_GROUP)
    out = {}
    for model in models or group.scored_models():
        checkpoint = group.column_attrs(score_column(model)).get("checkpoint")
        if checkpoint and Path(checkpoint).is_file():
            try:
                out[model] = recorded_summary(checkpoint)
            except CheckpointError:
                continue  # a checkpoint of another format: the report says it has no record
    return out


def report_record(cfg: Config, expected: Mapping[str, str | None] | None = None, *,
                  studies: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The stage record of the report of ``cfg``: its sections of the configuration and the
    fingerprints of the scores it shows, as recorded in the store, or as given in ``expected``
    (model -> fingerprint, for scores not written yet), and of the ``studies`` it shows (stage
    name -> fingerprint: the jet report's pairwise and contamination studies)."""
    from megaset.errors import StoreError
    from megaset.provenance import record
    from megaset.report.samples import BACKGROUND_GROUP
    from megaset.storage.store import open_store
    from megaset.training.score import scored_record

    scores = dict(expected or {})
    try:
        store = open_store(cfg.store.url)
    except StoreError:
        store = None
    if store is not None:
        for model in cfg.report.models or store.group(BACKGROUND_GROUP).scored_models():
            if model not in scores:
                scores[model] = (scored_record(store, model)[0] or {}).get("fingerprint")
    upstream = {f"score {m}": fp for m, fp in sorted(scores.items())} | dict(studies or {})
    return record("report", cfg, upstream=upstream)


def write_report(cfg: Config, *, out_dir: str | Path | None = None, models: Sequence[str] | None = None,
                 stage: Mapping[str, Any] | None = None, progress: Progress | None = None) -> dict:
    """:func:`megaset.report.report.report` (``progress`` as there) with the training records of the reported models;
    ``report.json`` also carries the report's stage record (``stage``): the one given, else, for
    the configured report (``report.output``, every model), :func:`report_record`."""
    import json

    from megaset.report.report import report

    result = report(cfg, out_dir=out_dir, models=models, training=training_records(cfg, models), progress=progress)
    if stage is None and models is None and out_dir is None:
        # Only the configured report is a stage of the chain; another folder or choice of models is not.
        stage = report_record(cfg)
    if stage is not None:
        path = Path(out_dir if out_dir is not None else cfg.report.output) / REPORT_JSON
        path.write_text(json.dumps({**json.loads(path.read_text()), "stage": dict(stage)}, indent=1))
    return result
