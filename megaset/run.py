"""``megaset run``: every stage in order, each rebuilt exactly when what made it changed.

simulate (only when no inputs are configured) -> ingest -> mix -> train -> score -> train and
score of every other model a combination of ``scoring.combine`` names -> the combinations ->
report -> the studies run on that report (``megaset study ...``); for jet inputs every model's
train and score, the studies of the ``jets`` section, then the report.
Every stage records a fingerprint of what determines its output with its artefact
(:mod:`megaset.provenance`, :mod:`megaset.stages`). A stage whose finished artefact records the
fingerprint the configuration gives now is skipped; an interrupted one is finished (ingest
skips finished chunks, mix finished output chunks, training continues from its last
checkpoint, scoring skips scored chunks); a stale one is rebuilt, and with it every stage
downstream, after one line that names the changed key.

Then every search of ``searches`` (say a soft-dilepton and a same-sign selection beside the
thesis' 2-lepton one) runs the same chain on the same inputs into its own store, checkpoints
and report (:meth:`megaset.config.Config.search`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megaset.config import Config

if TYPE_CHECKING:
    from distributed import Client

    from megaset.progress import StageProgress
    from megaset.stages import Stage

__all__ = ["run", "STAGES", "written", "outputs_locked", "stage_counts"]

#: The stages of event inputs whose places are locked (the models a combination adds are trained
#: into ``training.output`` and scored into the store as well), before the studies.
STAGES = ("simulate", "ingest", "mix", "train", "score", "report")


def written(cfg: Config, stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    """What ``stages`` write, by the config key that sets each place (staging area, store, model
    and report folders; the simulated sample when no inputs are configured)."""
    places = {
        "simulate": ("jets.simulate.output", cfg.jets.simulate.output) if cfg.inputs.kind == "jets" else (
            "simulate.output", cfg.simulate.output),
        "ingest": ("store.staging_url", cfg.store.staging), "mix": ("store.url", cfg.store.url),
        "train": ("training.output", cfg.training.output), "score": ("store.url", cfg.store.url),
        "report": ("report.output", cfg.report.output),
    }
    if cfg.inputs.channels:
        stages = tuple(s for s in stages if s != "simulate")  # nothing is simulated
    return dict(places[s] for s in stages)


#: What each written place is, as a refusal to write it says.
_WHAT = {"store.staging_url": "staging area", "store.url": "store", "training.output": "model folder",
         "report.output": "report folder"}


@contextlib.contextmanager
def outputs_locked(cfg: Config, stages: tuple[str, ...] = STAGES, *, places: dict[str, str] | None = None,
                   command: str | None = None) -> Iterator[None]:
    """Hold the lock of everything ``stages`` write (and of ``places``, key -> URL), in one order
    for every command, while the block runs (:mod:`megaset.storage.lock`): a second writer of any
    of them refuses at once, naming this one (and ``command``, default this process's command line)."""
    from megaset.storage.lock import locked

    with contextlib.ExitStack() as stack:
        for key, url in {**written(cfg, stages), **(places or {})}.items():
            stack.enter_context(locked(url, key=key, what=_WHAT.get(key, "output"), command=command,
                                       lease_s=cfg.store.lock_lease_s, timeout_s=cfg.store.connect_timeout_s))
        yield


def run(cfg: Config, client: Client | None, *, log: Callable[[str], None] = print,
        progress: StageProgress | None = None) -> dict[str, Any]:
    """Run (or finish) the whole chain for ``cfg``; returns each stage's summary and timing.

    Parameters
    ----------
    cfg
        The configuration; without ``inputs.channels`` the demo sample is simulated first.
    client
        The Dask client every distributed stage uses.
    log
        Called with one line per stage (done, skipped, resumed, rebuilt and why).
    progress
        Called as ``progress(stage, done, total, info)`` (:data:`megaset.progress.StageProgress`):
        ``(stage, 0, None, {})`` as a stage starts, then in its own unit: events simulated,
        chunks ingested, mixed and scored, epochs trained (``info``: ``loss``, ``val_loss``,
        ``samples_per_s``), steps of the report and of a study. The stages of a search are
        named ``[search] stage``.

    Every place the run writes is locked while it runs (:func:`outputs_locked`); another
    writer of one of them makes it refuse at once with :class:`~megaset.errors.OutputLockedError`.

    Returns
    -------
    dict
        Per stage that ran, its summary; ``seconds`` per stage that ran; ``skipped``, the stages
        found current; ``stages``, per stage in order, its ``name``, ``state`` (``done``,
        ``resumed``: an interrupted one finished, or ``skipped``: current), ``seconds`` (``None``
        when skipped) and ``counts`` (:func:`stage_counts`); ``report``, the report's summary
        (read back from ``report.json`` when the report was current); ``searches``, per search
        of ``cfg.searches``, all of this for that search.
    """
    from megaset.stages import chain

    out: dict[str, Any] = {"seconds": {}, "skipped": [], "stages": []}
    with outputs_locked(cfg):
        _drive(chain(cfg, log=log), client, out, log, progress or (lambda stage, done, total, info: None))
    if "report" in out["skipped"]:
        out["report"] = json.loads((Path(cfg.report.output) / "report.json").read_text())
    if cfg.searches:
        out["searches"] = {
            name: run(cfg.search(name), client, log=lambda line, name=name: log(f"[{name}] {line}"),
                      progress=progress and (lambda stage, *rest, name=name: progress(f"[{name}] {stage}", *rest)))
            for name in cfg.searches}
    return out


def stage_counts(name: str, result: Any) -> dict[str, int]:
    """What the stage ``name`` made, from what it returned: files simulated, events selected and
    chunks written by the ingest, events and chunks mixed and scored, epochs trained, models and
    signals reported, the rows of a study's table (none known: empty)."""
    kind = name.split()[0]
    if kind == "simulate":
        return {"files": sum(len(files) for files in result.values())}
    if kind == "ingest":
        return {"events selected": result.n_selected, "chunks": sum(c["chunks"] for c in result.channels.values())}
    if kind == "mix":
        groups = result["groups"].values()
        return {"events": sum(g["n_events"] for g in groups), "chunks": sum(g["n_chunks"] for g in groups)}
    if kind == "train":
        return {"epochs": result["epochs"]}
    if kind in ("score", "combine"):
        return {"events": result["events_scored"], "chunks": result["chunks"]}
    if kind == "report":
        return {"models": len(result["models"]), "signals": len({row["signal"] for row in result.get("auc_table", [])})}
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        return {"rows": len(result["rows"])}
    if isinstance(result, dict) and isinstance(result.get("samples"), list):
        return {"samples": len(result["samples"])}
    return {}


def _timed(stage: Stage, resume: bool, client: Client | None, out: dict[str, Any], log: Callable[[str], None],
           progress: StageProgress) -> None:
    from megaset.deploy.cluster import release_memory

    name = stage.name
    t0 = time.perf_counter()
    progress(name, 0, None, {})
    out[name] = stage.work(client, resume, lambda done, total, **info: progress(name, done, total, info))
    if client is not None:
        release_memory(client)  # so that the next stage does not start on this one's freed heap
    out["seconds"][name] = time.perf_counter() - t0
    out["stages"].append({"name": name, "state": "resumed" if resume else "done", "seconds": out["seconds"][name],
                          "counts": stage_counts(name, out[name])})
    log(f"{name}: done in {out['seconds'][name]:.1f} s")


def _drive(stages: list[Stage], client: Client | None, out: dict[str, Any], log: Callable[[str], None],
           progress: StageProgress) -> None:
    """Skip the current stages, finish the partial ones, rebuild the stale and missing ones."""
    from megaset.stages import assess, fingerprint

    fingerprints: dict[str, str | None] = {}
    rebuilding = False
    for k, stage in enumerate(stages):
        state = assess(stage, {name: fingerprints.get(name) for name in stage.after})
        if state.state == "current":
            log(f"{stage.name}: current, skipped")
            out["skipped"].append(stage.name)
            out["stages"].append({"name": stage.name, "state": "skipped", "seconds": None, "counts": {}})
        else:
            if state.state == "stale" and not rebuilding:
                rest = ", ".join(s.name for s in stages[k:])
                log(f"{stage.name}: {state.reason}: rebuilding {rest}")
                rebuilding = True
            elif state.state == "partial":
                log(f"{stage.name}: interrupted earlier, finishing it")
            _timed(stage, state.state == "partial", client, out, log, progress)
        fingerprints[stage.name] = fingerprint(stage)
