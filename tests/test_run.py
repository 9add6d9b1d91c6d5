from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from progress_calls import Calls

from megaset.config import Config
from megaset.run import STAGES, run
from megaset.stages import status
from megaset.storage.store import open_store


@pytest.mark.slow
def test_run_chains_every_stage_then_resumes_without_redoing_work(tmp_path, cluster_client):
    cfg = Config.model_validate({
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 60_000, "signal_events": 1500,
                     "events_per_file": 30_000, "channels": ["zmmjets", "ttbar", "diboson", "c1n2_wz_800_50"]},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 1024},
        "training": {"output": str(tmp_path / "models"), "epochs": 2, "batch_size": 256},
        "scoring": {"combine": {}},  # training.model alone: the combination's stages are tested apart
        "report": {"output": str(tmp_path / "report")},
    })
    lines: list[str] = []
    seen: dict[str, list] = {}

    def progress(stage, done, total, info):
        seen.setdefault(stage, []).append((done, total, dict(info)))

    first = run(cfg, cluster_client, log=lines.append, progress=progress)
    assert set(first["seconds"]) == {"simulate", "ingest", "mix", "train", "score", "report"}
    store = open_store(cfg.store.url)
    test = store.group("test")
    assert "score/ae-shallow" in test.columns()
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {row["signal"] for row in summary["auc_table"]} == {"c1n2_wz_800_50"}
    # Every stage's progress, in its own unit, from its start to its total.
    assert list(seen) == list(STAGES) and all(calls[0] == (0, None, {}) for calls in seen.values())
    simulated = [done for done, _, _ in seen["simulate"]]
    assert simulated == sorted(simulated) and simulated[-1] > 60_000
    for stage in ("ingest", "mix", "score", "report"):
        calls = Calls((done, total) for done, total, _ in seen[stage][1:])
        assert calls.counted(calls[0][1]), (stage, calls)
    assert [(done, total) for done, total, _ in seen["train"][1:]] == [(1, 2), (2, 2)]
    assert all(set(info) == {"loss", "val_loss", "samples_per_s"} for _, _, info in seen["train"][1:])
    events = sum(store.group(g).n_events for g in store.group_names())
    assert [(s["name"], s["state"]) for s in first["stages"]] == [(name, "done") for name in STAGES]
    made = {s["name"]: s["counts"] for s in first["stages"]}
    assert made["mix"] == {"events": events, "chunks": seen["mix"][-1][0]} and made["train"] == {"epochs": 2}
    assert made["score"]["events"] == events and made["report"] == {"models": 1, "signals": 1}

    lines.clear()
    seen.clear()
    second = run(cfg, cluster_client, log=lines.append, progress=progress)
    assert lines == [f"{name}: current, skipped" for name in STAGES]
    assert second["seconds"] == {} and first["train"]["epochs"] == 2 and seen == {}
    assert [(s["state"], s["seconds"], s["counts"]) for s in second["stages"]] == [("skipped", None, {})] * 6


