from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import zarr

from megaset.errors import IncompleteStoreError, StoreError, StoreKeyError
from megaset.storage.store import open_store


@pytest.fixture
def store_copy(mixed_store, tmp_path):
    """A private copy of the mixed store, for tests that write to it."""
    cfg, _, _ = mixed_store
    url = str(tmp_path / "store.zarr")
    shutil.copytree(cfg.store.url, url)
    return url


def test_missing_store_names_the_url(tmp_path):
    url = str(tmp_path / "nowhere.zarr")
    with pytest.raises(StoreError, match=f"no megaset store at '{url}'"):
        open_store(url)


def test_foreign_zarr_group_is_refused(tmp_path):
    zarr.create_group(store=str(tmp_path / "other.zarr"))
    with pytest.raises(StoreError, match="is a Zarr group but not a megaset store"):
        open_store(str(tmp_path / "other.zarr"))


def test_incomplete_store_is_refused(store_copy):
    root = zarr.open_group(store_copy, mode="r+")
    root.attrs["complete"] = False
    with pytest.raises(IncompleteStoreError, match=r"is incomplete.*run `megaset mix` to finish it"):
        open_store(store_copy)
    assert open_store(store_copy, require_complete=False).group_names()[0] == "train"


def test_unknown_group_lists_the_groups(mixed_store):
    store = open_store(mixed_store[0].store.url)
    with pytest.raises(StoreKeyError,
                       match="has no group 'signal/nope'; its groups are: train, val, test, signal/susy, data"):
        store.group("signal/nope")
    with pytest.raises(KeyError):
        store.group("training")


def test_store_metadata_accessors(mixed_store):
    cfg, _, _ = mixed_store
    store = open_store(cfg.store.url)
    assert len(store.feature_names) == 9
    assert set(store.scaler) == {"min", "max", "mean", "std"}
    assert store.scaler["mean"].shape == (9,) and store.scaler["mean"].dtype == np.float64
    assert [c["name"] for c in store.channels] == ["zjets", "ttbar", "diboson", "susy", "data15"]


def test_chunks_and_slices(mixed_store):
    cfg, _, _ = mixed_store
    train = open_store(cfg.store.url).group("train")
    assert train.n_events == 1860 and train.chunk_len == 256 and train.n_chunks == 8
    assert train.chunk_slice(0) == slice(0, 256)
    assert train.chunk_slice(7) == slice(1792, 1860)
    with pytest.raises(IndexError, match=r"chunk 8 is out of range for group 'train'.*8 chunks"):
        train.chunk_slice(8)
    last = train.read_chunk(7, ("rmm", "weight", "event_id"))
    assert last["rmm"].shape == (68, 9) and last["rmm"].dtype == np.float32
    assert last["event_id"].shape == (68, 4) and last["weight"].shape == (68,)
    assert set(train.columns()) >= {"rmm", "weight", "channel", "event_id", "met", "n_b_jets"}
    picked = list(train.iter_chunks(("channel",), indices=[5, 2]))
    assert [i for i, _ in picked] == [5, 2]
    whole = np.concatenate([v["channel"] for _, v in train.iter_chunks(("channel",))])
    assert len(whole) == 1860
    np.testing.assert_array_equal(picked[1][1]["channel"], whole[512:768])


def test_unknown_column_lists_the_columns(mixed_store):
    train = open_store(mixed_store[0].store.url).group("train")
    with pytest.raises(StoreKeyError,
                       match=r"group 'train' of .* has no column 'rmmm'; its columns are: channel, event_id"):
        train.read_chunk(0, ("rmmm",))


