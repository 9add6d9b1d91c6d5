from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from megaset.errors import StoreError, StoreKeyError
from megaset.report.report import report
from megaset.storage.store import open_store
from megaset.training.score import score

PLOTS = ("errors.png", "roc.png", "regions_ae-shallow.png", "significance_ae-shallow.png",
         "decorrelation_ae-shallow.png", "separation_ae-shallow.png")


@pytest.fixture(scope="module")
def written(scored, tmp_path_factory):
    out = tmp_path_factory.mktemp("written")
    return report(scored, out_dir=out), out


def _test_group(cfg) -> dict[str, np.ndarray]:
    """Scores, yield weights and channels of the test group, the yields computed independently."""
    store = open_store(cfg.store.url)
    g = store.group("test")
    parts = [v for _, v in g.iter_chunks(("score/ae-shallow", "weight", "channel"))]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    scale = {c["id"]: sum(c["sum_weights"].values()) / c["sum_weights"]["test"]
             for c in store.channels if "test" in c["sum_weights"]}
    cols["yield"] = cols["weight"].astype(np.float64) * np.array([scale[int(c)] for c in cols["channel"]])
    return cols


def _signal(cfg, name: str) -> tuple[np.ndarray, np.ndarray]:
    g = open_store(cfg.store.url).group(f"signal/{name}")
    parts = [v for _, v in g.iter_chunks(("score/ae-shallow", "weight"))]
    return (np.concatenate([p["score/ae-shallow"] for p in parts]).astype(np.float64),
            np.concatenate([p["weight"] for p in parts]).astype(np.float64))


def test_report_writes_every_plot_and_the_summaries(written):
    result, out = written
    for name in (*PLOTS, "report.md", "report.json"):
        assert (out / name).stat().st_size > 1000 or name == "report.md", name
    assert (out / "report.md").stat().st_size > 200
    saved = json.loads((out / "report.json").read_text())
    assert saved["models"] == ["ae-shallow"] and saved["mass_variable"] == "m_ll" and saved["axis"] == "log10"
    assert [(r["signal"], r["model"]) for r in saved["auc_table"]] == [
        ("c1n2_wz_800_50", "ae-shallow"), ("c1n2_wz_450_300", "ae-shallow")]
    md = (out / "report.md").read_text()
    assert "| signal | model | AUC | E10 | E100 |" in md and "| c1n2_wz_800_50 | ae-shallow |" in md
    assert "![errors](errors.png)" in md and "separation_ae-shallow.png" in md
    kinds = {y["sample"]: y["kind"] for y in saved["yields"]}
    assert kinds == {"zeejets": "background", "zmmjets": "background", "ttbar": "background", "diboson": "background",
                     "c1n2_wz_800_50": "signal", "c1n2_wz_450_300": "signal", "data": "data"}


def test_auc_table_against_a_pairwise_count(scored, written):
    result, _ = written
    bkg = _test_group(scored)
    for row in result["auc_table"]:
        s, ws = _signal(scored, row["signal"])
        b, wb = bkg["score/ae-shallow"].astype(np.float64), np.clip(bkg["yield"], 0, None)
        ws = np.clip(ws, 0, None)
        wins = (s[:, None] > b[None, :]) + 0.5 * (s[:, None] == b[None, :])
        expected = float((ws[:, None] * wb[None, :] * wins).sum() / (ws.sum() * wb.sum()))
        assert row["auc"] == pytest.approx(expected, rel=1e-9)
        assert 0.0 <= row["e100"] <= row["e10"] <= 1.0
    # The SUSY signals are harder than the Z + jets background even for a two-epoch model.
    assert min(r["auc"] for r in result["auc_table"]) > 0.6


