from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from store_factory import AUX_FLOAT, AUX_INT, CHANNELS, N_FEATURES, event_keys, make_config, make_staging

from megaset.errors import ConfigError, IncompleteStoreError, StoreError
from megaset.storage.mix import mix
from megaset.storage.plan import split_counts
from megaset.storage.quotas import chunk_quotas
from megaset.storage.store import open_store
from megaset.storage.verify import verify

COLUMNS = ("rmm", "weight", "channel", "event_id", *AUX_FLOAT, *AUX_INT)


def read_group(url: str, name: str) -> dict[str, np.ndarray]:
    group = open_store(url).group(name)
    return {c: zarr.open_array(f"{url}/{name}/{c}", mode="r")[:] for c in group.columns()}


def read_all(url: str) -> dict[str, dict[str, np.ndarray]]:
    return {name: read_group(url, name) for name in open_store(url).group_names()}


def assert_same_store(a: str, b: str) -> None:
    left, right = read_all(a), read_all(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].keys() == right[name].keys()
        for column in left[name]:
            np.testing.assert_array_equal(left[name][column], right[name][column], err_msg=f"{name}/{column}")
    attrs_a, attrs_b = open_store(a).attrs, open_store(b).attrs
    for key in ("scaler", "channels", "cutflow", "inputs", "contamination"):
        assert attrs_a[key] == attrs_b[key], key


def test_every_staged_event_lands_exactly_once_with_its_row(mixed_store):
    cfg, staged, _ = mixed_store
    groups = read_all(cfg.store.url)
    stored = {k: np.concatenate([g[k] for g in groups.values()]) for k in COLUMNS}
    truth = {k: np.concatenate([staged[c][k] for c in staged]) for k in COLUMNS}
    keys, truth_keys = event_keys(stored["event_id"]), event_keys(truth["event_id"])
    assert len(np.unique(keys)) == len(keys) == len(truth_keys)
    assert set(keys.tolist()) == set(truth_keys.tolist())
    # Whole rows travel together: every column of a stored row is the staged row with its id.
    order, truth_order = np.argsort(keys), np.argsort(truth_keys)
    for name in COLUMNS:
        np.testing.assert_array_equal(stored[name][order], truth[name][truth_order], err_msg=name)


def test_chunks_hold_the_group_mixture(mixed_store):
    cfg, staged, _ = mixed_store
    store = open_store(cfg.store.url)
    for name in ("train", "val", "test"):
        group = store.group(name)
        counts = [split_counts(len(staged[c]["weight"]), (0.6, 0.2, 0.2))[("train", "val", "test").index(name)]
                  for c in ("zjets", "ttbar", "diboson")]
        assert group.attrs["channel_ids"] == [0, 1, 2] and group.attrs["counts"] == counts
        quotas = chunk_quotas(counts, 256)
        assert group.n_chunks == len(quotas) > 1
        for i, values in group.iter_chunks(("channel",)):
            found = [int((values["channel"] == c).sum()) for c in (0, 1, 2)]
            assert found == quotas[i].tolist()
            # By hand for the full chunks: each channel within one event of its share.
            if i < group.n_chunks - 1:
                share = 256 * np.array(counts) / sum(counts)
                assert (np.abs(np.array(found) - share) < 1).all()


def test_rows_are_shuffled_inside_chunks(mixed_store):
    cfg, _, _ = mixed_store
    channel = open_store(cfg.store.url).group("train").read_chunk(0, ("channel",))["channel"]
    # Channels interleave (not sorted in blocks) ...
    assert (np.diff(channel) != 0).sum() > 20
    # ... and a channel's events are not in staging order.
    ids = open_store(cfg.store.url).group("train").read_chunk(0, ("event_id",))["event_id"]
    entries = ids[channel == 0, 3]
    assert not (np.diff(entries) > 0).all()


def test_scaler_is_the_train_statistics(mixed_store):
    cfg, _, _ = mixed_store
    store = open_store(cfg.store.url)
    rmm = read_group(cfg.store.url, "train")["rmm"].astype(np.float64)
    scaler = store.scaler
    assert scaler["min"].tolist() == rmm.min(axis=0).tolist()
    assert scaler["max"].tolist() == rmm.max(axis=0).tolist()
    np.testing.assert_allclose(scaler["mean"], rmm.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler["std"], rmm.std(axis=0), rtol=1e-10)
    assert store.attrs["scaler"]["n"] == len(rmm)


