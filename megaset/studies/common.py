"""What the studies share: the stages after ingest on a derived configuration, the anomaly
figures of one signal against the test background, and their stage records.

A study records, with its result, a stage record (:mod:`megaset.provenance`) whose basis holds
the configuration sections it reads, its own arguments (``study``: ``kind`` and the rest, so
that ``megaset run`` can redo it as it was asked for) and the fingerprint of the artefact it
reads: the staging area (``ingest``) for the studies that mix or ingest anew, the score column
of its model (``score``) for the pT-altering test."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from megaset.config import Config

if TYPE_CHECKING:
    from distributed import Client

    from megaset.report.style import Style

__all__ = ["train_and_score", "anomaly_row", "style", "auc_cell", "study_record", "study_upstream", "score_fingerprint",
           "UPSTREAM"]

#: Per kind of study, the stage whose artefact it reads.
UPSTREAM = {"channel-removal": "ingest", "contamination": "ingest", "pairwise": "ingest", "pt-altering": "score"}


def train_and_score(cfg: Config, client: Client | None, step: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Mix ``cfg``'s staging area into its store, train ``training.model`` and score the store;
    ``step()`` after each of the three."""
    from megaset.storage.mix import mix
    from megaset.training.score import score
    from megaset.training.trainer import train

    mixed = mix(cfg, client)
    step()
    trained = train(cfg, client)
    step()
    scored = score(cfg, client)
    step()
    return {"mix": mixed, "train": trained, "score": scored}


def style(cfg: Config) -> Style:
    """The figure style of ``cfg``'s report, with the process colours of its store."""
    from megaset.report.style import Style
    from megaset.storage.store import open_store

    return Style.from_config(cfg, open_store(cfg.store.url).channels)


def auc_cell(row: dict[str, Any]) -> str:
    """``AUC ± uncertainty`` for a study's table.

    >>> auc_cell({"auc": 0.91234, "auc_error": 0.0042})
    '0.912 ± 0.004'
    """
    return f"{row['auc']:.3f} ± {row['auc_error']:.3f}"


def anomaly_row(cfg: Config, signal: str) -> dict[str, Any]:
    """AUC (with its uncertainty), E10, E100 of ``signal`` against the test background in the
    store of ``cfg``.

    Raises
    ------
    StoreError
        When the store holds no event of ``signal`` with a positive weight (none selected).
    """
    from megaset.errors import StoreError
    from megaset.report.anomaly import anomaly_table
    from megaset.report.samples import load_samples, mass_variable
    from megaset.storage.store import open_store

    store = open_store(cfg.store.url)
    model = cfg.training.model
    samples = load_samples(store, [model], mass_variable(store))
    background = [s for s in samples if s.kind == "background"]
    rows, _ = anomaly_table(model, background, [s for s in samples if s.kind == "signal" and s.name == signal],
                            replicas=cfg.report.auc_replicas,
                            min_background_events=cfg.report.min_background_events)
    if not rows:
        msg = (f"store {store.url!r} holds no selected event of signal {signal!r} with a positive weight: it has "
               "no AUC; study a signal the selection keeps")
        raise StoreError(msg)
    return rows[0]


def study_upstream(params: Mapping[str, Any]) -> str:
    """The stage whose artefact the study of ``params`` reads (:data:`UPSTREAM`)."""
    return UPSTREAM[params["kind"]]


def study_record(cfg: Config, params: Mapping[str, Any], upstream: Mapping[str, str | None]) -> dict[str, Any]:
    """The stage record of the study with the arguments ``params`` (``kind`` first) on ``cfg``."""
    from megaset.provenance import make_record, stage_config

    return make_record("study", {**stage_config(cfg, params["kind"]), "study": dict(params)}, upstream=upstream)


def score_fingerprint(cfg: Config, model: str) -> str | None:
    """The fingerprint of the score column ``score/<model>`` of ``cfg``'s store, as recorded."""
    from megaset.errors import StoreError
    from megaset.storage.store import open_store
    from megaset.training.score import scored_record

    try:
        store = open_store(cfg.store.url)
    except StoreError:
        return None
    return (scored_record(store, model)[0] or {}).get("fingerprint")
