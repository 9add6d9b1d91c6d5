from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from progress_calls import Calls

from megaset.errors import StoreError, StoreKeyError
from megaset.report.report import report
from megaset.storage.store import open_store
from megaset.training.score import score

PLOTS = ("errors.png", "roc.png", "regions_ae-shallow.png", "significance_ae-shallow.png",
         "decorrelation_ae-shallow.png", "separation_ae-shallow.png")


#: The progress the report of ``written`` told.
WRITTEN_PROGRESS = Calls()


@pytest.fixture(scope="module")
def written(scored, tmp_path_factory):
    from megaset.reporting import write_report

    out = tmp_path_factory.mktemp("written")
    return write_report(scored, out_dir=out, progress=WRITTEN_PROGRESS), out


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
    _, out = written
    assert WRITTEN_PROGRESS.counted(3)  # the samples, the one model's section, the summary figures and tables
    for name in (*PLOTS, "report.md", "report.json"):
        assert (out / name).stat().st_size > 1000 or name == "report.md", name
    for name in PLOTS:
        assert (out / name).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-", name
    assert (out / "report.md").stat().st_size > 200
    saved = json.loads((out / "report.json").read_text())
    assert saved["models"] == ["ae-shallow"] and saved["mass_variable"] == "m_ll" and saved["axis"] == "log10"
    assert [(r["signal"], r["model"]) for r in saved["auc_table"]] == [
        ("c1n2_wz_800_50", "ae-shallow"), ("c1n2_wz_450_300", "ae-shallow")]
    md = (out / "report.md").read_text()
    assert "| signal | model | AUC | E10 | E100 | E1000 | best ε_S/√ε_B |" in md
    assert "| c1n2_wz_800_50 | ae-shallow |" in md
    assert "![errors](errors.png) ([PDF](errors.pdf))" in md and "separation_ae-shallow.png" in md
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
        assert row["e1000"] <= row["e100"] and row["e1000_error"] >= 0.0
        # The working point's cut keeps about eps_B of the test background's MC events; a
        # handful at 1e-3 in this small store: marked, not measured.
        kept = row["e1000_background_events"]
        assert kept < 0.01 * len(b) and row["e1000_enough"] is (kept >= scored.report.min_background_events)
        assert row["e1000_si"] == pytest.approx(row["e1000"] / np.sqrt(1e-3))
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


