from __future__ import annotations

import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from megaset.config import Config, JetsConfig
from megaset.errors import ConfigError
from megaset.pipeline import jets_simulate
from megaset.pipeline.ingest import ingest
from megaset.pipeline.schema import read_events
from megaset.pipeline.simulate import CHANNELS, generate, write_ntuple
from megaset.pipeline.units import statistics
from megaset.storage.staging import list_pieces, read_piece

SAMPLES = ("zmmjets", "ttbar")
#: The branches in GeV of the flat ATLAS-style ntuple; the others are unit-free.
ENERGIES = ("jetPt", "jetM", "lepPt", "lepM", "met_Et")


def _write(root: Path, units: str, change=None) -> None:
    for c, channel in enumerate(SAMPLES):
        branches = generate(channel, 2000, seed=40 + c)
        if units == "MeV":
            branches |= {name: branches[name] * np.float32(1000) for name in ENERGIES}
        if change is not None:
            branches = change(branches)
        (root / channel).mkdir(parents=True)
        write_ntuple(root / channel / f"{channel}_{units}.root", branches, "mini")


@pytest.fixture(scope="module")
def ntuples(tmp_path_factory):
    """The same events written in GeV and in MeV (as float32 branches, as ATLAS writes them)."""
    root = tmp_path_factory.mktemp("units")
    for units in ("GeV", "MeV"):
        _write(root / units, units)
    return root


def _config(inputs: Path, store: Path, **schema) -> Config:
    channels = {ch: {"files": [str(inputs / ch / "*.root")]} for ch in SAMPLES}
    return Config.model_validate({"inputs": {"chunksize": 1000, "channels": channels},
                                  "schema": schema, "store": {"url": str(store / "store.zarr")}})


def _staged(url: str) -> dict[str, dict[str, np.ndarray]]:
    """Every staged column per channel, rows ordered by entry."""
    out = {}
    for channel, pieces in list_pieces(url).items():
        parts = [read_piece(url, channel, key) for key, _ in pieces]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(cols["event_id"][:, 3], kind="stable")
        out[channel] = {k: v[order] for k, v in cols.items()}
    return out


def test_mev_declared_gev_is_refused_by_name_before_anything_is_staged(ntuples, tmp_path):
    cfg = _config(ntuples / "MeV", tmp_path)
    with pytest.raises(ConfigError, match=r"channel 'zmmjets', file \S+zmmjets_MeV\.root: the median pT of the lepton "
                       r"candidates is [\d,]+ GeV \(\d+ values of its first 1000 entries, read with "
                       r"schema\.units: GeV\) is far above what GeV data give \(2 to 3000 GeV\); the file "
                       r"looks like MeV read as GeV: set schema\.units: MeV"):
        ingest(cfg)
    assert not Path(cfg.store.staging).exists()


def test_one_mev_file_among_gev_files_is_refused_by_name(ntuples, tmp_path):
    """Every file is checked, not only each channel's first: the MeV file sorted last among the
    GeV files of its channel is named, and nothing is staged."""
    inputs = tmp_path / "in"
    for channel in SAMPLES:
        (inputs / channel).mkdir(parents=True)
        for units in ("GeV", "MeV"):
            name = f"{channel}_{units}.root"
            prefix = "a_" if units == "GeV" else "b_"
            shutil.copy(ntuples / units / channel / name, inputs / channel / (prefix + name))
    cfg = _config(inputs, tmp_path)
    with pytest.raises(ConfigError, match=r"channel 'zmmjets', file \S+b_zmmjets_MeV\.root: the median pT of the "
                       r"lepton candidates is [\d,]+ GeV .*set schema\.units: MeV"):
        ingest(cfg)
    assert not Path(cfg.store.staging).exists()


def test_a_mev_file_stops_an_ingest_on_a_cluster_at_once_and_nothing_is_left(ntuples, tmp_path, cluster_client):
    """On Dask workers the refusal reaches the driver as it is, the chunks not yet begun are
    never run, and the pieces the others had staged are removed with the staging area."""
    inputs = tmp_path / "in"
    for channel in SAMPLES:
        (inputs / channel).mkdir(parents=True)
        shutil.copy(ntuples / "MeV" / channel / f"{channel}_MeV.root", inputs / channel / f"a_{channel}_MeV.root")
        for copy in range(3):
            branches = generate(channel, 2000, seed=50 + copy)
            write_ntuple(inputs / channel / f"b{copy}_{channel}_GeV.root", branches, "mini")
    cfg = _config(inputs, tmp_path).replace(inputs={"chunksize": 100})
    seen: list[tuple[int, int]] = []
    with pytest.raises(ConfigError, match=r"channel 'zmmjets', file \S+a_zmmjets_MeV\.root: the median pT of the "
                       r"lepton candidates is [\d,]+ GeV \(\d+ values of its first 100 entries.*"
                       r"set schema\.units: MeV"):
        ingest(cfg, cluster_client, progress=lambda done, total: seen.append((done, total)))
    done, total = seen[-1]
    assert total == 8 * 20
    assert done < total / 2, seen[-5:]
    assert not Path(cfg.store.staging).exists()
    assert not any(cluster_client.run(lambda dask_worker: len(dask_worker.state.all_running_tasks)).values())


def test_gev_declared_mev_is_refused(ntuples, tmp_path):
    with pytest.raises(ConfigError, match=r"channel 'zmmjets', .*the median pT of the lepton candidates is "
                       r"0\.0\d+ GeV .* is far below .*the file looks like GeV read as MeV: set schema\.units: GeV"):
        ingest(_config(ntuples / "GeV", tmp_path, units="MeV"))


