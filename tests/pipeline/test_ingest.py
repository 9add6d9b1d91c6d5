from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml
from progress_calls import Calls

from megaset.config import Config
from megaset.errors import InputFileError, NonFiniteInputError, StoreError
from megaset.pipeline.ingest import ingest
from megaset.pipeline.rmm import feature_names
from megaset.pipeline.simulate import generate, write_ntuple
from megaset.storage.staging import list_pieces, read_piece, staging_attrs

CHANNELS = ("zmmjets", "ttbar", "c1n2_wz_800_50")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Two files per channel, written from the simulator's generator."""
    root = tmp_path_factory.mktemp("ntuples")
    for c, channel in enumerate(CHANNELS):
        (root / channel).mkdir()
        for i in range(2):
            branches = generate(channel, 1500, seed=100 * c + i, first_event=1500 * i)
            write_ntuple(root / channel / f"{channel}_{i}.root", branches, "mini")
    return root


def make_config(sample, store, **inputs) -> Config:
    channels = {
        ch: {"files": [str(sample / ch / "*.root")], "signal": ch.startswith("c1n2")} for ch in CHANNELS
    }
    return Config.model_validate({
        "inputs": {"chunksize": 1000, "channels": channels, **inputs},
        "store": {"url": str(store / "store.zarr")},
    })


def staged(url: str) -> dict[str, dict[str, np.ndarray]]:
    """Every staged column per channel, rows ordered by event id."""
    out = {}
    for channel, pieces in list_pieces(url).items():
        parts = [read_piece(url, channel, key) for key, _ in pieces]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        if cols:
            order = np.lexsort(cols["event_id"].T[::-1])
            cols = {k: v[order] for k, v in cols.items()}
        out[channel] = cols
    return out


@pytest.fixture(scope="module")
def reference(sample, tmp_path_factory):
    cfg = make_config(sample, tmp_path_factory.mktemp("ref"))
    calls = Calls()
    summary = ingest(cfg, progress=calls)
    return cfg, summary, staged(cfg.store.staging), calls


def test_single_process_ingest_records_everything(reference):
    cfg, summary, data, calls = reference
    attrs = staging_attrs(cfg.store.staging)
    assert attrs["feature_names"] == feature_names(cfg.rmm)
    assert [c["name"] for c in attrs["channels"]] == list(CHANNELS)
    assert len(attrs["files"]) == 6
    for f in attrs["files"]:
        content = Path(f["path"]).read_bytes()
        assert (f["size"], f["checksum"]) == (len(content), f"adler32:{zlib.adler32(content):08x}")
    for channel in CHANNELS:
        s = summary.channels[channel]
        assert s["n_read"] == 3000
        assert s["chunks"] == 4  # 1500 entries per file in chunks of at most 1000
        assert s["cutflow"][0][:2] == ["all", 3000]
        assert s["cutflow"][-1][1] == s["n_selected"] == len(data[channel]["weight"])
        ids = data[channel]["event_id"]
        assert len(np.unique(ids, axis=0)) == len(ids)
        assert data[channel]["rmm"].shape == (len(ids), 529)
        assert np.isfinite(data[channel]["rmm"]).all()
    assert summary.channels["zmmjets"]["n_selected"] > 0.3 * 3000
    assert calls.counted(4 * len(CHANNELS)) and len(calls) == 4 * len(CHANNELS) + 1  # 0, then every chunk


def test_staged_rows_match_a_direct_recomputation(reference, sample):
    """Event ids point back to the input entries: recompute one event's MET and m_ll by hand."""
    cfg, _, data, _ = reference
    zmm = data["zmmjets"]
    file_index, entry = zmm["event_id"][0, 2], zmm["event_id"][0, 3]
    attrs = staging_attrs(cfg.store.staging)
    path = next(f["path"] for f in attrs["files"] if f["index"] == file_index)
    arrays = uproot.open(path)["mini"].arrays(["met_Et", "wgt", "eventNumber"], entry_start=entry, entry_stop=entry + 1)
    assert zmm["met"][0] == pytest.approx(float(arrays["met_Et"][0]))
    assert zmm["weight"][0] == pytest.approx(float(arrays["wgt"][0]))
    assert zmm["event_id"][0, 1] == int(arrays["eventNumber"][0])
    assert zmm["rmm"][0, 0] == pytest.approx(float(arrays["met_Et"][0]))


