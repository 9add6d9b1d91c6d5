"""The stages of ``megaset run``, each with where its record lives and what rebuilding it means.

A stage is *current* when its artefact is finished and records the fingerprint the configuration
gives now (:mod:`megaset.provenance`), *partial* when it records that fingerprint but was
interrupted (the run finishes it), *stale* when it records another one (the run rebuilds it and,
since its fingerprint is part of theirs, everything downstream), and *missing* when there is no
artefact. Where each record lives:

========  ==================================================  ===========================
stage     artefact (record)                                   finished when
========  ==================================================  ===========================
simulate  ``<simulate.output>/simulate.json`` (``stage``)      the manifest exists
ingest    staging area root attributes (``stage``)            ``complete``
mix       store root attributes (``stage``)                   ``complete``
train     ``<training.output>/<model>/last.pt`` (``stage``)    all epochs, or early stopping
score     ``score/<model>`` column attributes of every group  every chunk scored
report    ``<report.output>/report.json`` (``stage``)        report.md and report.json
========  ==================================================  ===========================

>>> [s.name for s in status(cfg)]          # doctest: +SKIP
['simulate', 'ingest', 'mix', 'train', 'score', 'report']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megaset.config import Config
from megaset.errors import CheckpointError, StoreError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Stage", "StageState", "chain", "assess", "status"]

#: What a stage's artefact holds: its record and whether it is finished; ``None``: no artefact.
Found = tuple[dict[str, Any], bool] | None


@dataclass(frozen=True)
class Stage:
    """One stage: its upstream stage, the record it would write now given the upstream's
    fingerprint, the record its artefact holds, and the work (``resume``: finish a partial one)."""

    name: str
    after: str | None
    expected: Callable[[str | None], dict[str, Any]]
    recorded: Callable[[], Found]
    work: Callable[[Client | None, bool], Any]


@dataclass(frozen=True)
class StageState:
    """``current``, ``partial``, ``stale`` or ``missing``, and why."""

    name: str
    state: str
    reason: str
    fingerprint: str | None


def assess(stage: Stage, upstream: str | None) -> StageState:
    """The state of ``stage`` whose upstream artefact has (or will have) the fingerprint ``upstream``."""
    from megaset.provenance import changes

    expected = stage.expected(upstream)
    fingerprint = expected["fingerprint"]
    found = stage.recorded()
    if found is None:
        return StageState(stage.name, "missing", "not built yet", fingerprint)
    record, finished = found
    if record.get("fingerprint") != fingerprint:
        return StageState(stage.name, "stale", changes(record, expected), fingerprint)
    if not finished:
        return StageState(stage.name, "partial", "interrupted: the run finishes it", fingerprint)
    return StageState(stage.name, "current", f"fingerprint {fingerprint[:12]}", fingerprint)


def status(cfg: Config) -> list[StageState]:
    """The state of every stage of ``megaset run -c cfg`` (its fingerprinted ones), building nothing.

    The input files of a simulated sample are known only once it is simulated: when the
    simulation is not current, the stages after it are reported as rebuilt after it.
    """
    states: list[StageState] = []
    fingerprints: dict[str, str | None] = {}
    waiting = None
    for stage in chain(cfg):
        if waiting is not None:
            found = "missing" if stage.recorded() is None else "stale"
            states.append(StageState(stage.name, found, f"rebuilt after {waiting}", None))
            continue
        state = assess(stage, fingerprints.get(stage.after) if stage.after else None)
        states.append(state)
        fingerprints[stage.name] = state.fingerprint
        if stage.name == "simulate" and state.state != "current":
            waiting = "simulate"
    return states


def _found(record: dict[str, Any] | None, finished: bool) -> Found:
    return None if record is None else (record, finished)


def chain(cfg: Config, *, log: Callable[[str], None] = print, progress: bool = False) -> list[Stage]:
    """The fingerprinted stages of ``megaset run``, in order: simulate (when no inputs are
    configured), ingest, mix, then train, score and report of ``training.model``; for jet inputs
    train and score of every model of ``jets.models`` and ``jets.decorrelate`` (whose studies and
    report the run writes anew each time)."""
    stages = [_simulate_stage(cfg)] if not cfg.inputs.channels else []
    stages += [_ingest_stage(cfg, log, progress), _mix_stage(cfg, "ingest")]
    if cfg.inputs.kind == "jets":
        return stages + _jet_models(cfg)
    return [*stages, train_stage(cfg, "train"), score_stage(cfg, "score", after="train"), _report_stage(cfg)]


def _jet_models(cfg: Config) -> list[Stage]:
    from megaset.config import AdversaryConfig

    out = []
    for model in cfg.jets.models:
        one = cfg.replace(training={"model": model, "adversary": None})
        out += [train_stage(one, f"train {model}"), score_stage(one, f"score {model}", after=f"train {model}")]
    adversary = cfg.training.adversary or AdversaryConfig()
    for model in cfg.jets.decorrelate:
        adv = cfg.replace(training={"model": model, "output": str(Path(cfg.training.output) / "adv"),
                                    "adversary": adversary.model_dump(mode="json")})
        label = f"{model}-adv"
        out += [train_stage(adv, f"train {label}"),
                score_stage(adv, f"score {label}", after=f"train {label}", model=label,
                            checkpoint=Path(adv.training.output) / model / "best.pt")]
    return out


def _simulate_stage(cfg: Config) -> Stage:
    if cfg.inputs.kind == "jets":
        from megaset.pipeline.jets_simulate import simulate_jets, simulate_jets_record, simulated_jets_record

        jc = cfg.jets.simulate
        return Stage("simulate", None, lambda _: simulate_jets_record(jc),
                     lambda: _found(simulated_jets_record(jc), True), lambda client, resume: simulate_jets(jc))
    from megaset.pipeline.simulate import simulate, simulate_record, simulated_record

    sc, tree, lumi = cfg.simulate, cfg.inputs.tree, cfg.inputs.lumi_ifb
    return Stage("simulate", None, lambda _: simulate_record(sc, tree=tree, lumi_ifb=lumi),
                 lambda: _found(simulated_record(sc), True),
                 lambda client, resume: simulate(sc, tree=tree, lumi_ifb=lumi))


def _ingest_stage(cfg: Config, log: Callable[[str], None], progress: bool) -> Stage:
    from megaset.pipeline.ingest import ingest, ingest_record

    def recorded() -> Found:
        from megaset.storage.staging import staging_attrs

        try:
            attrs = staging_attrs(cfg.store.staging, require_complete=False)
        except StoreError:
            return None
        return attrs.get("stage") or {}, bool(attrs.get("complete"))

    def work(client: Client | None, resume: bool) -> Any:
        from megaset.storage.staging import remove_staging

        if not resume:
            remove_staging(cfg.store.staging)
        return ingest(cfg, client, status=progress, log=log)

    # The ingest reads the simulation's record itself: its upstream is what is on disk.
    return Stage("ingest", "simulate" if not cfg.inputs.channels else None, lambda _: ingest_record(cfg),
                 recorded, work)


def _mix_stage(cfg: Config, after: str) -> Stage:
    from megaset.storage.mix import mix, mix_record

    def recorded() -> Found:
        from megaset.storage.store import open_store

        try:
            store = open_store(cfg.store.url, require_complete=False)
        except StoreError:
            return None
        return store.attrs.get("stage") or {}, bool(store.attrs.get("complete"))

    def work(client: Client | None, resume: bool) -> Any:
        from megaset.storage.store import remove_store

        if not resume:
            remove_store(cfg.store.url)
        return mix(cfg, client)

    return Stage("mix", after, lambda up: mix_record(cfg, {"stage": {"fingerprint": up}}), recorded, work)


def train_stage(cfg: Config, name: str, after: str = "mix") -> Stage:
    """Training ``cfg.training.model`` into ``<training.output>/<model>/``."""
    from megaset.training.checkpoint import load_checkpoint
    from megaset.training.loop import output_paths, train_record, training_finished
    from megaset.training.trainer import train

    paths = output_paths(cfg.training)

    def recorded() -> Found:
        if not paths["last"].is_file():
            return None
        try:
            ckpt = load_checkpoint(paths["last"])
        except CheckpointError:
            return {}, False  # a checkpoint of another format: trained afresh
        return ckpt.get("stage") or {}, training_finished(ckpt) and paths["best"].is_file()

    return Stage(name, after, lambda up: train_record(cfg, up), recorded,
                 lambda client, resume: train(cfg, client, resume=resume))


def score_stage(cfg: Config, name: str, *, after: str, model: str | None = None,
                checkpoint: Path | None = None) -> Stage:
    """Scoring the checkpoint of ``after`` into ``score/<model>`` (default ``training.model``)."""
    from megaset.training.score import checkpoint_digest, checkpoint_path, score, score_record, scored_record

    label = model or cfg.training.model
    path = checkpoint or checkpoint_path(cfg, label)

    def expected(up: str | None) -> dict[str, Any]:
        return score_record(cfg, up, checkpoint_digest(path) if path.is_file() else None)

    def recorded() -> Found:
        from megaset.storage.store import open_store

        try:
            store = open_store(cfg.store.url)
        except StoreError:
            return None
        return _found(*scored_record(store, label))

    return Stage(name, after, expected, recorded,
                 lambda client, resume: score(cfg, client, model=label, checkpoint=checkpoint, overwrite=not resume))


def _report_stage(cfg: Config) -> Stage:
    import json

    from megaset.reporting import REPORT_JSON, report_record, write_report

    folder = Path(cfg.report.output)
    model = cfg.training.model

    def expected(up: str | None) -> dict[str, Any]:
        shown = not cfg.report.models or model in cfg.report.models
        return report_record(cfg, {model: up} if shown else None)

    def recorded() -> Found:
        try:
            summary = json.loads((folder / REPORT_JSON).read_text())
        except (OSError, ValueError):
            return None
        return summary.get("stage") or {}, (folder / "report.md").is_file()

    return Stage("report", "score", expected, recorded, lambda client, resume: write_report(cfg))
