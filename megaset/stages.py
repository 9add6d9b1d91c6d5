"""The stages of ``megaset run``, each with where its record lives and what rebuilding it means.

A stage is *current* when its artefact is finished and records the fingerprint the configuration
gives now (:mod:`megaset.provenance`), *partial* when it records that fingerprint but was
interrupted (the run finishes it), *stale* when it records another one (the run rebuilds it and,
since its fingerprint is part of theirs, everything downstream), and *missing* when there is no
artefact. Where each record lives:

=============  ==================================================  ===========================
stage          artefact (record)                                   finished when
=============  ==================================================  ===========================
simulate       ``<simulate.output>/simulate.json`` (``stage``)      the manifest exists
ingest         staging area root attributes (``stage``)            ``complete``
mix            store root attributes (``stage``)                   ``complete``
train          ``<training.output>/<model>/last.pt`` (``stage``)    all epochs, or early stopping
score          ``score/<model>`` column attributes of every group  every chunk scored
train <m>      as ``train``, for another model ``m``               as ``train``
score <m>      as ``score``, for another model ``m``               as ``score``
combine <c>    ``score/<c>`` column attributes of every group      every chunk written
report         ``<report.output>/report.json`` (``stage``)        report.md and report.json
study <key>    ``<report.output>/studies/<key>.json`` (``stage``)  the file exists
pairwise       ``<report.output>/pairwise.json`` (``stage``)       the file exists
contamination  ``<report.output>/studies/contamination-<signal>``  and ``contamination.json``
=============  ==================================================  ===========================

``train <m>`` and ``score <m>`` are the other members of the combinations of ``scoring.combine``
(event inputs: ``training.model`` is ``train`` and ``score``) and the models of ``jets.models``.

The studies of event inputs (``megaset study ...``) are stages once run: each records its own
arguments, so that ``run`` rebuilds a stale one as it was asked for (deleting its file under
``studies/`` takes it out of the chain). Jet inputs have the studies their ``jets`` section asks
for (``pairwise``, ``contamination``), and a report that shows them.

>>> [s.name for s in status(cfg)]          # doctest: +SKIP
['simulate', 'ingest', 'mix', 'train', 'score', 'train deep-svdd', 'score deep-svdd', 'combine ae-svdd',
 'report', 'study pt-altering-ae-shallow']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megaset.config import Config
from megaset.deploy.pools import placed
from megaset.errors import CheckpointError, StoreError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Stage", "StageState", "StepProgress", "chain", "assess", "status", "fingerprint"]

#: What a stage's artefact holds: its record and whether it is finished; ``None``: no artefact.
Found = tuple[dict[str, Any], bool] | None

#: How far a stage is: ``progress(done, total, **info)`` (:mod:`megaset.progress`); ``total`` is
#: ``None`` while unknown, ``info`` holds training's ``loss``, ``val_loss`` and ``samples_per_s``.
StepProgress = Callable[..., None]


@dataclass(frozen=True)
class Stage:
    """One stage: its upstream stages, the record it would write now given their fingerprints
    (by name), the record its artefact holds, and the work (``work(client, resume, progress)``;
    ``resume``: finish a partial one; ``progress``: a :data:`StepProgress`)."""

    name: str
    after: tuple[str, ...]
    expected: Callable[[Mapping[str, str | None]], dict[str, Any]]
    recorded: Callable[[], Found]
    work: Callable[[Client | None, bool, StepProgress], Any]


@dataclass(frozen=True)
class StageState:
    """``current``, ``partial``, ``stale`` or ``missing``, and why."""

    name: str
    state: str
    reason: str
    fingerprint: str | None


def assess(stage: Stage, upstream: Mapping[str, str | None]) -> StageState:
    """The state of ``stage`` whose upstream artefacts have (or will have) the fingerprints
    ``upstream`` (by stage name)."""
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
        state = assess(stage, {name: fingerprints.get(name) for name in stage.after})
        states.append(state)
        fingerprints[stage.name] = state.fingerprint
        if stage.name == "simulate" and state.state != "current":
            waiting = "simulate"
    return states


def fingerprint(stage: Stage) -> str | None:
    """The fingerprint the artefact of ``stage`` records now."""
    found = stage.recorded()
    return found[0].get("fingerprint") if found else None


def _found(record: dict[str, Any] | None, finished: bool) -> Found:
    return None if record is None else (record, finished)


def chain(cfg: Config, *, log: Callable[[str], None] = print) -> list[Stage]:
    """The fingerprinted stages of ``megaset run``, in order: simulate (when no inputs are
    configured), ingest, mix, then train and score of ``training.model``, train and score of
    every other model a combination of ``scoring.combine`` names, the combinations, the report
    and every study run on that report; for jet inputs train and score of every model of
    ``jets.models`` and ``jets.decorrelate``, the pairwise and contamination studies the ``jets``
    section asks for, and the report. A store on S3 without the ``s3`` extra is refused here,
    before any stage starts."""
    from megaset.extras import require_for_url

    require_for_url(cfg.store.url)
    require_for_url(cfg.store.staging)
    stages = [_simulate_stage(cfg)] if not cfg.inputs.channels else []
    stages += [_ingest_stage(cfg, log), _mix_stage(cfg, "ingest")]
    if cfg.inputs.kind == "jets":
        models = _jet_models(cfg)
        studies = _jet_studies(cfg)
        return [*stages, *models, *studies, _jet_report_stage(cfg, models, studies)]
    members = _members(cfg)
    trained = [m for m, stage in members.items() if stage == f"score {m}"]
    combined = [_combine_stage(cfg, name, members) for name in cfg.scoring.combine]
    return [*stages, train_stage(cfg, "train"), score_stage(cfg, "score", after="train"),
            *_model_stages(cfg, trained), *combined,
            _report_stage(cfg, [f"score {m}" for m in trained], [s.name for s in combined]), *_event_studies(cfg)]


def _model_stages(cfg: Config, models: Sequence[str]) -> list[Stage]:
    """``train <model>`` and ``score <model>`` of each of ``models``: ``training`` as configured
    but for the model, without an adversary, each fingerprinted as the chain's own."""
    out = []
    for model in models:
        one = cfg.replace(training={"model": model, "adversary": None})
        out += [train_stage(one, f"train {model}"), score_stage(one, f"score {model}", after=f"train {model}")]
    return out