def test_metadata(mixed_store):
    cfg, staged, summary = mixed_store
    store = open_store(cfg.store.url)
    attrs = store.attrs
    assert attrs["complete"] is True and attrs["schema_version"] == 1
    assert store.feature_names == [f"f{i}" for i in range(N_FEATURES)]
    assert attrs["config"]["store"]["chunk_len"] == 256 and attrs["code_version"]
    assert [f["path"] for f in attrs["inputs"]][:2] == ["/data/zjets_0.root", "/data/zjets_1.root"]
    assert attrs["cutflow"]["ttbar"] == [["all", 1, 1.0]]
    assert store.group_names() == ["train", "val", "test", "signal/susy", "data"]
    table = {c["name"]: c for c in store.channels}
    assert table["susy"]["is_signal"] and not table["susy"]["is_data"] and table["data15"]["is_data"]
    assert table["susy"]["events"] == {"signal/susy": 740}
    assert table["data15"]["events"] == {"data": 333}
    groups = read_all(cfg.store.url)
    for c in store.channels:
        for group, n in c["events"].items():
            mask = groups[group]["channel"] == c["id"]
            assert n == mask.sum()
            expected = groups[group]["weight"][mask].astype(np.float64).sum()
            assert c["sum_weights"][group] == pytest.approx(expected, rel=1e-12)
        assert sum(c["events"].values()) == len(staged[c["name"]]["weight"])
    assert summary["groups"]["train"]["channels"]["diboson"] == split_counts(90, (0.6, 0.2, 0.2))[0]
    assert summary["resumed"] == 0 and summary["chunks"] == sum(g["n_chunks"] for g in summary["groups"].values())
    stored = sum(p.stat().st_size for p in Path(cfg.store.url).rglob("*") if p.is_file())
    assert summary["mb_written"] > 0 and 0 < stored / 1e6 < summary["mb_written"]
    assert verify(cfg.store.url) == []