def test_signal_regions_from_the_weighted_background_median(scored, written):
    result, _ = written
    bkg = _test_group(scored)
    x = np.log10(bkg["score/ae-shallow"].astype(np.float64))
    order = np.argsort(x)
    cum = np.cumsum(np.clip(bkg["yield"][order], 0, None))
    median = x[order][np.argmax(cum >= cum[-1] / 2)]
    section = result["sections"]["ae-shallow"]
    assert section["median"] == pytest.approx(median)
    np.testing.assert_allclose(section["cuts"], [median + i * abs(median) / 5 for i in (1, 2, 3)])
    for region, cut in zip(section["regions"], section["cuts"], strict=True):
        assert region["background"] == pytest.approx(float(bkg["yield"][x >= cut].sum()), rel=1e-9)
        s, ws = _signal(scored, "c1n2_wz_450_300")
        sig = region["signals"]["c1n2_wz_450_300"]
        expected = float(ws[np.log10(s) >= cut].sum()) * _signal_scale(scored, "c1n2_wz_450_300")
        assert sig["yield"] == pytest.approx(expected)
        if region["background"] > 0:
            assert sig["z"] == pytest.approx(sig["yield"] / np.sqrt(region["background"]))
    # Tighter regions keep less background.
    assert section["regions"][0]["background"] >= section["regions"][2]["background"]


def _signal_scale(cfg, name: str) -> float:
    channel = next(c for c in open_store(cfg.store.url).channels if c["name"] == name)
    return sum(channel["sum_weights"].values()) / channel["sum_weights"][f"signal/{name}"]


def test_yields_are_those_of_the_whole_channels(scored, written):
    result, _ = written
    totals = {c["name"]: sum(c["sum_weights"].values()) for c in open_store(scored.store.url).channels}
    for entry in result["yields"]:
        if entry["kind"] != "data":
            assert entry["yield"] == pytest.approx(totals[entry["sample"]], rel=1e-6), entry["sample"]
    separation = result["sections"]["ae-shallow"]["separation"]
    matrix = np.array(separation["auc"], dtype=float)
    assert separation["samples"][-1] == "data" and matrix.shape == (7, 7)
    np.testing.assert_allclose(matrix + matrix.T, 1.0)


def test_unknown_and_unfinished_scores_are_refused(scored, tmp_path):
    with pytest.raises(StoreKeyError,
                       match=r"model\(s\) ae-deep are not scored in .*; scored: ae-shallow \(run `megaset score`"):
        report(scored, out_dir=tmp_path, models=["ae-deep"])
    score(scored, None, model="partial", checkpoint=f"{scored.training.output}/ae-shallow/best.pt")
    Path(f"{scored.store.url}/test/score/partial/c/0").unlink()
    with pytest.raises(StoreError, match=r"events of group 'test' in .* have no score/partial: the scoring was "
                                         r"interrupted; run `megaset score` again"):
        report(scored, out_dir=tmp_path, models=["partial"])
    score(scored, None, model="partial", checkpoint=f"{scored.training.output}/ae-shallow/best.pt")


@pytest.mark.slow
def test_cli_report_with_two_models_side_by_side(scored, tmp_path):
    from typer.testing import CliRunner

    from megaset.cli import app

    score(scored, None, model="ae-copy", checkpoint=f"{scored.training.output}/ae-shallow/best.pt")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(scored.resolved(), sort_keys=False))
    result = CliRunner().invoke(app, ["report", "-c", str(path), "-o", str(tmp_path / "out"),
                                      "--model", "ae-shallow", "--model", "ae-copy"])
    assert result.exit_code == 0, result.output
    output = "".join(result.output.split())  # rich wraps and folds long lines
    assert "E100" in output and "report.md" in output
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    by_model = {(r["signal"], r["model"]): r["auc"] for r in saved["auc_table"]}
    assert by_model[("c1n2_wz_800_50", "ae-copy")] == by_model[("c1n2_wz_800_50", "ae-shallow")]
    assert (tmp_path / "out" / "separation_ae-copy.png").stat().st_size > 1000