def test_score_column_round_trip(store_copy, monkeypatch):
    import megaset.storage.store as store_module

    # Columns added in chunks of 512 events: two of the group's 256-event chunks each.
    monkeypatch.setattr(store_module, "ADDED_CHUNK_EVENTS", 512)
    test = open_store(store_copy).group("test")
    test.create_column("score/ae-deep", "f4")
    test.create_column("score/blocks", "f4", shape_tail=(3,))
    assert "score/ae-deep" in test.columns() and "score/blocks" in test.columns()
    assert all(test.has_column(name) for name in test.columns())
    assert not any(test.has_column(name) for name in ("score", "score/ae-shallow", "rmmm"))
    assert (test.column_span("score/ae-deep"), test.column_span("weight"), test.column_span("rmm")) == (2, 1, 1)
    assert test.column_chunks("score/ae-deep") == [range(2), range(2, 3)]
    assert test.column_chunks("weight", range(1, 3)) == [range(1, 2), range(2, 3)]
    assert not test.chunk_written("score/ae-deep", 0)
    values = np.linspace(0, 1, 512, dtype=np.float32)
    test.write_chunks("score/ae-deep", range(2), values)
    test.write_chunks("score/blocks", range(2, 3), np.ones((108, 3)))
    assert test.chunk_written("score/ae-deep", 0) and test.chunk_written("score/ae-deep", 1)
    assert not test.chunk_written("score/ae-deep", 2)
    assert zarr.open_array(f"{store_copy}/test/score/ae-deep", mode="r").chunks == (512,)
    reread = open_store(store_copy).group("test")
    np.testing.assert_array_equal(reread.read_chunks(range(2), ("score/ae-deep",))["score/ae-deep"], values)
    # Unwritten chunks read as NaN, not as a plausible score of zero.
    assert np.isnan(reread.read_chunk(2, ("score/ae-deep",))["score/ae-deep"]).all()
    assert reread.read_chunk(2, ("score/blocks",))["score/blocks"].shape == (108, 3)
    # Creating it again keeps the written chunks (resumable scoring); overwrite starts over.
    reread.create_column("score/ae-deep", "f4")
    assert reread.chunk_written("score/ae-deep", 0)
    reread.create_column("score/ae-deep", "f4", overwrite=True)
    assert not reread.chunk_written("score/ae-deep", 0)


def test_added_columns_hold_whole_chunks_of_the_group(store_copy):
    test = open_store(store_copy).group("test")
    test.create_column("score/ae", "f4")
    # 16,384 events a chunk: 64 of the group's 256-event chunks, so its three chunks in one.
    assert test.column_info("score/ae")["chunks"] == (64 * test.chunk_len,)
    assert test.column_chunks("score/ae") == [range(3)]
    for cut in (range(1), range(1, 3)):
        with pytest.raises(ValueError, match=r"do not cover whole chunks of column 'score/ae' \(64 of the group's "
                                             r"chunks each\); start on a multiple of 64 and end on one or at the "
                                             r"group's end \(3\)"):
            test.write_chunks("score/ae", cut, np.zeros(test.chunk_slice(cut[-1]).stop - cut[0] * test.chunk_len))
    assert not test.chunk_written("score/ae", 0)


def test_all_zero_integer_chunk_counts_as_written(store_copy):
    test = open_store(store_copy).group("test")
    test.create_column("score/flag", "i1")
    test.write_chunks("score/flag", range(test.n_chunks), np.zeros(test.n_events, dtype=np.int8))
    assert test.chunk_written("score/flag", 1)


def test_column_errors(store_copy):
    test = open_store(store_copy).group("test")
    with pytest.raises(StoreError, match=r"column 'rmm' of group 'test'.*is written by `megaset mix`"):
        test.create_column("rmm", "f4")
    test.create_column("score/x", "f4")
    with pytest.raises(StoreError, match=r"exists as float32 \(620,\), not float64 \(620,\); pass overwrite=True"):
        test.create_column("score/x", "f8")
    with pytest.raises(ValueError, match=r"chunks 0..2 of test/score/x .* need shape \(620,\), got \(256,\)"):
        test.write_chunks("score/x", range(3), np.zeros(256))


