from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import uproot
import vector
from progress_calls import Calls

from megaset.errors import StoreError
from megaset.pipeline.schema import read_events
from megaset.pipeline.selection import select
from megaset.storage.store import open_store
from megaset.studies.pt_altering import altered_rmms, pt_altering, scale_leading

K = 3.0


def _objects(cfg, info: dict, entry: int) -> dict:
    """The selected electrons, muons and MET of one event, pT-ordered, read again from its file."""
    with uproot.open(info["path"]) as f:
        arrays = f[info["tree"]].arrays(cfg.schema.branches(), entry_start=entry, entry_stop=entry + 1, how=dict)
    sel = select(read_events(arrays, cfg.schema, info["path"], entry_start=entry), cfg.selection)
    out = {"met": float(sel.aux["met"][0]), "met_phi": float(sel.aux["met_phi"][0])}
    for source in ("electrons", "muons"):
        obj = sel.objects[source]
        order = np.argsort(-obj["pt"], kind="stable")
        out[source] = [vector.obj(pt=float(obj["pt"][o]), eta=float(obj["eta"][o]), phi=float(obj["phi"][o]),
                                  mass=float(obj["mass"][o])) for o in order]
    return out


def _scaled(v, k: float):
    return vector.obj(pt=v.pt * k, eta=v.eta, phi=v.phi, mass=v.mass)


def _m_t(v, met: float, met_phi: float) -> float:
    mpx, mpy = met * np.cos(met_phi), met * np.sin(met_phi)
    return float(np.sqrt(max((v.mt + met) ** 2 - (v.px + mpx) ** 2 - (v.py + mpy) ** 2, 0.0)))


def test_altered_cells_match_vector(scored):
    store = open_store(scored.store.url)
    values = store.group("val").read_chunk(0, ("event_id", "rmm"))
    event_id, stored = values["event_id"][:60], values["rmm"][:60]
    inputs = {int(f["index"]): f for f in store.attrs["inputs"]}
    rmms = altered_rmms(scored, inputs, event_id, [K])
    np.testing.assert_array_equal(rmms[1.0], stored)
    names = store.feature_names
    cell = {name: i for i, name in enumerate(names)}
    checked = {"ele": 0, "muo": 0, "pair": 0, "delta": 0}
    for row, (_, _, file_index, entry) in enumerate(event_id):
        ev = _objects(scored, inputs[int(file_index)], int(entry))
        altered, original = rmms[K][row], rmms[1.0][row]
        for source, name in (("electrons", "ele"), ("muons", "muo")):
            if not ev[source]:
                continue
            lead = _scaled(ev[source][0], K)
            checked[name] += 1
            assert altered[cell[f"e_T_{name}_0"]] == pytest.approx(lead.mt, rel=1e-6)
            m_t = _m_t(lead, ev["met"], ev["met_phi"])
            assert altered[cell[f"m_T_{name}_0"]] == pytest.approx(m_t, rel=1e-5, abs=1e-3)
            if len(ev[source]) > 1:
                second = ev[source][1].mt
                checked["delta"] += 1
                delta = (lead.mt - second) / (lead.mt + second)
                assert altered[cell[f"delta_e_T_{name}_1"]] == pytest.approx(delta, rel=1e-5)
        if ev["electrons"] and ev["muons"]:
            e, mu = _scaled(ev["electrons"][0], K), _scaled(ev["muons"][0], K)
            checked["pair"] += 1
            assert altered[cell["m_ele_0_muo_0"]] == pytest.approx((e + mu).mass, rel=1e-5)
            h = 0.15 * (np.cosh((mu.rapidity - e.rapidity) / 2) - 1)
            assert altered[cell["h_muo_0_ele_0"]] == pytest.approx(h, rel=1e-4, abs=1e-7)
        # Cells of jets and MET alone do not move.
        for name in ("e_T_miss", "e_T_ljet_0", "m_ljet_0_ljet_1", "h_L_ljet_0", "m_T_bjet_0"):
            assert altered[cell[name]] == original[cell[name]]
    assert checked["ele"] > 5 and checked["muo"] > 5 and checked["delta"] > 0


def test_scale_leading_touches_only_the_leading_object():
    from megaset.pipeline.objects import Jagged

    j = Jagged.from_counts(np.array([3, 0, 2]), {"pt": np.array([20.0, 50.0, 30.0, 7.0, 9.0]),
                                                   "eta": np.arange(5.0)})
    out = scale_leading(j, 10.0)
    np.testing.assert_array_equal(out["pt"], [20.0, 500.0, 30.0, 7.0, 90.0])
    np.testing.assert_array_equal(out["eta"], j["eta"])
    np.testing.assert_array_equal(out.offsets, j.offsets)


def test_pt_altering_end_to_end(scored, tmp_path):
    calls = Calls()
    result = pt_altering(scored, out_dir=tmp_path, progress=calls)
    assert [r["factor"] for r in result["rows"]] == [1.5, 3.0, 5.0, 7.0, 10.0]
    val = open_store(scored.store.url).group("val")
    n = min(scored.report.pt_events, val.n_events)
    # Each input file of the events read again, the original and five factors scored, the figures.
    ids = np.concatenate([v["event_id"] for _, v in val.iter_chunks(("event_id",))])[:n]
    assert calls.counted(len(np.unique(ids[:, 2])) + 6 + 1)
    assert result["events"] == n and result["group"] == "val"
    # The unaltered events score as the scoring stage stored them.
    parts = [v for _, v in val.iter_chunks(("score/ae-shallow", "weight"))]
    stored = np.concatenate([p["score/ae-shallow"] for p in parts])[:n].astype(np.float64)
    weight = np.abs(np.concatenate([p["weight"] for p in parts])[:n].astype(np.float64))
    assert result["original_mean_error"] == pytest.approx(np.average(stored, weights=weight), rel=1e-5)
    aucs = [r["auc"] for r in result["rows"]]
    assert aucs[-1] > aucs[0] and aucs[-1] > 0.8
    assert all(r["mean_error"] > result["original_mean_error"] for r in result["rows"][1:])
    for path in result["plots"].values():
        assert Path(path).parent == tmp_path and Path(path).stat().st_size > 1000
        assert Path(path).with_suffix(".pdf").is_file()
    assert all(0.0 < r["auc_error"] < 0.2 for r in result["rows"])


def test_events_of_unknown_files_are_refused(scored):
    event_id = open_store(scored.store.url).group("val").read_chunk(0, ("event_id",))["event_id"][:3]
    with pytest.raises(StoreError, match=r"the store lists no input file with index \d+; it cannot be read again"):
        altered_rmms(scored, {}, event_id, [K])


def test_cli_study_pt_altering_prints_the_table(scored, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from megaset.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(scored.replace(report={"output": str(tmp_path)}).resolved(), sort_keys=False))
    result = CliRunner().invoke(app, ["study", "pt-altering", "-c", str(config)])
    assert result.exit_code == 0, result.output
    for factor in ("1.5", "3", "5", "7", "10"):
        assert f"│ {factor:>6} │" in result.output
    assert (tmp_path / "pt_altering_ae-shallow.png").stat().st_size > 1000
    # Recorded for the report of the same folder: its table, and both figures.
    recorded = json.loads((tmp_path / "studies" / "pt-altering-ae-shallow.json").read_text())
    assert [row[0] for row in recorded["rows"]] == [1.5, 3.0, 5.0, 7.0, 10.0]
    assert [Path(p).name for p in recorded["plots"]] == ["pt_altering_ae-shallow.png", "pt_altering_auc_ae-shallow.png"]