def test_staged_rmm_equals_the_dense_rmm_of_the_same_events(reference, sample):
    """The pieces store the RMM sparse; read back, it is the dense matrix of each selected event."""
    from megaset.pipeline.rmm import build_rmm
    from megaset.pipeline.schema import read_events
    from megaset.pipeline.selection import select

    cfg, _, data, _ = reference
    path = str(sample / "ttbar" / "ttbar_1.root")
    index = next(f["index"] for f in staging_attrs(cfg.store.staging)["files"] if f["path"] == path)
    mine = np.flatnonzero(data["ttbar"]["event_id"][:, 2] == index)
    mine = mine[np.argsort(data["ttbar"]["event_id"][mine, 3])]
    with uproot.open(path) as f:
        arrays = f["mini"].arrays(cfg.schema.branches(), how=dict)
    sel = select(read_events(arrays, cfg.schema, path), cfg.selection, path)
    expected = build_rmm([sel.objects[o.source] for o in cfg.rmm.objects], sel.aux["met"], sel.aux["met_phi"], cfg.rmm)
    np.testing.assert_array_equal(data["ttbar"]["event_id"][mine, 3], sel.entry)
    np.testing.assert_array_equal(data["ttbar"]["rmm"][mine], expected)


@pytest.mark.slow
def test_two_worker_processes_equal_single_process(reference, sample, tmp_path, cluster_client):
    _, _, expected, _ = reference
    cfg = make_config(sample, tmp_path)
    calls = Calls()
    ingest(cfg, cluster_client, progress=calls)
    # Counted as the workers finish chunks, through the events they log.
    assert calls.counted(4 * len(CHANNELS)) and len(calls) > 2
    got = staged(cfg.store.staging)
    assert got.keys() == expected.keys()
    for channel in expected:
        for column, values in expected[channel].items():
            np.testing.assert_array_equal(got[channel][column], values, err_msg=f"{channel}/{column}")


@pytest.mark.slow
def test_worker_killed_while_writing_a_piece_leaves_every_event_once(reference, sample, tmp_path):
    """The worker writing one ttbar piece is killed by pid with the piece's arrays written but
    not its complete mark; the chunk is redone and the staged events equal a clean run's."""
    from distributed import Client, LocalCluster
    from faults import worker_killed_at

    _, clean, expected, _ = reference
    cfg = make_config(sample, tmp_path)

    def completing_a_ttbar_piece(path, value) -> bool:
        # write_piece stores the group's metadata, the complete mark in it, last, after the arrays.
        if not str(path).endswith("zarr.json"):
            return False
        attrs = json.loads(value.to_bytes()).get("attributes", {})
        return attrs.get("complete") is True and attrs.get("filename", "").endswith("ttbar_1.root") \
            and attrs.get("entrystart", 0) > 0

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client, \
            worker_killed_at(client, "zarr.storage:StorePath.set", completing_a_ttbar_piece,
                             tmp_path / "killed"):
        summary = ingest(cfg, client)
    got = staged(cfg.store.staging)
    assert got.keys() == expected.keys()
    for channel in expected:
        assert summary.channels[channel]["n_selected"] == clean.channels[channel]["n_selected"]
        assert summary.channels[channel]["chunks"] == 4
        for column in ("event_id", "rmm", "weight"):
            np.testing.assert_array_equal(got[channel][column], expected[channel][column],
                                          err_msg=f"{channel}/{column}")


@pytest.mark.slow
def test_interrupted_ingest_rerun_holds_every_event_once(reference, sample, tmp_path):
    _, _, expected, _ = reference
    cfg = make_config(sample, tmp_path)
    cfg = cfg.replace(inputs={"chunksize": 300}, cluster={"workers": 1})
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from megaset.cli import main; main()", "ingest", "-c", str(config_file)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                done = sum(len(p) for p in list_pieces(cfg.store.staging).values())
            except Exception:  # noqa: BLE001 - the staging area is being written: not listable yet
                done = 0
            if done >= 3:
                break
            assert proc.poll() is None, "ingest finished before it could be interrupted"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with pytest.raises(Exception, match="incomplete: an ingest was interrupted"):
        staging_attrs(cfg.store.staging)

    summary = ingest(cfg)
    assert sum(c["resumed"] for c in summary.channels.values()) >= 3
    got = staged(cfg.store.staging)
    for channel in expected:
        np.testing.assert_array_equal(got[channel]["event_id"], expected[channel]["event_id"])
        np.testing.assert_array_equal(got[channel]["rmm"], expected[channel]["rmm"])


def test_rerun_with_other_settings_refuses_to_reuse_staging(reference):
    cfg, _, _, _ = reference
    with pytest.raises(StoreError, match=r"was written from other inputs or settings.*delete it"):
        ingest(cfg.replace(selection={"mll_min": 80.0}))