def test_dask_cluster_mix_is_identical_to_in_process(cluster_client, mixed_store, tmp_path):
    cfg, _, _ = mixed_store
    on_cluster = cfg.replace(store={"url": str(tmp_path / "cluster.zarr")})
    seen = []
    summary = mix(on_cluster, cluster_client, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (summary["chunks"], summary["chunks"]) and len(seen) == summary["chunks"] + 1
    assert_same_store(on_cluster.store.url, cfg.store.url)


@pytest.mark.slow
def test_worker_killed_during_mix_is_retried_to_the_same_store(mixed_store, tmp_path):
    """The worker building train chunk 3 is killed by pid with the chunk's columns, weight sums
    and scaler partials written but not its done mark: the chunk is rebuilt, every event once."""
    from distributed import Client, LocalCluster
    from faults import worker_killed_at

    def marking_train_chunk_3_done(array, selection, value, *args, **kwargs) -> bool:
        return str(array.store_path).endswith("_mix/train/done") and selection == 3

    cfg, _, _ = mixed_store
    retried = cfg.replace(store={"url": str(tmp_path / "retried.zarr")})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client, \
            worker_killed_at(client, "zarr.core.array:AsyncArray.setitem", marking_train_chunk_3_done,
                             tmp_path / "killed"):
        mix(retried, client)
    assert_same_store(retried.store.url, cfg.store.url)
    assert verify(retried.store.url) == []


def test_resume_after_interruption_matches_uninterrupted(mixed_store, tmp_path):
    from faults import mix_stopped_after

    cfg, _, _ = mixed_store
    resumed = cfg.replace(store={"url": str(tmp_path / "resumed.zarr")})
    mix_stopped_after(resumed, 5)
    with pytest.raises(IncompleteStoreError, match="run `megaset mix` to finish it"):
        open_store(resumed.store.url)
    # A chunk whose writer died between its data and its done mark: garbage, no mark.
    zarr.open_array(f"{resumed.store.url}/_mix/train/done", mode="r+")[4] = False
    zarr.open_array(f"{resumed.store.url}/train/rmm", mode="r+")[4 * 256:5 * 256] = np.nan
    summary = mix(resumed, None)
    assert summary["resumed"] == 4
    assert_same_store(resumed.store.url, cfg.store.url)
    # A rerun on a complete store has nothing to do.
    assert mix(resumed, None)["resumed"] == summary["chunks"]


def _cli_config(cfg, tmp_path, url: Path) -> Path:
    """A config file for the command line: ``cfg`` with its store at ``url``, one worker."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.replace(store={"url": str(url)}, cluster={"workers": 1}).resolved()))
    return path


@pytest.mark.slow
def test_full_disk_stops_the_mix_with_a_clear_message_and_a_resumable_store(mixed_store, tmp_path):
    """The filesystem of the store path fills up during `megaset mix`: one clear message, the
    complete store beside it untouched, the new one incomplete; a rerun with room finishes it."""
    from faults import MEGASET, assert_refused, confined, small_disk, snapshot

    cfg, _, _ = mixed_store
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    config = _cli_config(cfg, tmp_path, disk / "new.zarr")
    # The new store needs about 1.6 MiB on tmpfs: room for its layout and a few chunks.
    setup = small_disk(disk, {Path(cfg.store.url): "old.zarr"}, room_kib=900)
    result = confined(setup, f"{MEGASET} mix -c {config}", keep=(disk, saved))
    assert_refused(result, disk / "new.zarr", "no space left on device", "free space on its filesystem", "megaset mix")
    assert snapshot(saved / "old.zarr") == snapshot(Path(cfg.store.url))
    new = str(saved / "new.zarr")
    with pytest.raises(IncompleteStoreError, match="run `megaset mix` to finish it"):
        open_store(new)
    summary = mix(cfg.replace(store={"url": new}), None)
    assert summary["resumed"] > 0
    assert_same_store(new, cfg.store.url)
    assert verify(new) == []


@pytest.mark.slow
def test_read_only_store_path_stops_the_mix_with_a_clear_message(mixed_store, tmp_path):
    from faults import MEGASET, assert_refused, confined, read_only, snapshot

    cfg, _, _ = mixed_store
    disk = tmp_path / "disk"
    shutil.copytree(cfg.store.url, disk / "old.zarr")
    before = snapshot(disk)
    config = _cli_config(cfg, tmp_path, disk / "new.zarr")
    result = confined(read_only(disk), f"{MEGASET} mix -c {config}")
    assert_refused(result, disk / "new.zarr", "read-only file system", "set store.url to a location on a writable",
                   f"megaset mix -c {config}")
    # The lock beside the store is the first thing the command writes.
    assert (f"cannot write to store '{disk / 'new.zarr'}': read-only file system (at {disk / 'new.zarr.lock'}); "
            "set store.url") in result.stderr
    assert snapshot(disk) == before


def test_contamination_moves_signal_into_train(tmp_path):
    cfg = make_config(tmp_path, contamination={"signal": "susy", "fraction": 0.05})
    staged = make_staging(cfg.store.staging)
    mix(cfg, None)
    store = open_store(cfg.store.url)
    train = store.group("train")
    n_background = sum(split_counts(len(staged[c]["weight"]), (0.6, 0.2, 0.2))[0]
                       for c in ("zjets", "ttbar", "diboson"))
    injected = round(0.05 * n_background)
    assert train.channel_counts[3] == injected
    assert train.n_events == n_background + injected
    assert store.group("signal/susy").n_events == 740 - injected
    assert store.attrs["contamination"]["n_events"] == injected
    # Every chunk carries the signal in its share; ids stay unique over all groups.
    quotas = chunk_quotas(train.attrs["counts"], 256)
    for i, values in train.iter_chunks(("channel",)):
        assert int((values["channel"] == 3).sum()) == quotas[i][-1]
    rows, rest = read_group(cfg.store.url, "train"), read_group(cfg.store.url, "signal/susy")
    susy = np.concatenate([rows["event_id"][rows["channel"] == 3], rest["event_id"]])
    assert sorted(event_keys(susy).tolist()) == sorted(event_keys(staged["susy"]["event_id"]).tolist())
    assert verify(cfg.store.url) == []


def test_pieces_of_skipped_files_are_left_out(tmp_path):
    cfg = make_config(tmp_path)
    staged = make_staging(cfg.store.staging, {"zjets": [300, 200], "ttbar": [100]}, skipped=("/data/zjets_1.root",))
    summary = mix(cfg, None)
    zjets = sum(g["channels"].get("zjets", 0) for g in summary["groups"].values())
    assert zjets == 300
    ids = np.concatenate([g["event_id"] for g in read_all(cfg.store.url).values()])
    assert not np.isin(event_keys(ids), event_keys(staged["zjets"]["event_id"][300:])).any()
    assert open_store(cfg.store.url).attrs["skipped"] == [{"file": "/data/zjets_1.root", "reason": "unreadable basket"}]


def test_unfinished_staging_is_refused(tmp_path):
    cfg = make_config(tmp_path)
    make_staging(cfg.store.staging, {"zjets": [30]}, finish=False)
    with pytest.raises(IncompleteStoreError, match=r"ingest was interrupted\. Run `megaset ingest` again"):
        mix(cfg, None)


def test_empty_staging_is_refused(tmp_path):
    cfg = make_config(tmp_path)
    make_staging(cfg.store.staging, {"zjets": [0]})
    with pytest.raises(StoreError, match="holds no selected events: nothing to mix"):
        mix(cfg, None)


def test_store_of_other_settings_is_not_overwritten(mixed_store, tmp_path):
    cfg, _, _ = mixed_store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cfg.store.url, copy)
    other = cfg.replace(store={"url": str(copy), "seed": 7})
    with pytest.raises(StoreError, match=r"with other store settings.*delete it or set store\.url"):
        mix(other, None)
    foreign = tmp_path / "foreign.zarr"
    zarr.create_group(store=str(foreign))
    with pytest.raises(StoreError, match="not a megaset store"):
        mix(cfg.replace(store={"url": str(foreign)}), None)


def test_contamination_larger_than_the_signal_is_refused(tmp_path):
    cfg = make_config(tmp_path, contamination={"signal": "susy", "fraction": 1.0})
    make_staging(cfg.store.staging)
    with pytest.raises(ConfigError, match=r"asks for 1,860 susy events in train \(1,860 background events\), "
                                          r"but only 740 are staged"):
        mix(cfg, None)


def test_signal_only_staging_gives_empty_background_groups(tmp_path):
    cfg = make_config(tmp_path)
    make_staging(cfg.store.staging, {"susy": [300]}, channels=[c for c in CHANNELS if c["signal"]])
    summary = mix(cfg, None)
    assert {name: g["n_events"] for name, g in summary["groups"].items()} == {
        "train": 0, "val": 0, "test": 0, "signal/susy": 300}
    store = open_store(cfg.store.url)
    assert store.group("train").n_chunks == 0
    with pytest.raises(StoreError, match="has no scaler statistics: its train group is empty"):
        _ = store.scaler
    assert verify(cfg.store.url) == []


def test_staging_piece_shrunk_after_planning_stops_the_mix(tmp_path, monkeypatch):
    """A piece rewritten shorter between the plan and the reads is named, with the fix."""
    from scipy.sparse import csr_array

    import megaset.storage.mix as mix_module
    from megaset.config import CompressorConfig
    from megaset.storage.staging import list_pieces, read_piece, write_piece

    cfg = make_config(tmp_path)
    make_staging(cfg.store.staging)
    staging, planned = cfg.store.staging, mix_module.make_plan

    def plan_then_shrink(*args, **kwargs):
        plan = planned(*args, **kwargs)
        key, attrs = max(list_pieces(staging)["zjets"], key=lambda piece: piece[1]["n_rows"])
        columns = {name: values[:10] for name, values in read_piece(staging, "zjets", key).items()}
        write_piece(staging, "zjets", key, {**columns, "rmm": csr_array(columns["rmm"])}, attrs, CompressorConfig())
        return plan

    monkeypatch.setattr(mix_module, "make_plan", plan_then_shrink)
    with pytest.raises(StoreError, match=r"staging piece .*/zjets/uuid\d+-\S+ ends before row \d+: the staging "
                                         r"area changed since the mix was planned; rerun `megaset mix`"):
        mix(cfg, None)


def test_damaged_staging_chunk_stops_the_mix_naming_it(tmp_path):
    """A flipped byte in a staging block fails its crc32c at the mix's read: one error naming
    the chunk file and the fix, not a decompressor's complaint or wrong events."""
    from megaset.errors import DamagedChunkError

    cfg = make_config(tmp_path)
    make_staging(cfg.store.staging, {"zjets": [300], "ttbar": [100]})
    [piece] = [p for p in (Path(cfg.store.staging) / "ttbar").iterdir() if p.is_dir()]
    chunk = piece / "packed" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(DamagedChunkError, match=rf"staging area '{cfg.store.staging}': damaged chunk file://{chunk}: "
                                                r"the bytes stored no longer match their crc32c checksum .*"
                                                r"run `megaset ingest` into a new store\.staging_url"):
        mix(cfg, None)


def test_store_keeps_no_credential_of_the_config(tmp_path):
    import json

    from faults import CLUSTER_WITH_SECRETS, SECRET

    cfg = make_config(tmp_path).replace(cluster=CLUSTER_WITH_SECRETS)
    make_staging(cfg.store.staging, {"zjets": [300], "ttbar": [100]})
    mix(cfg, None)
    saved = json.dumps(open_store(cfg.store.url).attrs)
    assert SECRET not in saved and '"AWS_SECRET_ACCESS_KEY": "<redacted>"' in saved
