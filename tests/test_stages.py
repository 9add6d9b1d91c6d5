"""The content-addressed stage chain, end to end on real stores: a changed cut rebuilds ingest,
mix and every stage after them (and the new store honours the cut), an unchanged rerun touches
nothing, and `megaset status` / `megaset run --dry-run` say which stages are current and why
the others are not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from megaset.config import Config
from megaset.provenance import changes, make_record
from megaset.run import run
from megaset.stages import status
from megaset.storage.store import open_store
from megaset.training.checkpoint import load_checkpoint

CHAIN = ["simulate", "ingest", "mix", "train", "score", "report"]


def _config(root: Path, **override) -> dict:
    cfg = {
        "simulate": {"output": str(root / "ntuples"), "events": 6000, "signal_events": 500,
                     "channels": ["zmmjets", "ttbar", "c1n2_wz_800_50"]},
        "selection": {"mll_min": 70.0},
        "store": {"url": str(root / "store.zarr"), "chunk_len": 256},
        "training": {"output": str(root / "models"), "epochs": 1, "batch_size": 256},
        "scoring": {"combine": {}},  # training.model alone, but where a test combines models
        "report": {"output": str(root / "report"), "auc_replicas": 20},
    }
    for section, values in override.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def _mtimes(root: Path) -> dict[str, int]:
    """Every artefact under ``root`` (files but the configuration) with its modification time: a
    rewritten file changes it."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix != ".yaml"}


def _min_mll(url: str) -> float:
    store = open_store(url)
    return min(float(np.min(values["m_ll"])) for name in store.group_names()
               for _, values in store.group(name).iter_chunks(("m_ll",)))


