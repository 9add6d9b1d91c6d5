from __future__ import annotations

import json

import pytest

from megaset.config import Config
from megaset.pipeline.run import run
from megaset.storage.store import open_store


@pytest.mark.slow
def test_run_chains_every_stage_then_resumes_without_redoing_work(tmp_path, cluster_client):
    cfg = Config.model_validate({
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 60_000, "signal_events": 1500,
                     "events_per_file": 30_000, "channels": ["zmmjets", "ttbar", "diboson", "c1n2_wz_800_50"]},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 1024},
        "training": {"output": str(tmp_path / "models"), "epochs": 2, "batch_size": 256},
        "report": {"output": str(tmp_path / "report")},
    })
    lines: list[str] = []
    first = run(cfg, cluster_client, log=lines.append)
    assert set(first["seconds"]) == {"simulate", "ingest", "mix", "train", "score", "report"}
    store = open_store(cfg.store.url)
    test = store.group("test")
    assert "score/ae-shallow" in test.columns()
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {row["signal"] for row in summary["auc_table"]} == {"c1n2_wz_800_50"}

    lines.clear()
    second = run(cfg, cluster_client, log=lines.append)
    assert "simulate: already complete, skipped" in lines
    assert "ingest: already complete, skipped" in lines
    assert "mix: already complete, skipped" in lines
    assert second["train"]["epochs"] == first["train"]["epochs"] == 2
    assert second["score"]["resumed"] == second["score"]["chunks"]
    assert second["score"]["events_scored"] == 0
