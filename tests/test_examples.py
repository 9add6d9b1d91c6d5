"""The configurations of examples/: each loads, prints through `megaset config`, and the two
layouts of real files (ATLAS-style flat ntuple in MeV, CMS-style Cartesian without run/event
numbers) read and select events from ROOT files written with their branch names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from typer.testing import CliRunner

from megaset.cli import app
from megaset.config import Config, load_config
from megaset.pipeline.schema import read_events
from megaset.pipeline.selection import select

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_examples_the_readme_names_are_there():
    assert {f.stem for f in FILES} == {"atlas-open-data-mev", "cms-cartesian", "s3-store", "kubernetes", "htcondor"}
    readme = (EXAMPLES.parent / "README.md").read_text()
    assert [f.name for f in FILES if f"examples/{f.name}" not in readme] == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_example_loads_and_prints_as_the_same_configuration(path):
    cfg = load_config(path)
    result = CliRunner().invoke(app, ["config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert Config.model_validate(yaml.safe_load(result.output)) == cfg


def test_what_each_example_is_for():
    cfg = {f.stem: load_config(f) for f in FILES}
    assert cfg["atlas-open-data-mev"].schema.units == "MeV"
    cms = cfg["cms-cartesian"].schema
    assert cms.run is None and cms.event is None
    assert all(c.cartesian for c in cms.collections.values()) and cms.met is not None and cms.met.px
    assert cfg["s3-store"].store.url.startswith("s3://") and cfg["s3-store"].store.staging.startswith("s3://")
    assert all(f.startswith("s3://") for ch in cfg["s3-store"].inputs.channels.values() for f in ch.files)
    assert cfg["kubernetes"].cluster.kind == "kubernetes"
    assert cfg["htcondor"].cluster.kind == "htcondor"
    assert all(f.startswith("root://") for ch in cfg["htcondor"].inputs.channels.values() for f in ch.files)


# Three events: two opposite muons that pass (m_ll computed below), an electron pair whose second
# electron is below 10 GeV, a single muon. pT, eta, phi, mass per lepton; GeV here.
EVENTS = [
    [(45.0, 0.5, 0.1, 0.1057, 13, 1), (38.0, -1.2, 2.9, 0.1057, 13, -1)],
    [(60.0, 0.3, 1.0, 0.000511, 11, 1), (7.0, 0.2, -2.0, 0.000511, 11, -1)],
    [(50.0, 0.0, 0.0, 0.1057, 13, 1)],
]


def _four_vectors(pt, eta, phi, m):
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)


def _expected_mll() -> float:
    (a, b) = ([np.float64(v) for v in lep[:4]] for lep in EVENTS[0])
    pa, pb = _four_vectors(*a), _four_vectors(*b)
    e, px, py, pz = pa[3] + pb[3], pa[0] + pb[0], pa[1] + pb[1], pa[2] + pb[2]
    return float(np.sqrt(e**2 - px**2 - py**2 - pz**2))


def _leptons(column: int, where=lambda lep: True):
    return ak.Array([[lep[column] for lep in event if where(lep)] for event in EVENTS])


def _jets(n_events: int) -> dict[str, ak.Array]:
    return {"pt": ak.Array([[55.0]] * n_events), "eta": ak.Array([[0.4]] * n_events),
            "phi": ak.Array([[-1.0]] * n_events), "m": ak.Array([[8.0]] * n_events)}


def _write(path: Path, tree: str, data: dict) -> None:
    with uproot.recreate(path) as f:
        f.mktree(tree, data, field_name=lambda outer, inner: outer + inner)


def _atlas_file(path: Path) -> None:
    """The ATLAS Open Data layout: vectors per event, energies in MeV, PDG codes as lep_type."""
    pt, eta, phi, m = (_leptons(i) for i in range(4))
    energy = _four_vectors(pt, eta, phi, m)[3]
    jets = _jets(len(EVENTS))
    jet_e = _four_vectors(jets["pt"], jets["eta"], jets["phi"], jets["m"])[3]
    n = len(EVENTS)
    _write(path, "mini", {
        "lep_": ak.zip({"pt": pt * 1000, "eta": eta, "phi": phi, "E": energy * 1000, "type": _leptons(4),
                        "charge": _leptons(5), "isTightID": ak.values_astype(pt > 0, np.int32),
                        "tracksigd0pvunbiased": pt * 0.0 + 1.0}),
        "jet_": ak.zip({"pt": jets["pt"] * 1000, "eta": jets["eta"], "phi": jets["phi"], "E": jet_e * 1000,
                        "MV2c10": jets["pt"] * 0.0 + 0.9}),
        "met_et": np.full(n, 30_000.0), "met_phi": np.zeros(n), "mcWeight": np.ones(n),
        "runNumber": np.full(n, 284500), "eventNumber": np.arange(n) + 7,
    })


def _cms_file(path: Path) -> None:
    """The CMS tutorial layout: Cartesian four-vectors in GeV, a collection per lepton type, no run or event."""
    data: dict = {}
    for prefix, pdg in (("Electron_", 11), ("Muon_", 13)):
        def mine(lep, pdg=pdg):
            return lep[4] == pdg
        px, py, pz, energy = _four_vectors(*(_leptons(i, mine) for i in range(4)))
        data[prefix] = ak.zip({"Px": px, "Py": py, "Pz": pz, "E": energy, "Charge": _leptons(5, mine),
                               "Iso": px * 0.0 + 1.0})
    jets = _jets(len(EVENTS))
    px, py, pz, energy = _four_vectors(jets["pt"], jets["eta"], jets["phi"], jets["m"])
    data["Jet_"] = ak.zip({"Px": px, "Py": py, "Pz": pz, "E": energy, "btag": px * 0.0 + 3.0})
    n = len(EVENTS)
    data |= {"MET_px": np.full(n, 30.0), "MET_py": np.zeros(n), "EventWeight": np.ones(n)}
    _write(path, "events", data)


@pytest.mark.parametrize(("example", "write"), [("atlas-open-data-mev", _atlas_file), ("cms-cartesian", _cms_file)])
def test_a_file_of_the_example_layout_is_read_in_gev_and_selected(tmp_path, example, write):
    cfg = load_config(EXAMPLES / f"{example}.yaml")
    path = tmp_path / "sample.root"
    write(path)
    with uproot.open(path) as f:
        arrays = f[cfg.inputs.tree].arrays(cfg.schema.branches(), how=dict)
    sel = select(read_events(arrays, cfg.schema, str(path)), cfg.selection, str(path))
    assert sel.mask.tolist() == [True, False, False]
    assert sel.aux["m_ll"][0] == pytest.approx(_expected_mll(), rel=1e-5)
    assert np.asarray(sel.objects["muons"]["pt"]).tolist() == pytest.approx([45.0, 38.0], rel=1e-5)
    assert sel.aux["n_b_jets"].tolist() == [1]  # the jet's tag is above the example's working point
    assert sel.aux["met"][0] == pytest.approx(30.0)


@pytest.mark.slow
def test_dry_run_of_the_cms_example_on_its_files(tmp_path):
    cfg = yaml.safe_load((EXAMPLES / "cms-cartesian.yaml").read_text())
    _cms_file(tmp_path / "sample.root")
    for channel in cfg["inputs"]["channels"].values():
        channel["files"] = [str(tmp_path / "sample.root")]
        break
    cfg["inputs"]["channels"] = dict(list(cfg["inputs"]["channels"].items())[:1])
    for section, key in (("store", "url"), ("training", "output"), ("report", "output")):
        cfg[section][key] = str(tmp_path / cfg[section][key])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-c", "from megaset.cli import main; main()", "run", "--dry-run",
                             "-c", str(path)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "ingest" in result.stdout and "missing" in result.stdout