def _cli(*args: str) -> str:
    """A megaset command's output, on a terminal wide enough that no table cell wraps."""
    from typer.testing import CliRunner

    from megaset.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def _rows(output: str) -> dict[str, tuple[str, str]]:
    """Stage -> (state, why) from the status table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 3 and (cells[0] in CHAIN or cells[0].startswith("study ")):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_changes_name_the_key_values_files_and_upstream():
    old = make_record("ingest", {"selection": {"mll_min": 70.0, "pt": 25}}, upstream={"simulate": "a" * 64},
                      inputs={"files": {"x.root": [10, 1], "y.root": [20, 2]}})
    assert changes(old, old) == "fingerprint differs"  # only asked when fingerprints differ
    new = make_record("ingest", {"selection": {"mll_min": 100.0, "pt": 25}}, upstream={"simulate": "a" * 64},
                      inputs={"files": {"x.root": [10, 1], "y.root": [20, 2]}})
    assert new["fingerprint"] != old["fingerprint"]
    assert changes(old, new) == "selection.mll_min changed (70.0 -> 100.0)"
    touched = make_record("ingest", {"selection": {"mll_min": 70.0, "pt": 25}}, upstream={"simulate": "b" * 64},
                          inputs={"files": {"x.root": [10, 3], "z.root": [5, 1]}})
    assert changes(old, touched) == ("input file added: z.root; input file removed: y.root; "
                                     "input file modified: x.root (and 1 more)")
    assert changes({"fingerprint": "f"}, new) == "no fingerprint recorded (written by an older megaset)"
    # The record is plain JSON: it reads back from any store with the same fingerprint.
    assert json.loads(json.dumps(new)) == new


@pytest.mark.slow
def test_a_changed_cut_rebuilds_ingest_and_after_an_unchanged_rerun_nothing(tmp_path):
    cfg = Config.model_validate(_config(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path), sort_keys=False))
    assert [(s.name, s.state) for s in status(cfg)] == [(name, "missing") for name in CHAIN]

    first = run(cfg, None, log=lambda line: None)
    assert set(first["seconds"]) == set(CHAIN)
    assert 70.0 <= _min_mll(cfg.store.url) < 100.0

    # An unchanged rerun: every stage current, no file written (checkpoints and report included).
    before = _mtimes(tmp_path)
    lines: list[str] = []
    second = run(cfg, None, log=lines.append)
    assert lines == [f"{name}: current, skipped" for name in CHAIN]
    assert second["seconds"] == {} and second["skipped"] == CHAIN
    assert second["report"]["auc_table"] == first["report"]["auc_table"]
    assert _mtimes(tmp_path) == before
    assert {name: state for name, (state, _) in _rows(_cli("status", "-c", str(path))).items()} == dict.fromkeys(
        CHAIN, "current")

    # Each artefact carries its record, chained to the one it was made from.
    store = open_store(cfg.store.url)
    ingested, mixed = store.attrs["ingest"]["stage"], store.attrs["stage"]
    assert mixed["basis"]["upstream"] == {"ingest": ingested["fingerprint"]}
    assert ingested["basis"]["config"]["selection"]["mll_min"] == 70.0
    assert all(p.endswith(".root") for p in ingested["basis"]["inputs"]["files"])
    trained = load_checkpoint(Path(cfg.training.output) / "ae-shallow" / "last.pt")["stage"]
    assert trained["basis"]["upstream"] == {"mix": mixed["fingerprint"]}
    scored = store.group("test").column_attrs("score/ae-shallow")
    assert scored["complete"] and scored["stage"]["basis"]["upstream"] == {"train": trained["fingerprint"]}
    reported = json.loads((tmp_path / "report" / "report.json").read_text())["stage"]
    assert reported["basis"]["upstream"] == {"score ae-shallow": scored["stage"]["fingerprint"]}

    # A tighter m_ll cut: status says why, and run rebuilds ingest and every stage after it.
    path.write_text(yaml.safe_dump(_config(tmp_path, selection={"mll_min": 100.0}), sort_keys=False))
    rows = _rows(_cli("status", "-c", str(path)))
    assert rows["simulate"][0] == "current"
    assert rows["ingest"] == ("stale", "selection.mll_min changed (70.0 -> 100.0)")
    assert rows["mix"][0] == rows["train"][0] == rows["score"][0] == rows["report"][0] == "stale"
    assert rows["mix"][1].startswith("upstream ingest changed")
    assert _rows(_cli("run", "--dry-run", "-c", str(path))) == rows
    assert _mtimes(tmp_path) == before  # neither status nor a dry run writes anything

    tighter = Config.model_validate(_config(tmp_path, selection={"mll_min": 100.0}))
    lines.clear()
    third = run(tighter, None, log=lines.append)
    assert lines[:2] == ["simulate: current, skipped",
                         "ingest: selection.mll_min changed (70.0 -> 100.0): rebuilding ingest, mix, train, score, "
                         "report"]
    assert set(third["seconds"]) == set(CHAIN[1:])
    assert _min_mll(tighter.store.url) >= 100.0
    assert open_store(tighter.store.url).attrs["config"]["selection"]["mll_min"] == 100.0
    assert third["train"]["epochs"] == 1 and third["score"]["resumed"] == 0

    # More epochs: the data stages stay, training and what follows it are redone.
    lines.clear()
    longer = Config.model_validate(_config(tmp_path, selection={"mll_min": 100.0}, training={"epochs": 2}))
    fourth = run(longer, None, log=lines.append)
    assert lines[:4] == ["simulate: current, skipped", "ingest: current, skipped", "mix: current, skipped",
                         "train: training.epochs changed (1 -> 2): rebuilding train, score, report"]
    assert set(fourth["seconds"]) == {"train", "score", "report"} and fourth["train"]["epochs"] == 2


@pytest.mark.slow
def test_a_changed_input_file_is_named_and_an_interrupted_training_is_finished(tmp_path):
    """Inputs configured by hand (no simulate stage): rewriting a file makes ingest stale, naming
    it; a checkpoint of an unfinished run with the current fingerprint is partial, and run
    finishes it."""
    from megaset.pipeline.simulate import simulate

    simulated = _config(tmp_path)
    simulate(Config.model_validate(simulated).simulate)
    channels = {c: {"files": [str(tmp_path / "ntuples" / c / "*.root")], "signal": c.startswith("c1n2")}
                for c in simulated["simulate"]["channels"]}
    cfg = Config.model_validate({**_config(tmp_path), "inputs": {"channels": channels},
                                 "training": {**simulated["training"], "epochs": 3}})
    run(cfg, None, log=lambda line: None)
    assert [s.state for s in status(cfg)] == ["current"] * 5

    target = tmp_path / "ntuples" / "ttbar" / "ttbar_0.root"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    states = {s.name: s for s in status(cfg)}
    assert states["ingest"].state == "stale" and states["ingest"].reason == f"input file modified: {target}"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns - 10**9))
    assert [s.state for s in status(cfg)] == ["current"] * 5

    # The last checkpoint as an interrupted run leaves it: epoch 1 of 3.
    from megaset.training.checkpoint import save_checkpoint

    last = Path(cfg.training.output) / "ae-shallow" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["progress"] = {**ckpt["progress"], "epoch": 1, "bad_epochs": 0}
    ckpt["history"] = ckpt["history"][:1]
    save_checkpoint(last, ckpt)
    states = {s.name: s for s in status(cfg)}
    assert states["train"].state == "partial" and states["score"].state == "current"
    lines: list[str] = []
    out = run(cfg, None, log=lines.append)
    assert "train: interrupted earlier, finishing it" in lines
    assert out["train"]["epochs"] == 3 and len(out["train"]["history"]) == 3


@pytest.mark.slow
def test_a_study_is_a_stage_kept_current_by_run(tmp_path):
    """A study run on the report (`megaset study pt-altering`) becomes a stage: `megaset status`
    lists it, an unchanged rerun skips it, a change of what it reads rebuilds it, with the
    arguments it was run with, and the report shows the new table."""
    from megaset.studies.pt_altering import pt_altering

    settings = _config(tmp_path, report={"pt_events": 300, "pt_factors": [2.0]})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    cfg = Config.model_validate(settings)
    run(cfg, None, log=lambda line: None)
    assert [s.name for s in status(cfg)] == CHAIN  # no study yet
    pt_altering(cfg)
    study = tmp_path / "report" / "studies" / "pt-altering-ae-shallow.json"
    recorded = json.loads(study.read_text())["stage"]
    assert recorded["basis"]["config"]["study"] == {"kind": "pt-altering", "model": "ae-shallow", "checkpoint": None,
                                                    "out_dir": None}
    scored = open_store(cfg.store.url).group("test").column_attrs("score/ae-shallow")["stage"]
    assert recorded["basis"]["upstream"] == {"score": scored["fingerprint"]}
    assert "stage" not in json.loads((tmp_path / "report" / "report.json").read_text())["studies"][0]
    rows = _rows(_cli("status", "-c", str(path)))
    assert rows["study pt-altering-ae-shallow"][0] == "current"

    before = _mtimes(tmp_path)
    lines: list[str] = []
    run(cfg, None, log=lines.append)
    assert lines == [f"{name}: current, skipped" for name in (*CHAIN, "study pt-altering-ae-shallow")]
    assert _mtimes(tmp_path) == before

    # Other factors: the report (its section changed) and the study are stale, the study says why.
    settings = _config(tmp_path, report={"pt_events": 300, "pt_factors": [2.0, 4.0]})
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    rows = _rows(_cli("status", "-c", str(path)))
    assert rows["score"][0] == "current" and rows["report"][0] == "stale"
    assert rows["study pt-altering-ae-shallow"] == ("stale", "report.pt_factors changed ([2.0] -> [2.0, 4.0])")
    lines.clear()
    out = run(Config.model_validate(settings), None, log=lines.append)
    assert set(out["seconds"]) == {"report", "study pt-altering-ae-shallow"}
    assert [row[0] for row in json.loads(study.read_text())["rows"]] == [2.0, 4.0]
    shown = json.loads((tmp_path / "report" / "report.json").read_text())["studies"]
    assert [row[0] for row in shown[0]["rows"]] == [2.0, 4.0]

    # A retrained model: the study follows its score.
    longer = Config.model_validate(_config(tmp_path, report=settings["report"], training={"epochs": 2}))
    states = {s.name: s for s in status(longer)}
    assert states["study pt-altering-ae-shallow"].state == "stale"
    out = run(longer, None, log=lambda line: None)
    assert {"train", "score", "report", "study pt-altering-ae-shallow"} <= set(out["seconds"])
    assert [s.state for s in status(longer)] == ["current"] * 7


@pytest.mark.slow
def test_a_combination_trains_and_scores_its_members_as_stages_before_it(tmp_path):
    """`scoring.combine` adds the training and scoring of each member other than `training.model`,
    then `combine <name>`, before the report: the run builds them all and the report shows the
    combination first; an unchanged rerun skips them; a member's missing checkpoint rebuilds that
    member, the combination and the report alone."""
    settings = _config(tmp_path, scoring={"combine": {"ae-pca": {"models": ["ae-shallow", "pca"]}}})
    cfg = Config.model_validate(settings)
    chain = [*CHAIN[:5], "train pca", "score pca", "combine ae-pca", "report"]
    assert [s.name for s in status(cfg)] == chain

    out = run(cfg, None, log=lambda line: None)
    assert set(out["seconds"]) == set(chain)
    store = open_store(cfg.store.url)
    trained = load_checkpoint(tmp_path / "models" / "pca" / "last.pt")["stage"]
    assert trained["basis"]["upstream"] == {"mix": store.attrs["stage"]["fingerprint"]}
    assert trained["basis"]["config"]["training"]["model"] == "pca"
    combined = store.group("test").column_attrs("score/ae-pca")["stage"]
    members = {m: store.group("test").column_attrs(f"score/{m}")["stage"]["fingerprint"] for m in ("ae-shallow", "pca")}
    assert combined["basis"]["upstream"] == members
    reported = json.loads((tmp_path / "report" / "report.json").read_text())
    assert reported["models"] == ["ae-pca", "ae-shallow", "pca"]
    assert reported["headline"] == {"ae-pca": ["ae-shallow", "pca"]}
    assert [r["model"] for r in reported["auc_table"]] == ["ae-pca", "ae-shallow", "pca"]
    upstream = reported["stage"]["basis"]["upstream"]
    assert upstream == {"score ae-pca": combined["fingerprint"]} | {f"score {m}": fp for m, fp in members.items()}
    assert ("Headline score: `ae-pca`, the rank mean of `ae-shallow` and `pca`"
            in (tmp_path / "report" / "report.md").read_text())

    before = _mtimes(tmp_path)
    lines: list[str] = []
    run(cfg, None, log=lines.append)
    assert lines == [f"{name}: current, skipped" for name in chain]
    assert _mtimes(tmp_path) == before

    shutil.rmtree(tmp_path / "models" / "pca")
    rebuilt = ["train pca", "score pca", "combine ae-pca", "report"]
    assert [s.name for s in status(cfg) if s.state != "current"] == rebuilt
    out = run(cfg, None, log=lambda line: None)
    assert list(out["seconds"]) == rebuilt


def test_a_combination_of_a_model_megaset_does_not_train_is_refused_naming_it(tmp_path):
    from megaset.errors import ConfigError
    from megaset.stages import chain

    unknown = Config.model_validate(_config(tmp_path, scoring={"combine": {"c": {"models": ["ae-shallow", "bdt"]}}}))
    with pytest.raises(ConfigError, match=r"scoring.combine.c.models names 'bdt', which is neither a model"):
        chain(unknown)
    later = Config.model_validate(_config(tmp_path, scoring={"combine": {
        "c": {"models": ["ae-shallow", "d"]}, "d": {"models": ["pca", "flow"]}}}))
    with pytest.raises(ConfigError, match=r"list 'd' before 'c' in scoring.combine"):
        chain(later)
    nested = Config.model_validate(_config(tmp_path, scoring={"combine": {
        "d": {"models": ["pca", "flow"]}, "c": {"models": ["ae-shallow", "d"]}}}))
    stages = {s.name: s for s in chain(nested)}
    assert list(stages)[3:] == ["train", "score", "train pca", "score pca", "train flow", "score flow", "combine d",
                                "combine c", "report"]
    assert stages["combine c"].after == ("score", "combine d")


def test_a_block_of_a_model_is_scored_by_its_model_and_a_block_never_written_is_refused(tmp_path):
    from megaset.errors import ConfigError
    from megaset.stages import chain

    blocks = Config.model_validate(_config(tmp_path, scoring={"combine": {
        "c": {"models": ["ae-shallow.met", "deep-svdd", "pca.mass", "pca"]}}}))
    stages = {s.name: s for s in chain(blocks)}
    assert list(stages)[3:] == ["train", "score", "train deep-svdd", "score deep-svdd", "train pca", "score pca",
                                "combine c", "report"]
    assert stages["combine c"].after == ("score", "score deep-svdd", "score pca")
    refused = {"deep-svdd.met": "deep-svdd reconstructs no rows", "c.met": "c is a combination",
               "ae-shallow.phi": "neither a model megaset trains"}
    for member, why in refused.items():
        cfg = Config.model_validate(_config(tmp_path, scoring={"combine": {
            "c": {"models": ["pca", "ae-deep"]}, "d": {"models": ["ae-shallow", member]}}}))
        with pytest.raises(ConfigError, match=rf"scoring.combine.d.models names '{member}'.*{why}"):
            chain(cfg)
    off = Config.model_validate(_config(tmp_path, scoring={"blocks": False, "combine": {
        "d": {"models": ["ae-shallow", "ae-shallow.energy"]}}}))
    with pytest.raises(ConfigError, match=r"the energy block of 'ae-shallow', which is never written: scoring.blocks "
                                          r"is false"):
        chain(off)