def test_group_pickles_for_dask_tasks(store_copy):
    test = open_store(store_copy).group("test")
    test.read_chunk(0, ("weight",))
    clone = pickle.loads(pickle.dumps(test))
    np.testing.assert_array_equal(clone.read_chunk(1, ("weight",))["weight"], test.read_chunk(1, ("weight",))["weight"])


@pytest.mark.parametrize(("filename", "place"), [
    (2, ""),  # a file descriptor, not a place: said nothing ("read-only file system (at 2)")
    (None, ""),
    ("/data/s.zarr/", ""),  # the store itself
    ("/data/s.zarr/train/rmm", " (at /data/s.zarr/train/rmm)"),
])
def test_refused_write_names_the_store_cause_fix_and_a_real_place(filename, place):
    import errno

    from megaset.storage.backend import writing

    with pytest.raises(StoreError) as info, writing("/data/s.zarr", "megaset mix"):
        raise OSError(errno.EROFS, "Read-only file system", filename)
    assert str(info.value) == (f"cannot write to store '/data/s.zarr': read-only file system{place}; set store.url "
                               "to a location on a writable filesystem, then rerun `megaset mix`: finished chunks "
                               "are kept")


def _subgroups(group, prefix=""):
    for name, sub in group.groups():
        yield f"{prefix}{name}"
        yield from _subgroups(sub, f"{prefix}{name}/")


def test_xarray_opens_every_group_and_subgroup(store_copy):
    import xarray as xr
    store = open_store(store_copy)
    train = store.group("train")
    train.create_column("score/ae", np.float32)
    train.create_column("latent/ae", np.float32, (3,))
    everything = range(train.n_chunks)
    train.write_chunks("score/ae", everything, np.arange(train.n_events, dtype=np.float32))
    train.write_chunks("latent/ae", everything, np.ones((train.n_events, 3), np.float32))
    names = list(_subgroups(zarr.open_group(store_copy, mode="r")))
    assert {"train", "train/score", "train/latent", "signal/susy", "_mix/train"} <= set(names)
    for name in names:
        ds = xr.open_zarr(store_copy, group=name, consolidated=False)
        if name in store.group_names():
            group = store.group(name)
            assert ds.sizes["event"] == group.n_events
            np.testing.assert_array_equal(ds["rmm"].values, group.read_chunks(range(group.n_chunks), ["rmm"])["rmm"])
            assert ds["rmm"].dims == ("event", "feature")
    scores = xr.open_zarr(store_copy, group="train/score", consolidated=False)
    np.testing.assert_array_equal(scores["ae"].values, np.arange(train.n_events, dtype=np.float32))
    assert xr.open_zarr(store_copy, group="train/latent", consolidated=False)["ae"].dims == ("event", "ae_1")


def test_channel_codes_are_named_by_cf_flags(mixed_store):
    import xarray as xr
    cfg, _, _ = mixed_store
    store = open_store(cfg.store.url)
    names = {c["id"]: c["name"] for c in store.channels}
    for group in store.group_names():
        attrs = xr.open_zarr(cfg.store.url, group=group, consolidated=False)["channel"].attrs
        decoded = dict(zip(attrs["flag_values"], attrs["flag_meanings"].split(), strict=True))
        assert decoded == names


def test_a_store_without_dimension_names_still_reads_and_scores(store_copy):
    """Stores mixed before the arrays carried dimension names."""
    import json
    from pathlib import Path

    for meta in Path(store_copy).rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "array":
            doc.pop("dimension_names", None)
            doc.get("attributes", {}).pop("flag_values", None)
            meta.write_text(json.dumps(doc))
    group = open_store(store_copy).group("test")
    before = group.read_chunk(0, ("rmm", "channel"))
    group.create_column("score/ae", np.float32)
    group.write_chunks("score/ae", range(group.n_chunks), np.zeros(group.n_events, np.float32))
    assert group.read_chunk(0, ("score/ae",))["score/ae"].shape == before["channel"].shape
