"""The charge option of the RMM end to end: one signal sample written twice, once as simulated
(mostly opposite-sign lepton pairs) and once with every lepton made positive, ingested, trained
on and scored. Without the option both copies have identical matrices event by event
(tests/pipeline/test_rmm.py); with it their scores differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megaset.config import Config

pytestmark = pytest.mark.slow

BACKGROUND = ["zeejets", "zmmjets", "ttbar"]
SIGNAL = "c1n2_wz_800_50"


def _same_sign_copy(source: Path, target: Path) -> None:
    """``source`` with every lepton's charge set to +1, written as a new ntuple."""
    import awkward as ak
    import uproot

    from megaset.pipeline.simulate import write_ntuple

    with uproot.open(source) as f:
        arrays = f["mini"].arrays()
    branches = {name: arrays[name] for name in arrays.fields if not name.startswith("n")}
    branches["lepCharge"] = ak.ones_like(arrays["lepCharge"])
    target.parent.mkdir(parents=True)
    write_ntuple(target, branches)


def _scores(cfg: Config, name: str) -> dict[tuple[int, ...], float]:
    from megaset.storage.store import open_store

    g = open_store(cfg.store.url).group(f"signal/{name}")
    parts = [v for _, v in g.iter_chunks(("score/ae-shallow", "event_id"))]
    ids = np.concatenate([p["event_id"] for p in parts])
    scores = np.concatenate([p["score/ae-shallow"] for p in parts])
    # run, event, entry: the file index differs between the two copies
    return {(int(i[0]), int(i[1]), int(i[3])): float(s) for i, s in zip(ids, scores, strict=True)}


def test_same_and_opposite_sign_copies_score_differently_with_the_charge_option(tmp_path):
    import torch

    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import simulate
    from megaset.studies.common import train_and_score

    torch.set_num_threads(1)
    channels = {c: {"files": [str(tmp_path / "ntuples" / c / "*.root")]} for c in BACKGROUND}
    channels["os"] = {"files": [str(tmp_path / "ntuples" / SIGNAL / "*.root")], "signal": True}
    channels["ss"] = {"files": [str(tmp_path / "ss" / "*.root")], "signal": True}
    cfg = Config.model_validate({
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 3000, "signal_events": 400,
                     "channels": [*BACKGROUND, SIGNAL]},
        "inputs": {"channels": channels},
        "rmm": {"objects": "charged"},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 256},
        "training": {"output": str(tmp_path / "models"), "epochs": 2, "batch_size": 256,
                     "architecture": {"latent": 8}},
    })
    simulate(cfg.simulate)
    (source,) = sorted((tmp_path / "ntuples" / SIGNAL).glob("*.root"))
    _same_sign_copy(source, tmp_path / "ss" / source.name)
    ingest(cfg, None)
    train_and_score(cfg, None)
    os_scores, ss_scores = _scores(cfg, "os"), _scores(cfg, "ss")
    common = sorted(set(os_scores) & set(ss_scores))
    assert len(common) > 100
    os_, ss = np.array([os_scores[k] for k in common]), np.array([ss_scores[k] for k in common])
    # The WZ signal's leptons are mostly an opposite-sign pair plus one: making them all positive
    # moves cells between the e+ / e- and mu+ / mu- blocks in nearly every event.
    assert np.mean(os_ != ss) > 0.9