def test_met_alone_tells_the_units(ntuples, tmp_path):
    """A file whose leptons were converted but whose MET was not is stopped at the MET."""
    def gev_met(branches):
        return branches | {"met_Et": branches["met_Et"] / np.float32(1000)}

    _write(tmp_path / "in", "MeV", gev_met)
    with pytest.raises(ConfigError, match=r"median MET of the events with MET > 0 is 0\.0\d+ GeV .*far below"):
        ingest(_config(tmp_path / "in", tmp_path, units="MeV"))


def test_mev_declared_mev_stages_what_the_gev_file_stages(ntuples, tmp_path):
    gev = _config(ntuples / "GeV", tmp_path / "gev")
    mev = _config(ntuples / "MeV", tmp_path / "mev", units="MeV")
    summaries = ingest(gev), ingest(mev)
    for channel in SAMPLES:
        assert summaries[0].channels[channel]["cutflow"] == summaries[1].channels[channel]["cutflow"]
        assert summaries[0].channels[channel]["n_selected"] > 50
    staged = _staged(gev.store.staging), _staged(mev.store.staging)
    for channel in SAMPLES:
        a, b = staged[0][channel], staged[1][channel]
        np.testing.assert_array_equal(a["event_id"][:, [0, 1, 3]], b["event_id"][:, [0, 1, 3]])
        for column in ("rmm", "met", "m_ll", "ht"):
            # float32 values times 1000, rounded, then divided again: equal to a few parts in 10^7
            np.testing.assert_allclose(b[column], a[column], rtol=2e-6, atol=1e-5, err_msg=column)
        np.testing.assert_array_equal(a["n_muons"], b["n_muons"])
        assert np.median(b["m_ll"]) < 200  # GeV, where a Z peak sits


def test_the_escape_hatch_lets_values_through(ntuples, tmp_path):
    summary = ingest(_config(ntuples / "MeV", tmp_path, check_units=False))
    assert summary.n_selected > 0


def test_continuous_isolation_as_a_flag_is_refused_before_anything_is_staged(tmp_path):
    def cone_sums(branches):
        iso = branches["lepIsoLoose_VarRad"]
        values = np.random.default_rng(5).exponential(0.1, len(ak.flatten(iso))).astype(np.float32)
        return branches | {"lepIsoLoose_VarRad": ak.unflatten(values, ak.num(iso))}

    _write(tmp_path / "in", "GeV", cone_sums)
    cfg = _config(tmp_path / "in", tmp_path)
    with pytest.raises(ConfigError, match=r"zmmjets_GeV\.root: branch 'lepIsoLoose_VarRad' "
                       r"\(schema\.collections\.lepton\.fields\.iso\) is read as a pass flag"):
        ingest(cfg)
    assert not Path(cfg.store.staging).exists()
    lepton = cfg.schema.collections["lepton"].model_dump()
    lepton["fields"]["iso"] = {"branch": "lepIsoLoose_VarRad", "max": 0.15}
    assert ingest(_config(tmp_path / "in", tmp_path / "cut", collections={
        "jet": cfg.schema.collections["jet"].model_dump(), "lepton": lepton})).n_selected > 0


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_every_simulated_channel_looks_like_gev(channel):
    branches = generate(channel, 3000, seed=2)
    ev = read_events(branches, Config().schema, f"{channel}.root")
    found = statistics(ev, Config())
    assert len(found) == 2 and all(s.plausible for s in found), found
    mev = read_events(branches | {name: branches[name] * np.float32(1000) for name in ENERGIES}, Config().schema,
                      f"{channel}.root")
    assert not any(s.plausible for s in statistics(mev, Config()))


@pytest.mark.parametrize("sample", ["qcd", "top"])
def test_simulated_jets_look_like_gev(sample):
    cfg = Config.model_validate({"inputs": {"kind": "jets"}})
    branches = jets_simulate.generate(sample, 200, seed=3)
    schema = JetsConfig().schema
    (stat,) = statistics(read_events(branches, schema, "jets.root"), cfg)
    assert stat.plausible and 700 < stat.median < 1500, stat
    mev = schema.model_copy(update={"units": "MeV"})
    (stat,) = statistics(read_events(branches, mev, "jets.root"), cfg)
    assert not stat.plausible and stat.median < stat.low


def test_jets_declared_mev_are_refused_by_their_processor_and_nothing_is_staged(tmp_path):
    """Jet inputs are checked by the jet processor on the same first chunk: GeV jets declared
    MeV stop the ingest with the jets section's key, and a GeV declaration stages them."""
    cfg = Config.model_validate({
        "inputs": {"kind": "jets", "chunksize": 150},
        "jets": {"simulate": {"output": str(tmp_path / "jets"), "jets": 300, "signal_jets": 100, "jets_per_file": 300,
                              "samples": ["qcd", "top"]},
                 "schema": {"units": "MeV"}},
        "store": {"url": str(tmp_path / "store.zarr")},
    })
    jets_simulate.simulate_jets(cfg.jets.simulate)
    with pytest.raises(ConfigError, match=r"channel 'qcd', file \S+qcd_0\.root: the median scalar pT sum of a "
                       r"jet's constituents is 0\.\d+ GeV \(150 values of its first 150 entries, read with "
                       r"jets\.schema\.units: MeV\).*set jets\.schema\.units: GeV"):
        ingest(cfg)
    assert not Path(cfg.store.staging).exists()
    assert ingest(cfg.replace(jets={"schema": {"units": "GeV"}})).n_selected > 0