def _yield_weights(cfg, group: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights scaled to the whole channel, computed here from the channels' sums, and channel ids."""
    store = open_store(cfg.store.url)
    parts = [v for _, v in store.group(group).iter_chunks(("weight", "channel"))]
    w = np.concatenate([p["weight"] for p in parts]).astype(np.float64)
    ch = np.concatenate([p["channel"] for p in parts])
    scale = {c["id"]: sum(c["sum_weights"].values()) / c["sum_weights"][group]
             for c in store.channels if group in c["sum_weights"]}
    return w * np.array([scale[int(c)] for c in ch]), ch


def test_report_json_carries_yield_uncertainties_and_effective_events(scored, written):
    _, out = written
    saved = json.loads((out / "report.json").read_text())
    names = {c["id"]: c["name"] for c in open_store(scored.store.url).channels}
    w, ch = _yield_weights(scored, "test")
    by_name = {y["sample"]: y for y in saved["yields"]}
    for cid in np.unique(ch):
        entry, wc = by_name[names[int(cid)]], w[ch == cid]
        assert entry["events"] == len(wc)
        assert entry["error"] == pytest.approx(np.sqrt(np.sum(wc**2)), rel=1e-9)
        assert entry["n_eff"] == pytest.approx(wc.sum() ** 2 / np.sum(wc**2), rel=1e-9)
        # Equal weights: N_eff is the number of events; NLO weights of both signs lower it.
        assert entry["n_eff"] <= entry["events"] * (1 + 1e-9)
    md = (out / "report.md").read_text()
    assert "| sample | kind | MC events | expected yield | N_eff |" in md
    zee = by_name["zeejets"]
    assert f"| zeejets | background | {zee['events']} |" in md and " ± " in md


def test_query_yield_weight_sums_to_the_reports_yields(scored, written):
    from megaset.storage.query import query

    result, _ = written
    reported = {y["sample"]: y["yield"] for y in result["yields"] if y["kind"] != "data"}
    sums = dict(query(scored.store.url, "SELECT channel_name, sum(yield_weight) AS y FROM test GROUP BY channel_name")
                .iter_rows())
    for name in ("c1n2_wz_800_50", "c1n2_wz_450_300"):
        sums |= dict(query(scored.store.url, f"SELECT channel_name, sum(yield_weight) FROM signal_{name} "
                                             "GROUP BY channel_name").iter_rows())
    assert sums.keys() == reported.keys()
    for name, value in reported.items():
        assert sums[name] == pytest.approx(value, rel=1e-6), name
    # The plain weight of the test group is its share only.
    plain = query(scored.store.url, "SELECT sum(weight) AS w FROM test")["w"][0]
    assert 0.1 < plain / sum(reported[n] for n in reported if not n.startswith("c1n2")) < 0.35


def test_significances_use_the_background_mc_uncertainty_and_refuse_thin_cuts(scored, written, tmp_path):
    from megaset.report.metrics import asimov_significance

    result, _ = written
    w, _ = _yield_weights(scored, "test")
    bkg = _test_group(scored)
    x = np.log10(bkg["score/ae-shallow"].astype(np.float64))
    section = result["sections"]["ae-shallow"]
    assert result["statistics"] == {"min_background_events": 10, "background_systematic": 0.0,
                                    "auc_replicas": 200}
    for region in section["regions"]:
        inside = x >= region["cut"]
        assert region["background_events"] == int(inside.sum())
        assert region["background_error"] == pytest.approx(np.sqrt(np.sum(w[inside] ** 2)), rel=1e-9)
        # The floor counts effective MC events, so that weights of both signs cannot pass it.
        total, sumw2 = w[inside].sum(), np.sum(w[inside] ** 2)
        n_eff = total * total / sumw2 if total > 0 else 0.0
        assert region["background_n_eff"] == pytest.approx(n_eff, rel=1e-9)
        assert region["few_mc_events"] is bool(n_eff < 10)
        for sig in region["signals"].values():
            expected = asimov_significance(sig["yield"], region["background"], region["background_error"])
            assert sig["z_asimov"] == pytest.approx(float(expected), rel=1e-9, nan_ok=True)
            best = sig["best_met_cut"]
            if best is not None:
                assert best["background_events"] >= best["background_n_eff"] >= 10
                assert best["z_asimov"] == pytest.approx(float(asimov_significance(
                    best["signal"], best["background"], best["background_error"])), rel=1e-9)

    # Every cut refused when no cut keeps enough MC events; the page says so.
    strict = scored.replace(report={"min_background_events": 10**9, "background_systematic": 0.2,
                                    "auc_replicas": 20})
    refused = report(strict, out_dir=tmp_path)
    for region in refused["sections"]["ae-shallow"]["regions"]:
        assert region["met_refused_from"] == 0.0 and region["few_mc_events"]
        assert all(sig["best_met_cut"] is None for sig in region["signals"].values())
        # A 20 % systematic on top of the MC statistics.
        assert region["sigma_b"] == pytest.approx(np.hypot(region["background_error"], 0.2 * region["background"]))
    md = (tmp_path / "report.md").read_text()
    assert "MET cuts whose background rests on fewer than 1000000000 effective MC events" in md
    assert "SR1 itself keeps " in md and "effective ones: its background is a fluctuation" in md
    assert "and a 20% systematic" in md


def test_auc_uncertainty_is_the_bootstrap_spread(scored, written):
    from megaset.report.metrics import auc_error

    result, _ = written
    bkg = _test_group(scored)
    for row in result["auc_table"]:
        s, ws = _signal(scored, row["signal"])
        expected = auc_error(bkg["score/ae-shallow"], s, bkg["yield"], ws * _signal_scale(scored, row["signal"]),
                             replicas=400, seed=1)
        # Other draws (the report orders the background by channel): equal within the spread of
        # a standard deviation estimated from a few hundred replicas.
        assert row["auc_error"] == pytest.approx(expected, rel=0.25)
        assert 0.0 < row["auc_error"] < 0.1
    saved = json.loads(Path(result["json"]).read_text())
    assert all("auc_error" in r for r in saved["auc_table"])


def test_page_has_cut_flow_configuration_training_and_studies(scored, written):
    import hashlib

    from megaset.report.markdown import add_study

    result, out = written
    md = (out / "report.md").read_text()
    cutflow = open_store(scored.store.url).attrs["cutflow"]
    assert "## Cut flow" in md
    for name, steps in cutflow.items():
        assert f"| {name} | " + " | ".join(str(int(raw)) for _, raw, _ in steps) + " |" in md
    digest = hashlib.sha256((out / "config.yaml").read_bytes()).hexdigest()
    assert result["config"]["sha256"] == digest and f"[config.yaml](config.yaml), SHA-256 `{digest}`" in md
    assert yaml.safe_load((out / "config.yaml").read_text()) == scored.resolved()
    trained = result["training"]["ae-shallow"]
    assert trained["epochs"] == len(trained["history"]) == scored.training.epochs
    assert "| ae-shallow | 2 |" in md and "val loss (|w|)" in md and "![loss curve ae-shallow](" in md
    assert "No study has been run" in md

    plot = out / "elsewhere" / "study.png"
    plot.parent.mkdir()
    plot.write_bytes(b"png")
    add_study(out, "demo-study", title="A study", header=["k", "AUC"], rows=[[1.5, "0.9 ± 0.1"]], plots=[plot])
    md = (out / "report.md").read_text()
    assert "### A study" in md and "| 1.5 | 0.9 ± 0.1 |" in md
    assert "![study](elsewhere/study.png) ([PDF](elsewhere/study.pdf))" in md
    assert json.loads((out / "report.json").read_text())["studies"][0]["key"] == "demo-study"
    (out / "studies" / "demo-study.json").unlink()


def test_colours_are_fixed_per_process_and_stable_across_reports(scored, written, tmp_path):
    from megaset.report.style import PALETTE

    result, _ = written
    channels = {c["name"]: c["id"] for c in open_store(scored.store.url).channels}
    assert result["colours"] == {name: PALETTE[channels[name]] if name != "data" else "black" for name in channels}
    assert len(set(result["colours"].values())) == len(channels) == 7
    again = report(scored.replace(report={"bins": 10, "auc_replicas": 20, "colors": {"ttbar": "#000080"}}),
                   out_dir=tmp_path)
    assert again["colours"] == {**result["colours"], "ttbar": "#000080"}


def test_report_config_keeps_no_credential(tmp_path):
    from faults import CLUSTER_WITH_SECRETS, SECRET

    from megaset.config import Config
    from megaset.report.report import _write_config

    written = _write_config(Config().replace(cluster=CLUSTER_WITH_SECRETS), tmp_path)
    text = Path(written["file"]).read_text()
    assert SECRET not in text and "AWS_SECRET_ACCESS_KEY: <redacted>" in text
    assert yaml.safe_load(text)["cluster"]["kubernetes"]["secret"] == "megaset-s3"


def _copy_with_signal_weights(cfg, folder: Path, weights: dict) -> object:
    """A copy of the scored store of ``cfg`` in ``folder`` whose signals named in ``weights``
    carry the weights that function gives their events (as a selection that keeps none with a
    positive weight leaves them); the configuration of the copy."""
    import shutil

    url = str(folder / "store.zarr")
    shutil.copytree(cfg.store.url, url)
    store = open_store(url)
    for name, make in weights.items():
        group = store.group(f"signal/{name}")
        for i, values in group.iter_chunks(("weight",)):
            group.write_chunks("weight", range(i, i + 1), make(values["weight"]))
    return cfg.replace(store={"url": url})


def _without_warnings(cfg, out: Path) -> dict:
    """The report of ``cfg`` into ``out``, every RuntimeWarning (an empty sample's 0 / 0) an error."""
    import warnings

    from megaset.reporting import write_report

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return write_report(cfg, out_dir=out, models=["ae-shallow"])


def _rows(result: dict) -> dict:
    return {(r["signal"], r["model"]): r for r in json.loads(Path(result["json"]).read_text())["auc_table"]}


def test_a_signal_without_positive_weight_is_left_out_of_the_table_and_named(scored, written, tmp_path):
    def non_positive(w):  # one event in three at zero, the others negative (an NLO sample cut to its negative tail)
        return np.where(np.arange(len(w)) % 3 == 0, 0.0, -np.abs(w) - 1e-3)

    cfg = _copy_with_signal_weights(scored, tmp_path, {"c1n2_wz_450_300": non_positive})
    result = _without_warnings(cfg, tmp_path / "out")
    saved = json.loads(Path(result["json"]).read_text())
    assert saved["signals_without_events"] == ["c1n2_wz_450_300"]
    assert json.loads(Path(written[0]["json"]).read_text())["signals_without_events"] == []
    # The other signal's row is the one of the report of the untouched store, to the last digit.
    baseline = {k: v for k, v in _rows(written[0]).items() if k[0] == "c1n2_wz_800_50"}
    assert _rows(result) == baseline
    md = (tmp_path / "out" / "report.md").read_text()
    note = "- signal c1n2_wz_450_300: no selected event with a positive weight in the store: not in the table"
    assert md.count(note) == 1 and "| c1n2_wz_800_50 | ae-shallow |" in md
    assert "| c1n2_wz_450_300 | ae-shallow |" not in md
    assert (tmp_path / "out" / "roc.png").stat().st_size > 1000
    # The rest of the report still shows it: its (negative) yield, its regions, no separation.
    assert {y["sample"]: y["yield"] for y in saved["yields"]}["c1n2_wz_450_300"] < 0
    section = saved["sections"]["ae-shallow"]
    assert all(r["signals"]["c1n2_wz_450_300"]["yield"] <= 0 for r in section["regions"])
    i = section["separation"]["samples"].index("c1n2_wz_450_300")
    assert all(v is None for v in section["separation"]["auc"][i])


def test_a_report_whose_every_signal_is_empty_has_no_roc_table_and_says_why(scored, tmp_path):
    cfg = _copy_with_signal_weights(scored, tmp_path, {"c1n2_wz_800_50": np.zeros_like,
                                                       "c1n2_wz_450_300": np.negative})
    result = _without_warnings(cfg, tmp_path / "out")
    assert result["auc_table"] == [] and "roc" not in result["plots"]
    assert result["signals_without_events"] == ["c1n2_wz_800_50", "c1n2_wz_450_300"]
    assert not (tmp_path / "out" / "roc.png").exists()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No signal has a selected event with a positive weight in the store" in md
    assert "| signal | model | AUC |" not in md and "Model families against signals" not in md
    for name in ("c1n2_wz_800_50", "c1n2_wz_450_300"):
        assert f"- signal {name}: no selected event with a positive weight in the store: not in the table" in md


def test_a_signal_without_events_passes_through_every_section(scored, tmp_path):
    """A signal group the selection kept no event of: zero-length arrays, read as the store gives them."""
    import warnings

    from megaset.report.anomaly import anomaly_table, signals_without_events
    from megaset.report.report import _model_section
    from megaset.report.samples import Sample, load_samples
    from megaset.report.style import Style

    store = open_store(scored.store.url)
    samples = load_samples(store, ["ae-shallow"], "m_ll")
    empty = np.zeros(0)
    nothing = Sample("nothing", "signal", empty, empty, empty, {"ae-shallow": empty})
    background = [s for s in samples if s.kind == "background"]
    signals = [s for s in samples if s.kind == "signal"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows, rocs = anomaly_table("ae-shallow", background, [*signals, nothing], replicas=20)
        section, _ = _model_section("ae-shallow", scored.report, [*samples, nothing], "m_ll", tmp_path,
                                    Style.from_config(scored, store.channels))
    assert signals_without_events([*signals, nothing]) == ["nothing"]
    assert "nothing" not in rocs and [r["signal"] for r in rows] == [s.name for s in signals]
    assert rows == anomaly_table("ae-shallow", background, signals, replicas=20)[0]
    for region in section["regions"]:
        assert region["signals"]["nothing"]["yield"] == 0.0 and region["signals"]["nothing"]["z"] == 0.0
    assert np.isnan(section["decorrelation"]["mean"]["nothing"]).all()


def test_each_score_axis_says_what_the_score_measures():
    from megaset.report.report import axis_label
    from megaset.training.registry import MODELS, NOT_RECONSTRUCTING, SCORE_QUANTITY

    assert set(NOT_RECONSTRUCTING) <= set(SCORE_QUANTITY) <= set(MODELS)
    for model in MODELS:
        label = axis_label(model, "log10")
        assert label.startswith("log10 ") and label.endswith(f"({model})")
        assert ("reconstruction error" in label) == (model not in SCORE_QUANTITY or model == "ae-ensemble"), label
    assert axis_label("deep-svdd", "linear") == "squared distance to the centre (deep-svdd)"
    assert axis_label("flow", "log10") == "log10 softplus(negative log-likelihood per feature) (flow)"
    methods = {"ae-svdd": "rank-mean", "tails": "min-p"}
    assert axis_label("ae-svdd", "log10", methods) == "log10 -log10 mean background p-value (rank-mean) (ae-svdd)"
    assert axis_label("tails", "linear", methods) == "-log10 background p-value (min-p) (tails)"
    assert axis_label("ae-shallow", "log10", methods) == "log10 reconstruction error (ae-shallow)"
