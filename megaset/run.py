"""``megaset run``: every stage in order, each resuming where an earlier run stopped.

simulate (only when no inputs are configured) -> ingest -> mix -> train -> score -> report.
A stage whose output is complete for the same configuration is skipped; an unfinished one is
finished: ingest skips finished chunks, mix finished output chunks, training continues from its
last checkpoint, scoring skips scored chunks. The report is always written anew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from megaset.config import AdversaryConfig, Config
from megaset.errors import StoreError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["run", "STAGES"]

STAGES = ("simulate", "ingest", "mix", "train", "score", "report")


def _staged(cfg: Config) -> bool:
    from megaset.storage.staging import staging_attrs

    try:
        return bool(staging_attrs(cfg.store.staging, require_complete=True))
    except StoreError:
        return False


def _mixed(cfg: Config) -> bool:
    from megaset.storage.store import open_store

    try:
        open_store(cfg.store.url, require_complete=True)
    except StoreError:
        return False
    return True


def run(cfg: Config, client: Client | None, *, log: Callable[[str], None] = print,
        status: bool = False) -> dict[str, Any]:
    """Run (or finish) the whole chain for ``cfg``; returns each stage's summary and timing.

    Parameters
    ----------
    cfg
        The configuration; without ``inputs.channels`` the demo sample is simulated first.
    client
        The Dask client every distributed stage uses.
    log
        Called with one line per stage (done, skipped, resumed).
    status
        Show the per-stage progress bars of the libraries underneath.
    """
    from megaset.deploy.cluster import release_memory
    from megaset.pipeline.ingest import ingest
    from megaset.reporting import write_report
    from megaset.storage.mix import mix
    from megaset.training.score import score
    from megaset.training.trainer import train

    out: dict[str, Any] = {"seconds": {}}

    def stage(name: str, done: bool, work: Callable[[], Any]) -> None:
        if done:
            log(f"{name}: already complete, skipped")
            return
        t0 = time.perf_counter()
        out[name] = work()
        if client is not None:
            release_memory(client)  # so that the next stage does not start on this one's freed heap
        out["seconds"][name] = time.perf_counter() - t0
        log(f"{name}: done in {out['seconds'][name]:.1f} s")

    if cfg.inputs.kind == "jets":
        return _run_jets(cfg, client, stage, out, status=status, log=log)
    if not cfg.inputs.channels:
        from megaset.pipeline.simulate import is_simulated, simulate

        stage("simulate", is_simulated(cfg.simulate, tree=cfg.inputs.tree, lumi_ifb=cfg.inputs.lumi_ifb),
              lambda: simulate(cfg.simulate, tree=cfg.inputs.tree, lumi_ifb=cfg.inputs.lumi_ifb))
    stage("ingest", _staged(cfg) and _mixed(cfg), lambda: ingest(cfg, client, status=status, log=log))
    stage("mix", _mixed(cfg), lambda: mix(cfg, client))
    stage("train", False, lambda: train(cfg, client, resume=True))
    stage("score", False, lambda: score(cfg, client))
    stage("report", False, lambda: write_report(cfg))
    return out


def _run_jets(cfg: Config, client: Client | None, stage: Callable[[str, bool, Callable[[], Any]], None],
              out: dict[str, Any], *, status: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The chain for jet inputs: simulate (the built-in jet samples, when no inputs are
    configured), ingest, mix, then every model of ``jets.models`` trained and scored in turn (and
    again with ``training.adversary`` for ``jets.decorrelate``, scored as ``<model>-adv``), the
    pairwise and contamination studies the ``jets`` section asks for, and the report."""
    import json
    from pathlib import Path

    from megaset.pipeline.ingest import ingest
    from megaset.report.report import report
    from megaset.storage.mix import mix
    from megaset.training.score import score
    from megaset.training.trainer import train

    jc = cfg.jets
    if not cfg.inputs.channels:
        from megaset.pipeline.jets_simulate import is_simulated_jets, simulate_jets

        stage("simulate", is_simulated_jets(jc.simulate), lambda: simulate_jets(jc.simulate))
    stage("ingest", _staged(cfg) and _mixed(cfg), lambda: ingest(cfg, client, status=status, log=log))
    stage("mix", _mixed(cfg), lambda: mix(cfg, client))
    adversary = cfg.training.adversary or AdversaryConfig()
    for model in jc.models:
        one = cfg.replace(training={"model": model, "adversary": None})
        stage(f"train {model}", False, lambda one=one: train(one, client, resume=True))
        stage(f"score {model}", False, lambda one=one: score(one, client))
    for model in jc.decorrelate:
        adv = cfg.replace(training={"model": model, "output": str(Path(cfg.training.output) / "adv"),
                                    "adversary": adversary.model_dump(mode="json")})
        label = f"{model}-adv"
        stage(f"train {label}", False, lambda adv=adv: train(adv, client, resume=True))
        stage(f"score {label}", False, lambda adv=adv, label=label, model=model: score(
            adv, client, model=label, checkpoint=Path(adv.training.output) / model / "best.pt"))
    report_dir = Path(cfg.report.output)
    report_dir.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.training.output).parent / "studies"
    if jc.pairwise_models:
        from megaset.report.jets import PAIRWISE_FILE
        from megaset.studies.pairwise import pairwise

        def pairs() -> dict[str, Any]:
            result = pairwise(cfg, client, models=jc.pairwise_models, workdir=work / "pairwise",
                              epochs=jc.pairwise_epochs)
            (report_dir / PAIRWISE_FILE).write_text(json.dumps(result))
            return result

        stage("pairwise", False, pairs)
    if jc.contamination:
        from megaset.studies.contamination import contamination

        def contaminate() -> dict[str, Any]:
            result = contamination(cfg.replace(training={"model": jc.contamination_model}), client,
                                   signal=jc.contamination_signal, fractions=jc.contamination,
                                   workdir=work / "contamination")
            (report_dir / "contamination.json").write_text(json.dumps(result))
            return result

        stage("contamination", False, contaminate)
    stage("report", False, lambda: report(cfg, models=_jet_report_models(cfg)))
    return out


def _jet_report_models(cfg: Config) -> list[str]:
    return [*cfg.jets.models, *(f"{m}-adv" for m in cfg.jets.decorrelate)]
