"""The report with what only the orchestration can gather: the training of every scored model.

A score column records the checkpoint it was made with; the training summary is read back from
the checkpoints beside it and handed to :func:`megaset.report.report.report`, which does not
read checkpoints itself (the report and training layers do not import each other).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megaset.config import Config
from megaset.errors import CheckpointError

__all__ = ["write_report", "training_records"]


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


def write_report(cfg: Config, *, out_dir: str | Path | None = None, models: Sequence[str] | None = None) -> dict:
    """:func:`megaset.report.report.report` with the training records of the reported models."""
    from megaset.report.report import report

    return report(cfg, out_dir=out_dir, models=models, training=training_records(cfg, models))