@pytest.mark.slow
def test_run_on_an_interrupted_mix_finishes_it_without_redoing_finished_chunks(tmp_path):
    """A store whose mix stopped after three chunks: `run` skips the simulation and the finished
    ingest, builds only the missing chunks of the mix (the finished ones keep their files)."""
    from faults import mix_stopped_after

    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import simulate
    from megaset.storage.verify import verify

    cfg = Config.model_validate({
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 6000, "signal_events": 500,
                     "channels": ["zmmjets", "ttbar", "c1n2_wz_800_50"]},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 256},
        "training": {"output": str(tmp_path / "models"), "epochs": 1, "batch_size": 256},
        "scoring": {"combine": {}},  # training.model alone: the combination's stages are tested apart
        "report": {"output": str(tmp_path / "report")},
    })
    simulate(cfg.simulate, tree=cfg.inputs.tree, lumi_ifb=cfg.inputs.lumi_ifb)
    ingest(cfg, None)

    mix_stopped_after(cfg, 3)
    # A rewritten chunk would be a new file (Zarr writes a temporary file, then renames it).
    train = Path(cfg.store.url, "train")
    chunks = [p for p in train.glob("*/c/**/*") if p.is_file()]
    assert {p.relative_to(train).parts[2] for p in chunks} == {"0", "1", "2"}  # <column>/c/<chunk>[/0]
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in chunks}

    lines: list[str] = []
    out = run(cfg, None, log=lines.append)
    assert lines[:3] == ["simulate: current, skipped", "ingest: current, skipped",
                         "mix: interrupted earlier, finishing it"]
    assert out["mix"]["resumed"] == 3 < out["mix"]["chunks"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    assert verify(cfg.store.url) == []


@pytest.mark.slow
def test_run_jets_writes_every_table_and_plot(tmp_path):
    cfg = Config.model_validate({
        "inputs": {"kind": "jets", "chunksize": 600},
        "jets": {"simulate": {"output": str(tmp_path / "jets"), "jets": 600, "signal_jets": 150, "jets_per_file": 600,
                              "samples": ["qcd", "top", "gluino"]},
                 "models": ["pca", "jet-dense", "tau32"], "decorrelate": ["jet-dense"],
                 "pairwise_models": ["tau32"], "contamination": [0.0, 0.1], "contamination_model": "tau32"},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 128},
        "training": {"output": str(tmp_path / "models"), "epochs": 1, "batch_size": 64, "scaling": "none"},
        "scoring": {"combine": {}},  # training.model alone: the combination's stages are tested apart
        "report": {"output": str(tmp_path / "report")},
    })
    out = run(cfg, None, log=lambda line: None)
    assert {"simulate", "ingest", "mix", "train jet-dense-adv", "pairwise", "contamination", "report"} <= set(
        out["seconds"])
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["kind"] == "jets"
    assert {(r["model"], r["signal"]) for r in summary["auc_table"]} >= {("tau32", "top"), ("jet-dense-adv", "gluino")}
    assert np.array(summary["pairwise"]["tau32"]["auc"]).shape == (3, 3)
    assert set(summary["sculpting"]) == {"pca", "jet-dense", "tau32", "jet-dense-adv"}
    assert set(summary["decorrelation"]) == {"jet-dense"}
    assert [r["fraction"] for r in summary["contamination"]["rows"]] == [0.0, 0.1]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Farina et al. E10 / E100" in markdown and "0.66 / 0.13" in markdown
    assert "## Decorrelation" in markdown
    for name in ("roc.png", "mass_sculpting.png", "pairwise_tau32.png", "separation_pca.png", "latent_jet-dense.png"):
        assert (tmp_path / "report" / name).is_file()
    # The studies and the report are stages: an unchanged rerun skips them, other fractions
    # redo the contamination study and the report only.
    lines: list[str] = []
    again = run(cfg, None, log=lines.append)
    assert again["seconds"] == {} and "contamination: current, skipped" in lines
    assert "pairwise: current, skipped" in lines and lines[-1] == "report: current, skipped"
    assert again["report"]["auc_table"] == summary["auc_table"]
    more = cfg.replace(jets={"contamination": [0.0, 0.2]})
    states = {s.name: s for s in status(more)}
    assert states["contamination"].state == "stale" and states["pairwise"].state == "current"
    assert states["contamination"].reason.startswith("study.fractions changed ([0.0, 0.1] -> [0.0, 0.2])")
    assert states["report"].reason.startswith("upstream contamination changed")
    lines.clear()
    third = run(more, None, log=lines.append)
    assert set(third["seconds"]) == {"contamination", "report"}
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["fraction"] for r in summary["contamination"]["rows"]] == [0.0, 0.2]
    assert summary["stage"]["basis"]["upstream"]["contamination"] == states["contamination"].fingerprint


@pytest.mark.slow
def test_two_runs_at_once_one_refuses_the_other_finishes_and_reports_skipped_files(tmp_path, cluster_client):
    """Two `megaset run` processes started together on one configuration: one refuses at once in
    one line naming the other, the other finishes a store that verifies. Its inputs hold a
    truncated file with `on_bad_file: skip`: the report lists it with its reason."""
    import socket
    import subprocess
    import sys

    import yaml

    from megaset.pipeline.simulate import simulate
    from megaset.storage.verify import verify

    channels = ["zmmjets", "ttbar", "c1n2_wz_800_50"]
    sim = Config.model_validate({"simulate": {"output": str(tmp_path / "ntuples"), "events": 4000,
                                              "signal_events": 400, "channels": channels}}).simulate
    simulate(sim)
    good = next((tmp_path / "ntuples" / "ttbar").glob("*.root"))
    bad = good.with_name("ttbar_truncated.root")
    bad.write_bytes(good.read_bytes()[:int(good.stat().st_size * 0.6)])
    cfg = {
        "inputs": {"on_bad_file": "skip", "channels": {
            c: {"files": [str(tmp_path / "ntuples" / c / "*.root")], "signal": c.startswith("c1n2")}
            for c in channels}},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 256},
        "training": {"output": str(tmp_path / "models"), "epochs": 1, "batch_size": 256},
        "scoring": {"combine": {}},
        "report": {"output": str(tmp_path / "report"), "auc_replicas": 20},
        "cluster": {"kind": "address", "address": cluster_client.scheduler.address},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    command = [sys.executable, "-c", "from megaset.cli import main; main()", "run", "-c", str(path)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    codes = [r.returncode for r in runs]
    assert sorted(codes) == [0, 1], outs
    winner, loser = (runs[0], runs[1]) if codes[0] == 0 else (runs[1], runs[0])
    refusal = outs[runs.index(loser)][1]
    assert refusal.count("\n") == 1 and "Traceback" not in refusal, refusal
    staging = str(tmp_path / "store.staging.zarr")
    assert refusal.startswith(f"error: store.staging_url {staging!r} is being written by `megaset run -c {path}` "
                              f"(pid {winner.pid} on host {socket.gethostname()}, since "), refusal
    assert verify(cfg["store"]["url"]) == []
    assert not list(tmp_path.glob("*.lock")), "every lock is released"

    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    [skipped] = summary["skipped"]
    assert skipped["file"] == str(bad) and "is truncated" in skipped["reason"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Input files skipped (1)" in markdown and f"| {bad} | {skipped['reason']} |" in markdown