def test_corrupt_file_fails_or_is_skipped(sample, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    corrupt = bad_dir / "corrupt.root"
    corrupt.write_bytes(b"root" + os.urandom(2000))
    channels = {"zmmjets": {"files": [str(sample / "zmmjets" / "*.root"), str(corrupt)]}}
    cfg = Config.model_validate({"inputs": {"channels": channels}, "store": {"url": str(tmp_path / "s.zarr")}})
    with pytest.raises(InputFileError, match=r"corrupt\.root: cannot be read as a ROOT file.*on_bad_file: skip"):
        ingest(cfg)

    cfg = cfg.replace(inputs={"on_bad_file": "skip"})
    summary = ingest(cfg)
    assert [s["file"] for s in summary.skipped] == [str(corrupt)]
    assert summary.channels["zmmjets"]["n_read"] == 3000
    assert staging_attrs(cfg.store.staging)["skipped"][0]["file"] == str(corrupt)


def test_copied_file_in_one_channel_is_refused(sample, tmp_path):
    """A copy keeps the ROOT file's UUID, which keys the staging pieces: ingesting both would
    let one file's pieces replace the other's."""
    import shutil

    original = sample / "ttbar" / "ttbar_0.root"
    copy = shutil.copy(original, tmp_path / "ttbar_copy.root")
    cfg = Config.model_validate({
        "inputs": {"channels": {"ttbar": {"files": [str(original), str(copy)]}}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    with pytest.raises(InputFileError, match=r"ttbar_copy\.root: is a copy of .*ttbar_0\.root.*list each file once"):
        ingest(cfg)


def test_one_file_under_two_channels_is_refused_naming_both(sample, tmp_path):
    """Listed under two channels, a file's events would be stored twice under two labels; the
    same file by path is refused before any file is opened, a copy by its ROOT file UUID."""
    import shutil

    from megaset.errors import ConfigError

    original = sample / "ttbar" / "ttbar_0.root"
    both = Config.model_validate({
        "inputs": {"channels": {"ttbar": {"files": [str(original)]},
                                "zmmjets": {"files": [str(sample / "*" / "ttbar_0.root")]}}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    with pytest.raises(ConfigError, match=r"ttbar_0\.root is listed under two channels, inputs\.channels\.ttbar"
                                          r"\.files and inputs\.channels\.zmmjets\.files; list each file under one"):
        ingest(both)
    copy = shutil.copy(original, tmp_path / "ttbar_copy.root")
    copied = both.replace(inputs={"channels": {"ttbar": {"files": [str(original)]},
                                               "zmmjets": {"files": [str(copy)]}}})
    with pytest.raises(InputFileError, match=r"ttbar_copy\.root: is a copy of .*ttbar_0\.root .*listed under "
                                             r"channel 'ttbar' while this one is under 'zmmjets'"):
        ingest(copied)
    assert not Path(both.store.staging).exists()


def test_missing_branch_names_branch_and_file(tmp_path):
    branches = generate("zmmjets", 200, seed=3)
    del branches["lepD0Sig"]
    path = tmp_path / "nod0.root"
    write_ntuple(path, branches, "mini")
    cfg = Config.model_validate({
        "inputs": {"channels": {"zmmjets": {"files": [str(path)]}}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    with pytest.raises(InputFileError, match=r"nod0\.root.*lepD0Sig"):
        ingest(cfg)


def test_missing_branch_is_skipped_with_the_branch_named(sample, tmp_path):
    """Found by the processor (files not normalised to a cross-section are checked whole only
    when their tree is read for a chunk): skipped, listed, left out of the staged files."""
    branches = generate("zmmjets", 200, seed=3)
    del branches["lepD0Sig"]
    path = tmp_path / "nod0.root"
    write_ntuple(path, branches, "mini")
    channels = {"zmmjets": {"files": [str(sample / "zmmjets" / "*.root"), str(path)]}}
    cfg = Config.model_validate({"inputs": {"channels": channels, "on_bad_file": "skip"},
                                 "store": {"url": str(tmp_path / "s.zarr")}})
    summary = ingest(cfg)
    assert [s["file"] for s in summary.skipped] == [str(path)]
    assert "lepD0Sig" in summary.skipped[0]["reason"]
    assert summary.channels["zmmjets"]["n_read"] == 3000 and summary.files == 2
    attrs = staging_attrs(cfg.store.staging)
    assert str(path) not in {f["path"] for f in attrs["files"]} and attrs["skipped"][0]["file"] == str(path)


def test_nan_values_are_counted_and_dropped_or_fatal(tmp_path):
    branches = generate("zmmjets", 400, seed=4)
    met = np.asarray(branches["met_Et"], dtype=np.float32).copy()
    met[[5, 17, 230]] = np.nan
    branches["met_Et"] = met
    path = tmp_path / "nan.root"
    write_ntuple(path, branches, "mini")
    cfg = Config.model_validate({
        "inputs": {"channels": {"zmmjets": {"files": [str(path)]}}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    summary = ingest(cfg)
    cutflow = {step: raw for step, raw, _ in summary.channels["zmmjets"]["cutflow"]}
    assert cutflow["all"] - cutflow["finite"] == 3
    entries = staged(cfg.store.staging)["zmmjets"]["event_id"][:, 3]
    assert not set(entries) & {5, 17, 230}

    with pytest.raises(NonFiniteInputError, match=r"nan\.root.*met_Et"):
        ingest(cfg.replace(selection={"on_nonfinite": "fail"}, store={"url": str(tmp_path / "fail.zarr")}))


def test_cross_section_normalises_weights(sample, tmp_path):
    channels = {"ttbar": {"files": [str(sample / "ttbar" / "*.root")], "xsec_pb": 2.0}}
    cfg = Config.model_validate({
        "inputs": {"channels": channels, "lumi_ifb": 10.0},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    ingest(cfg)
    files = sorted((sample / "ttbar").glob("*.root"))
    wgt = np.concatenate([uproot.open(f)["mini"]["wgt"].array(library="np") for f in files]).astype("f8")
    scale = 2.0 * 1000.0 * 10.0 / wgt.sum()
    data = staged(cfg.store.staging)["ttbar"]
    index = {str(f): i for i, f in enumerate(files)}
    attrs = staging_attrs(cfg.store.staging)
    offsets = {f["index"]: 1500 * index[f["path"]] for f in attrs["files"]}
    rows = np.array([offsets[i] + e for i, e in data["event_id"][:, 2:]])
    np.testing.assert_allclose(data["weight"], (wgt[rows] * scale).astype(np.float32), rtol=1e-6)


def test_absurd_weights_are_counted_per_file_or_fatal(tmp_path):
    """Finite weights of 1e30 or 3e38 pass every non-finite check; they are counted against
    inputs.weights.max_abs, and weights orders of magnitude above their channel's median as
    outliers, per file, reported in one line; with on_absurd: fail the ingest stops."""
    from megaset.pipeline.schema import read_events
    from megaset.pipeline.selection import select

    branches = generate("ttbar", 1500, seed=5)
    cfg = Config.model_validate({
        "inputs": {"chunksize": 1000, "channels": {"ttbar": {"files": [str(tmp_path / "bad.root"),
                                                                         str(tmp_path / "good.root")]}},
                   "weights": {"max_abs": 1e15}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    # Planted in events the selection keeps, found without the ingest.
    kept = select(read_events({k: branches[k] for k in cfg.schema.branches()}, cfg.schema, "x"),
                  cfg.selection, "x").entry
    median = float(np.median(np.abs(branches["wgt"][kept])))
    branches["wgt"][kept[[10, 20]]] = [1e30, -3e38]
    branches["wgt"][kept[30]] = median * 10**6.5  # within the bound, 6.5 orders above the median
    bad = tmp_path / "bad.root"
    write_ntuple(bad, branches, "mini")
    write_ntuple(tmp_path / "good.root", generate("ttbar", 1500, seed=6, first_event=1500), "mini")
    expected = {"beyond_bound": 2, "outliers": 1}
    lines: list[str] = []
    summary = ingest(cfg, log=lines.append)
    verdict = summary.channels["ttbar"]["absurd_weights"]
    assert verdict["files"] == {str(bad): expected}
    assert abs(np.log10(verdict["median_abs"]) - np.log10(median)) <= 0.25
    assert staging_attrs(cfg.store.staging)["summary"]["ttbar"]["absurd_weights"] == verdict
    [line] = [line for line in lines if "absurd" in line]
    assert line.startswith(f"absurd event weights (weight branch 'wgt', after the cross-section scale): {bad} "
                           f"(channel 'ttbar'): {expected['beyond_bound']} beyond inputs.weights.max_abs (1e+15)")
    assert line.endswith("kept (inputs.weights.on_absurd: warn)")

    strict = cfg.replace(inputs={"weights": {"on_absurd": "fail"}}, store={"url": str(tmp_path / "t.zarr")})
    with pytest.raises(InputFileError, match=r"bad\.root: absurd event weights .*orders of magnitude above the "
                                             r"channel's median.*set inputs\.weights\.on_absurd: warn"):
        ingest(strict)
    with pytest.raises(StoreError, match=r"staging area .* is incomplete: an ingest was interrupted"):
        staging_attrs(strict.store.staging)


def test_staging_keeps_no_credential_of_the_config(sample, tmp_path):
    from faults import CLUSTER_WITH_SECRETS, SECRET

    cfg = make_config(sample, tmp_path).replace(cluster=CLUSTER_WITH_SECRETS,
                                                 inputs={"channels": {"ttbar": {"files": [str(sample / "ttbar" /
                                                                                              "ttbar_0.root")]}}})
    ingest(cfg)
    saved = json.dumps(staging_attrs(cfg.store.staging))
    assert SECRET not in saved and '"AWS_SECRET_ACCESS_KEY": "<redacted>"' in saved


@pytest.mark.slow
def test_read_only_staging_stops_the_ingest_with_one_line(sample, tmp_path):
    from faults import MEGASET, UNHANDLED, confined, read_only

    disk = tmp_path / "disk"
    disk.mkdir()
    cfg = make_config(sample, disk).replace(
        inputs={"channels": {"ttbar": {"files": [str(sample / "ttbar" / "ttbar_0.root")]}}}, cluster={"workers": 1})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.resolved()))
    result = confined(read_only(disk), f"{MEGASET} ingest -c {config}")
    assert result.returncode not in (0, UNHANDLED), result.stderr
    assert (f"error: cannot write to staging area '{cfg.store.staging}': read-only file system "
            f"(at {cfg.store.staging}.lock); set "
            f"store.staging_url to a location on a writable filesystem, then rerun `megaset ingest -c {config}`"
            ) in result.stderr
    assert not any(disk.iterdir())


def _damaged_inputs(sample, tmp_path) -> dict[str, Path]:
    """A copy of a ttbar file cut to its first 60 % of bytes, and one with 4 kB of random bytes
    in its middle (inside the baskets: the file check passes, a chunk read fails)."""
    data = (sample / "ttbar" / "ttbar_1.root").read_bytes()
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(data[:int(len(data) * 0.6)])
    corrupt = bytearray(data)
    middle = len(data) // 3
    corrupt[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    corrupted = tmp_path / "corrupted.root"
    corrupted.write_bytes(bytes(corrupt))
    return {"truncated": truncated, "corrupted": corrupted}


@pytest.mark.parametrize(("kind", "reason"), [
    ("truncated", r"is truncated: \d+ bytes where its ROOT header says \d+; copy the file again"),
    ("corrupted", r"entries \d+-\d+ of tree 'mini' cannot be read, the file is damaged or truncated \(error: Error -3 "
                  r"while decompressing data"),
])
def test_damaged_input_is_refused_or_skipped_in_one_line(sample, tmp_path, kind, reason):
    bad = _damaged_inputs(sample, tmp_path)[kind]
    good = sample / "ttbar" / "ttbar_0.root"
    cfg = Config.model_validate({
        "inputs": {"chunksize": 1000, "channels": {"ttbar": {"files": [str(good), str(bad)]}}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    with pytest.raises(InputFileError, match=rf"^{bad}: {reason}.*inputs\.on_bad_file: skip") as info:
        ingest(cfg)
    assert "\n" not in str(info.value)
    lines: list[str] = []
    summary = ingest(cfg.replace(inputs={"on_bad_file": "skip"}, store={"url": str(tmp_path / "t.zarr")}),
                     log=lines.append)
    [skipped] = summary.skipped
    assert skipped["file"] == str(bad) and re.match(reason, skipped["reason"])
    assert [line for line in lines if line.startswith("skipping")] == [f"skipping {bad}: {skipped['reason']}"]
    assert summary.channels["ttbar"]["n_read"] == 1500 and summary.files == 1


@pytest.mark.slow
def test_damaged_input_on_a_cluster_is_skipped_or_refused_without_retries(sample, tmp_path, cluster_client):
    bad = _damaged_inputs(sample, tmp_path)["corrupted"]
    cfg = Config.model_validate({
        "inputs": {"chunksize": 1000, "on_bad_file": "skip",
                   "channels": {"ttbar": {"files": [str(sample / "ttbar" / "ttbar_0.root"), str(bad)]}}},
        "store": {"url": str(tmp_path / "s.zarr")},
    })
    summary = ingest(cfg, cluster_client)
    assert [s["file"] for s in summary.skipped] == [str(bad)]
    assert "cannot be read, the file is damaged or truncated" in summary.skipped[0]["reason"]
    with pytest.raises(InputFileError, match=rf"^{bad}: entries \d+-\d+ of tree 'mini' cannot be read"):
        ingest(cfg.replace(inputs={"on_bad_file": "fail"}, store={"url": str(tmp_path / "t.zarr")}), cluster_client)
