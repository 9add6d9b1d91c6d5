"""``megaset run``: every stage in order, each rebuilt exactly when what made it changed.

simulate (only when no inputs are configured) -> ingest -> mix -> train -> score -> report ->
the studies run on that report (``megaset study ...``); for jet inputs every model's train and
score, the studies of the ``jets`` section, then the report.
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

    from megaset.stages import Stage

__all__ = ["run", "STAGES", "written", "outputs_locked"]

#: The stages of event inputs, before the studies run on their report.
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
        status: bool = False) -> dict[str, Any]:
    """Run (or finish) the whole chain for ``cfg``; returns each stage's summary and timing.

    Parameters
    ----------
    cfg
        The configuration; without ``inputs.channels`` the demo sample is simulated first.
    client
        The Dask client every distributed stage uses.
    log
        Called with one line per stage (done, skipped, resumed, rebuilt and why).
    status
        Show the per-stage progress bars of the libraries underneath.

    Every place the run writes is locked while it runs (:func:`outputs_locked`); another
    writer of one of them makes it refuse at once with :class:`~megaset.errors.OutputLockedError`.

    Returns
    -------
    dict
        Per stage that ran, its summary; ``seconds`` per stage that ran; ``skipped``, the stages
        found current; ``report``, the report's summary (read back from ``report.json`` when
        the report was current); ``searches``, per search of ``cfg.searches``, all of this for
        that search.
    """
    from megaset.stages import chain

    out: dict[str, Any] = {"seconds": {}, "skipped": []}
    with outputs_locked(cfg):
        _drive(chain(cfg, log=log, progress=status), client, out, log)
    if "report" in out["skipped"]:
        out["report"] = json.loads((Path(cfg.report.output) / "report.json").read_text())
    if cfg.searches:
        out["searches"] = {name: run(cfg.search(name), client, log=lambda line, name=name: log(f"[{name}] {line}"),
                                     status=status) for name in cfg.searches}
    return out


def _timed(name: str, work: Callable[[], Any], client: Client | None, out: dict[str, Any],
           log: Callable[[str], None]) -> None:
    from megaset.deploy.cluster import release_memory

    t0 = time.perf_counter()
    out[name] = work()
    if client is not None:
        release_memory(client)  # so that the next stage does not start on this one's freed heap
    out["seconds"][name] = time.perf_counter() - t0
    log(f"{name}: done in {out['seconds'][name]:.1f} s")


def _drive(stages: list[Stage], client: Client | None, out: dict[str, Any], log: Callable[[str], None]) -> None:
    """Skip the current stages, finish the partial ones, rebuild the stale and missing ones."""
    from megaset.stages import assess, fingerprint

    fingerprints: dict[str, str | None] = {}
    rebuilding = False
    for k, stage in enumerate(stages):
        state = assess(stage, {name: fingerprints.get(name) for name in stage.after})
        if state.state == "current":
            log(f"{stage.name}: current, skipped")
            out["skipped"].append(stage.name)
        else:
            if state.state == "stale" and not rebuilding:
                rest = ", ".join(s.name for s in stages[k:])
                log(f"{stage.name}: {state.reason}: rebuilding {rest}")
                rebuilding = True
            elif state.state == "partial":
                log(f"{stage.name}: interrupted earlier, finishing it")
            resume = state.state == "partial"
            _timed(stage.name, lambda stage=stage, resume=resume: stage.work(client, resume), client, out, log)
        fingerprints[stage.name] = fingerprint(stage)