def _members(cfg: Config) -> dict[str, str]:
    """Every model the combinations of ``scoring.combine`` name, with the stage that scores it:
    ``score`` for ``training.model``, ``combine <name>`` for a combination listed before, else
    ``score <model>`` (the chain trains it); a block of a model's error (``ae-shallow.met``) is
    scored by its model's stage. Any other name is refused, naming it."""
    from typing import get_args

    from megaset.config import TrainingConfig
    from megaset.errors import ConfigError
    from megaset.storage.layout import BLOCKS
    from megaset.storage.scores import split_score_name
    from megaset.training.registry import NOT_RECONSTRUCTING

    trainable = get_args(TrainingConfig.model_fields["model"].annotation)
    out: dict[str, str] = {cfg.training.model: "score"}
    for name, setting in cfg.scoring.combine.items():
        for member in setting.models:
            model, block = split_score_name(member)
            if block is not None and (model in NOT_RECONSTRUCTING or model in cfg.scoring.combine
                                      or not cfg.scoring.blocks):
                why = ("scoring.blocks is false" if not cfg.scoring.blocks else
                       f"{model} is a combination" if model in cfg.scoring.combine else f"{model} reconstructs no rows")
                msg = (f"scoring.combine.{name}.models names {member!r}, the {block} block of {model!r}, which is "
                       f"never written: {why}; name the model's total, {model!r}")
                raise ConfigError(msg)
            if model not in out:
                if model in cfg.scoring.combine:
                    msg = (f"scoring.combine.{name}.models names the combination {model!r}, listed after it (or "
                           f"it itself): list {model!r} before {name!r} in scoring.combine")
                    raise ConfigError(msg)
                if model not in trainable:
                    msg = (f"scoring.combine.{name}.models names {member!r}, which is neither a model megaset "
                           f"trains ({', '.join(trainable)}), a block of one (model.block, block one of "
                           f"{', '.join(BLOCKS)}) nor another combination of scoring.combine")
                    raise ConfigError(msg)
                out[model] = f"score {model}"
            out.setdefault(member, out[model])
        out[name] = f"combine {name}"
    return out


