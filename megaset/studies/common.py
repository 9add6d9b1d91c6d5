"""What the studies share: the stages after ingest on a derived configuration, and the anomaly
figures of one signal against the test background."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megaset.config import Config

if TYPE_CHECKING:
    from distributed import Client

    from megaset.report.style import Style

__all__ = ["train_and_score", "anomaly_row", "style", "auc_cell"]


def train_and_score(cfg: Config, client: Client | None) -> dict[str, Any]:
    """Mix ``cfg``'s staging area into its store, train ``training.model`` and score the store."""
    from megaset.storage.mix import mix
    from megaset.training.score import score
    from megaset.training.trainer import train

    mixed = mix(cfg, client)
    trained = train(cfg, client)
    scored = score(cfg, client)
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
    store of ``cfg``."""
    from megaset.report.anomaly import anomaly_table
    from megaset.report.samples import load_samples, mass_variable
    from megaset.storage.store import open_store

    store = open_store(cfg.store.url)
    model = cfg.training.model
    samples = load_samples(store, [model], mass_variable(store))
    background = [s for s in samples if s.kind == "background"]
    rows, _ = anomaly_table(model, background, [s for s in samples if s.kind == "signal" and s.name == signal],
                            replicas=cfg.report.auc_replicas)
    return rows[0]
