from __future__ import annotations

import json
from pathlib import Path

import pytest
from progress_calls import Calls

from megaset.errors import ConfigError
from megaset.report.style import process_colours
from megaset.storage.store import open_store
from megaset.studies.channel_removal import channel_removal
from megaset.studies.contamination import contamination


@pytest.mark.slow
def test_contamination_injects_the_signal_into_train(scored, tmp_path):
    calls = Calls()
    result = contamination(scored, None, signal="c1n2_wz_450_300", fractions=[0.0, 0.05], workdir=tmp_path,
                           progress=calls)
    assert calls.counted(6)  # mix, train and score per fraction
    clean, dirty = result["rows"]
    assert (clean["fraction"], dirty["fraction"]) == (0.0, 0.05)
    train = open_store(str(tmp_path / "f0.05" / "store.zarr")).group("train")
    background = sum(n for n in open_store(str(tmp_path / "f0" / "store.zarr")).group("train").channel_counts.values())
    assert clean["train_signal_events"] == 0
    assert dirty["train_signal_events"] == round(0.05 * background) == train.n_events - background
    for row in result["rows"]:
        assert 0.0 <= row["e100"] <= row["e10"] <= 1.0 and 0.0 <= row["auc"] <= 1.0
    # The uncontaminated store is the reference store mixed again.
    reference = open_store(scored.store.url).group("train")
    assert reference.n_events == background
    assert Path(result["plot"]).stat().st_size > 1000 and Path(result["plot"]).with_suffix(".pdf").is_file()
    recorded = json.loads(Path(scored.report.output, "studies", "contamination-c1n2_wz_450_300.json").read_text())
    assert [r[0] for r in recorded["rows"]] == [0.0, 0.05] and recorded["plots"] == [result["plot"]]


@pytest.mark.slow
def test_channel_removal_scores_the_left_out_channel_as_a_signal(scored, tmp_path):
    calls = Calls()
    result = channel_removal(scored, None, "ttbar", workdir=tmp_path, report=False, progress=calls)
    assert calls.counted(4)  # ingest, mix, train, score
    derived = open_store(result["store"])
    ttbar = next(c for c in derived.channels if c["name"] == "ttbar")
    original = next(c for c in open_store(scored.store.url).channels if c["name"] == "ttbar")
    assert ttbar["is_signal"] and ttbar["events"] == {"signal/ttbar": sum(original["events"].values())}
    for group in ("train", "val", "test"):
        assert ttbar["id"] not in derived.group(group).channel_counts
    assert 0.0 <= result["e100"] <= result["e10"] <= 1.0 and 0.5 < result["auc"] <= 1.0
    # ttbar, now a signal, keeps the colour it has in the background stack of the full report.
    assert process_colours(derived.channels) == process_colours(open_store(scored.store.url).channels)
    recorded = json.loads(Path(scored.report.output, "studies", "channel-removal-ttbar.json").read_text())
    assert recorded["rows"] == [["ttbar", f"{result['auc']:.3f} ± {result['auc_error']:.3f}", result["e10"],
                                 result["e100"]]]
    with pytest.raises(ConfigError, match=r"needs a background channel, got 'c1n2_wz_800_50'; the inputs have "
                                          r"zeejets, zmmjets, ttbar, diboson"):
        channel_removal(scored, None, "c1n2_wz_800_50", workdir=tmp_path)