def _jet_models(cfg: Config) -> list[Stage]:
    from megaset.config import AdversaryConfig

    out = _model_stages(cfg, cfg.jets.models)
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
        return Stage("simulate", (), lambda _: simulate_jets_record(jc),
                     lambda: _found(simulated_jets_record(jc), True),
                     lambda client, resume, progress: simulate_jets(jc, progress=_counted(progress)))
    from megaset.pipeline.simulate import simulate, simulate_record, simulated_record

    sc, tree, lumi = cfg.simulate, cfg.inputs.tree, cfg.inputs.lumi_ifb
    return Stage("simulate", (), lambda _: simulate_record(sc, tree=tree, lumi_ifb=lumi),
                 lambda: _found(simulated_record(sc), True),
                 lambda client, resume, progress: simulate(sc, tree=tree, lumi_ifb=lumi, progress=_counted(progress)))


def _counted(progress: StepProgress) -> Callable[[int], None]:
    """The simulation's ``progress(n)`` (n more events) as ``progress(events so far, None)``."""
    seen = 0

    def add(n: int) -> None:
        nonlocal seen
        seen += n
        progress(seen, None)

    return add


def _ingest_stage(cfg: Config, log: Callable[[str], None]) -> Stage:
    from megaset.pipeline.ingest import ingest, ingest_record

    def recorded() -> Found:
        from megaset.storage.staging import staging_attrs

        try:
            attrs = staging_attrs(cfg.store.staging, require_complete=False)
        except StoreError:
            return None
        return attrs.get("stage") or {}, bool(attrs.get("complete"))

    def work(client: Client | None, resume: bool, progress: StepProgress) -> Any:
        from megaset.storage.staging import remove_staging

        if not resume:
            remove_staging(cfg.store.staging)
        with placed(cfg.cluster, "ingest"):
            return ingest(cfg, client, progress=progress, log=log)

    # The ingest reads the simulation's record itself: its upstream is what is on disk.
    return Stage("ingest", () if cfg.inputs.channels else ("simulate",), lambda _: ingest_record(cfg),
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

    def work(client: Client | None, resume: bool, progress: StepProgress) -> Any:
        from megaset.storage.store import remove_store

        if not resume:
            remove_store(cfg.store.url)
        with placed(cfg.cluster, "mix"):
            return mix(cfg, client, progress=progress)

    return Stage("mix", (after,), lambda up: mix_record(cfg, {"stage": {"fingerprint": up[after]}}), recorded, work)


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

    def work(client: Client | None, resume: bool, progress: StepProgress) -> Any:
        def epoch(entry: dict[str, Any]) -> None:
            progress(entry["epoch"], cfg.training.epochs, loss=entry["loss"], val_loss=entry["val_loss"],
                     samples_per_s=entry["samples_per_s"])

        return train(cfg, client, resume=resume, progress=epoch)

    return Stage(name, (after,), lambda up: train_record(cfg, up[after]), recorded, work)


def score_stage(cfg: Config, name: str, *, after: str, model: str | None = None,
                checkpoint: Path | None = None) -> Stage:
    """Scoring the checkpoint of ``after`` into ``score/<model>`` (default ``training.model``)."""
    from megaset.training.score import checkpoint_digest, checkpoint_path, score, score_record

    label = model or cfg.training.model
    path = checkpoint or checkpoint_path(cfg, label)

    def expected(up: Mapping[str, str | None]) -> dict[str, Any]:
        return score_record(cfg, up[after], checkpoint_digest(path) if path.is_file() else None)

    return Stage(name, (after,), expected, lambda: _scored(cfg, label),
                 lambda client, resume, progress: score(cfg, client, model=label, checkpoint=checkpoint,
                                                        overwrite=not resume, progress=progress))


def _scored(cfg: Config, model: str) -> Found:
    """The record of ``score/<model>`` in the store and whether it is finished; ``None`` without one."""
    from megaset.storage.store import open_store
    from megaset.training.score import scored_record

    try:
        store = open_store(cfg.store.url)
    except StoreError:
        return None
    return _found(*scored_record(store, model))


def _combine_stage(cfg: Config, name: str, members: Mapping[str, str]) -> Stage:
    """The combination ``scoring.combine.<name>`` written as ``score/<name>``: fingerprinted on
    its members' score fingerprints, each from the stage that scores it (``members``)."""
    from megaset.training.combine import combine_record, combine_scores

    after = {model: members[model] for model in cfg.scoring.combine[name].models}
    return Stage(f"combine {name}", tuple(dict.fromkeys(after.values())),
                 lambda up: combine_record(cfg, name, {model: up[stage] for model, stage in after.items()}),
                 lambda: _scored(cfg, name),
                 lambda client, resume, progress: combine_scores(cfg, client, name, overwrite=not resume,
                                                                 progress=progress))


def _report_recorded(cfg: Config) -> Found:
    import json

    from megaset.reporting import REPORT_JSON

    folder = Path(cfg.report.output)
    try:
        summary = json.loads((folder / REPORT_JSON).read_text())
    except (OSError, ValueError):
        return None
    return summary.get("stage") or {}, (folder / "report.md").is_file()


def _report_stage(cfg: Config, scored: list[str], combined: list[str]) -> Stage:
    """The report of ``training.model``, of the other models the chain scores (stages
    ``scored``) and of the combinations (stages ``combined``)."""
    from megaset.reporting import report_record, write_report

    def expected(up: Mapping[str, str | None]) -> dict[str, Any]:
        scores = {cfg.training.model: up["score"]} | {s.removeprefix("score "): up[s] for s in scored} | {
            c.removeprefix("combine "): up[c] for c in combined}
        shown = {m: fp for m, fp in scores.items() if not cfg.report.models or m in cfg.report.models}
        return report_record(cfg, shown or None)

    return Stage("report", ("score", *scored, *combined), expected, lambda: _report_recorded(cfg),
                 lambda client, resume, progress: write_report(cfg, progress=progress))


def _jet_report_stage(cfg: Config, models: list[Stage], studies: list[Stage]) -> Stage:
    """The jet report of every model scored, with the studies of ``jets``: its record names
    their fingerprints."""
    from megaset.reporting import report_record, write_report

    scores = [s.name for s in models if s.name.startswith("score ")]
    labels = [name.removeprefix("score ") for name in scores]
    shown = [s.name for s in studies]

    def expected(up: Mapping[str, str | None]) -> dict[str, Any]:
        return report_record(cfg, {m: up[f"score {m}"] for m in labels}, studies={s: up[s] for s in shown})

    def work(client: Client | None, resume: bool, progress: StepProgress) -> Any:
        return write_report(cfg, models=labels, stage=expected({s.name: fingerprint(s) for s in (*models, *studies)}),
                            progress=progress)

    return Stage("report", (*scores, *shown), expected, lambda: _report_recorded(cfg), work)


def _study_recorded(cfg: Config, key: str, also: Path | None = None) -> Found:
    """The record of the study ``key`` in the report folder; finished when ``also`` (a file the
    study writes besides) exists too."""
    from megaset.report.markdown import study_records

    record = study_records(cfg.report.output).get(key)
    return None if record is None else (record, also is None or also.is_file())


def _study_stage(cfg: Config, name: str, params: Mapping[str, Any], recorded: Callable[[], Found],
                 work: Callable[[Client | None, bool, StepProgress], Any]) -> Stage:
    """A study with the arguments ``params``: its upstream is the ingest (the studies that mix
    or ingest anew) or the score of its model (pT altering), in the chain when the chain has it."""
    from megaset.studies.common import score_fingerprint, study_record, study_upstream

    source = study_upstream(params)
    # The ingest is in every chain; a score only for the model the chain trains.
    in_chain = source == "ingest" or (cfg.inputs.kind == "events" and params.get("model") == cfg.training.model)

    def expected(up: Mapping[str, str | None]) -> dict[str, Any]:
        fingerprint = up[source] if in_chain else score_fingerprint(cfg, params["model"])
        return study_record(cfg, params, {source: fingerprint})

    return Stage(name, (source,) if in_chain else (), expected, recorded, work)


def _event_studies(cfg: Config) -> list[Stage]:
    """Every study recorded in the report folder, redone with the arguments it was run with."""
    from megaset.report.markdown import study_records

    out = []
    for key, record in study_records(cfg.report.output).items():
        params = (record.get("basis") or {}).get("config", {}).get("study")
        if params:  # a study of an older megaset, without its arguments, is left as it is
            out.append(_event_study(cfg, key, params))
    return out


def _event_study(cfg: Config, key: str, params: Mapping[str, Any]) -> Stage:
    def work(client: Client | None, resume: bool, progress: StepProgress) -> Any:
        return _run_study(cfg, client, params, progress)

    return _study_stage(cfg, f"study {key}", params, lambda: _study_recorded(cfg, key), work)


def _run_study(cfg: Config, client: Client | None, params: Mapping[str, Any],
              progress: StepProgress | None = None) -> dict[str, Any]:
    """Run the study ``params`` records (as :func:`study_record` holds them) again on ``cfg``,
    telling ``progress`` its steps."""
    kind = params["kind"]
    if kind == "pt-altering":
        from megaset.studies.pt_altering import pt_altering

        return pt_altering(cfg, model=params["model"], checkpoint=params["checkpoint"], out_dir=params["out_dir"],
                           progress=progress)
    if kind == "channel-removal":
        from megaset.studies.channel_removal import channel_removal

        return channel_removal(cfg, client, params["channel"], workdir=params["workdir"], report=params["report"],
                               progress=progress)
    if kind == "contamination":
        from megaset.studies.contamination import contamination

        return contamination(cfg, client, signal=params["signal"], fractions=params["fractions"],
                             workdir=params["workdir"], progress=progress)
    msg = f"a study of kind {kind!r} is run by the chain of jet inputs, not on its own"
    raise ValueError(msg)


def _jet_studies(cfg: Config) -> list[Stage]:
    """The pairwise matrix and the contamination study of ``jets`` (when asked for), under
    ``<training.output>/../studies``; their results land in the report folder."""
    import json

    jc = cfg.jets
    report_dir = Path(cfg.report.output)
    work = Path(cfg.training.output).parent / "studies"
    out = []
    if jc.pairwise_models:
        from megaset.report.jets import PAIRWISE_FILE
        from megaset.studies.pairwise import pairwise, pairwise_params

        params = pairwise_params(models=jc.pairwise_models, workdir=work / "pairwise", epochs=jc.pairwise_epochs)

        def pairs_recorded() -> Found:
            try:
                result = json.loads((report_dir / PAIRWISE_FILE).read_text())
            except (OSError, ValueError):
                return None
            return result.get("stage") or {}, True

        def pairs(client: Client | None, resume: bool, progress: StepProgress) -> dict[str, Any]:
            result = pairwise(cfg, client, models=jc.pairwise_models, workdir=work / "pairwise",
                              epochs=jc.pairwise_epochs, progress=progress)
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / PAIRWISE_FILE).write_text(json.dumps(result))
            return result

        out.append(_study_stage(cfg, "pairwise", params, pairs_recorded, pairs))
    if jc.contamination:
        from megaset.studies.contamination import contamination, contamination_params

        one = cfg.replace(training={"model": jc.contamination_model})
        params = contamination_params(signal=jc.contamination_signal, fractions=jc.contamination,
                                      workdir=work / "contamination")
        done = report_dir / "contamination.json"

        def contaminate(client: Client | None, resume: bool, progress: StepProgress) -> dict[str, Any]:
            result = contamination(one, client, signal=jc.contamination_signal, fractions=jc.contamination,
                                   workdir=work / "contamination", progress=progress)
            done.write_text(json.dumps(result))
            return result

        out.append(_study_stage(one, "contamination", params,
                                lambda: _study_recorded(one, f"contamination-{jc.contamination_signal}", done),
                                contaminate))
    return out
