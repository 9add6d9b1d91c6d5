"""The CSR form of the store's RMM column (``store.form: csr``) against the dense form, mixed
from the same staging area: every reader sees the same rows, verify checks the cells."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from store_factory import make_config, make_staging

from megaset.errors import DamagedChunkError, StoreError
from megaset.storage.mix import mix, mix_record
from megaset.storage.quotas import chunk_quotas
from megaset.storage.store import open_store
from megaset.storage.verify import verify


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(dense config, csr config): one staging area mixed into a store of each form."""
    tmp_path = tmp_path_factory.mktemp("forms")
    dense = make_config(tmp_path, url=str(tmp_path / "dense.zarr"))
    make_staging(dense.store.staging)
    mix(dense, None)
    csr = make_config(tmp_path, url=str(tmp_path / "csr.zarr"), form="csr")
    mix(csr, None)
    return dense, csr


@pytest.fixture
def url(stores, tmp_path):
    """A private copy of the CSR store, to tamper with."""
    copy = str(tmp_path / "store.zarr")
    shutil.copytree(stores[1].store.url, copy)
    return copy


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values).view(np.uint8)


def test_every_column_of_every_chunk_reads_the_same_bytes_in_both_forms(stores):
    dense, csr = (open_store(cfg.store.url) for cfg in stores)
    assert csr.group_names() == dense.group_names()
    for name in dense.group_names():
        ours, theirs = csr.group(name), dense.group(name)
        assert ours.column_infos() == theirs.column_infos()  # rmm: (N, 9) float32 in chunks of 256
        assert ours.forms == {"rmm": "csr"} and theirs.forms == {}
        # The cells' arrays are the form's own, not columns, as in columns().
        assert ours.has_column("rmm") and not ours.has_column("rmm_csr/nnz") and theirs.has_column("rmm")
        columns = theirs.columns()
        for (i, got), (j, expected) in zip(ours.iter_chunks(columns), theirs.iter_chunks(columns), strict=True):
            assert i == j and list(got) == list(expected)
            for column in columns:
                assert np.array_equal(bits(got[column]), bits(expected[column])), (name, i, column)
        # Several chunks at once, dense and as cells.
        every = range(theirs.n_chunks)
        got, expected = (g.read_chunks(every, ("weight", "rmm"), compact=("rmm",)) for g in (ours, theirs))
        assert np.array_equal(got["weight"], expected["weight"])
        cells, reference = got["rmm"], expected["rmm"]
        assert cells.shape == reference.shape == (theirs.n_events, 9)
        assert np.array_equal(cells.positions, reference.positions) and cells.positions.dtype == np.int32
        assert np.array_equal(bits(cells.values), bits(reference.values))
        assert np.array_equal(ours.read_chunks(every, ("rmm",))["rmm"], cells.dense())


def test_each_chunk_keeps_the_channel_mixture_and_verify_passes(stores):
    store = open_store(stores[1].store.url)
    for name in store.group_names():
        group = store.group(name)
        quotas = chunk_quotas(group.attrs["counts"], group.chunk_len)
        for i, values in group.iter_chunks(("channel", "rmm")):
            found = [int((values["channel"] == c).sum()) for c in group.attrs["channel_ids"]]
            assert found == quotas[i].tolist()
    assert verify(stores[1].store.url) == []


def test_the_csr_store_holds_cells_not_rows(stores):
    url = Path(stores[1].store.url)
    root = zarr.open_group(str(url), mode="r")
    assert "rmm" not in root["train"]
    cells = root["train/rmm_csr"]
    assert dict(cells.attrs) == {"form": "csr", "column": "rmm", "shape": [9], "dtype": "float32"}
    train = open_store(str(url)).group("train")
    assert cells["nnz"].shape == (train.n_events,) and cells["nnz"].chunks == (256,)
    assert cells["nnz"].dtype == np.uint16 and cells["cell/0"].dtype == np.uint16
    assert root.attrs["mix"]["form"] == "csr"
    # The factory's rows are ~80 % zeros: about 1.8 cells of 6 bytes an event instead of 36 bytes.
    assert sum(cells[f"value/{i}"].shape[0] for i in range(train.n_chunks)) == int(cells["nnz"][:].sum())


def test_plain_zarr_users_get_dense_rows_with_numpy(stores):
    """The recipe of docs/store.md: a chunk's dense rows from the arrays, without megaset."""
    import xarray as xr

    url, chunk_len, i = stores[1].store.url, 256, 2
    cells = zarr.open_group(f"{url}/train/rmm_csr", mode="r")
    nnz = cells["nnz"][i * chunk_len:(i + 1) * chunk_len]
    rows = np.zeros((len(nnz), *cells.attrs["shape"]), dtype=cells.attrs["dtype"])
    rows.reshape(len(nnz), -1)[np.repeat(np.arange(len(nnz)), nnz), cells[f"cell/{i}"][:]] = cells[f"value/{i}"][:]
    assert np.array_equal(rows, open_store(url).group("train").read_chunk(i, ("rmm",))["rmm"])
    chunk = xr.open_zarr(url, group="train", consolidated=False).isel(event=slice(i * chunk_len, (i + 1) * chunk_len))
    chunk["rmm"] = (("event", "feature"), rows)
    assert chunk["rmm"].shape == (256, 9) and np.array_equal(chunk["weight"].values, zarr.open_array(
        f"{url}/train/weight", mode="r")[i * chunk_len:(i + 1) * chunk_len])


def test_the_sql_query_sees_the_same_table(stores):
    from megaset.storage.query import query

    sql = "SELECT * FROM train ORDER BY file_index, entry"
    assert query(stores[1].store.url, sql).equals(query(stores[0].store.url, sql))


def test_a_store_of_the_other_form_is_never_reused(stores, tmp_path):
    dense, csr = stores
    copy = str(tmp_path / "store.zarr")
    shutil.copytree(dense.store.url, copy)
    with pytest.raises(StoreError, match=r"mixed from another staging area or with other store settings "
                                         r"\(chunk_len, compressor, form, .*delete it or set store.url"):
        mix(csr.replace(store={"url": copy}), None)
    # The mix's stage record differs, so `megaset run` rebuilds a store of the other form.
    sattrs = dict(zarr.open_group(dense.store.staging, mode="r").attrs)
    assert mix_record(csr, sattrs)["fingerprint"] != mix_record(dense, sattrs)["fingerprint"]


def test_flipped_byte_in_a_cell_chunk_is_named_at_read_and_by_verify(url):
    from test_verify import flip_byte

    values = Path(url) / "train" / "rmm_csr" / "value" / "1" / "c" / "0"
    flip_byte(values)
    group = open_store(url).group("train")
    group.read_chunk(0)
    with pytest.raises(DamagedChunkError, match=rf"damaged chunk file://{values}: .* crc32c checksum"):
        group.read_chunk(1)
    assert verify(url) == [f"train chunk 1: damaged chunk file://{values} (crc32c checksum mismatch)"]


def test_cells_that_disagree_with_their_counts_or_are_missing_are_named_by_verify(url):
    counts = zarr.open_array(f"{url}/train/rmm_csr/nnz", mode="r+")
    first = counts[512:768]
    counts[512:768] = first + 1  # chunk 2's events claim a cell more each
    shutil.rmtree(Path(url) / "train" / "rmm_csr" / "value" / "3")
    n = int(first.sum())
    group = open_store(url).group("train")
    with pytest.raises(DamagedChunkError, match=r"chunk 2 of rmm .* holds \d+ cells and \d+ values, its events' "
                                                r"counts add up to \d+; run `megaset verify`"):
        group.read_chunk(2)
    cell2 = f"file://{url}/train/rmm_csr/cell/2"
    problems = verify(url)
    assert problems[0] == (f"train chunk 2: damaged chunk {cell2} (holds {n} cells and {n} values, its events' "
                           f"counts add up to {n + 256})")
    assert problems[1].startswith("train chunk 3: damaged chunk ") and problems[1].endswith("rmm_csr/value/3 (missing)")
    assert len(problems) == 2


def test_cells_out_of_order_are_named(url):
    cells = zarr.open_array(f"{url}/val/rmm_csr/cell/0", mode="r+")
    counts = zarr.open_array(f"{url}/val/rmm_csr/nnz", mode="r")[:256]
    first = int(np.flatnonzero(counts >= 2)[0])
    at = int(counts[:first].sum())
    swapped = cells[:]
    swapped[at], swapped[at + 1] = swapped[at + 1], swapped[at]
    cells[:] = swapped
    assert verify(url) == [f"val chunk 0: damaged chunk file://{url}/val/rmm_csr/cell/0 "
                           "(has an event whose cells do not ascend)"]


def test_an_interrupted_csr_mix_resumes_to_the_same_store(stores, tmp_path):
    from faults import mix_stopped_after

    dense, csr = stores
    resumed = csr.replace(store={"url": str(tmp_path / "resumed.zarr")})
    mix_stopped_after(resumed, 5)
    # A chunk whose writer died between its cells and its done mark: wrong cells, no mark.
    zarr.open_array(f"{resumed.store.url}/_mix/train/done", mode="r+")[4] = False
    zarr.open_array(f"{resumed.store.url}/train/rmm_csr/value/4", mode="r+")[:] = 7.0
    assert mix(resumed, None)["resumed"] == 4
    assert verify(resumed.store.url) == []
    train, reference = open_store(resumed.store.url).group("train"), open_store(dense.store.url).group("train")
    every = range(train.n_chunks)
    assert np.array_equal(bits(train.read_chunks(every, ("rmm",))["rmm"]),
                          bits(reference.read_chunks(every, ("rmm",))["rmm"]))


@pytest.mark.slow
def test_a_csr_mix_on_a_dask_cluster_writes_the_same_store(stores, cluster_client, tmp_path):
    dense, csr = stores
    on_cluster = csr.replace(store={"url": str(tmp_path / "cluster.zarr")})
    mix(on_cluster, cluster_client)
    assert verify(on_cluster.store.url) == []
    for name in open_store(dense.store.url).group_names():
        ours, theirs = open_store(on_cluster.store.url).group(name), open_store(csr.store.url).group(name)
        every = range(theirs.n_chunks)
        got, expected = (g.read_chunks(every, g.columns()) for g in (ours, theirs))
        assert all(np.array_equal(bits(got[c]), bits(expected[c])) for c in expected)


def test_a_feature_column_of_several_axes_comes_back_in_its_shape(tmp_path):
    """A jet store's image column (events x 3 x 4 here) in the CSR form reads back as the dense store's."""
    from megaset.config import CompressorConfig
    from megaset.storage.staging import finish_staging, init_staging, piece_key, write_piece

    channels = [{"id": 0, "name": "qcd", "signal": False, "data": False},
                {"id": 1, "name": "top", "signal": True, "data": False}]
    dense = make_config(tmp_path, url=str(tmp_path / "dense.zarr"), chunk_len=64)
    init_staging(dense.store.staging, ["qcd", "top"], {
        "schema_version": 2, "kind": "jets", "feature_column": "image", "feature_names": [f"p{i}" for i in range(12)],
        "channels": channels, "config": {"note": "synthetic"}, "code_version": "test"})
    rng = np.random.default_rng(1)
    for c, n in zip(channels, (300, 90), strict=True):
        image = rng.exponential(1.0, (n, 3, 4)).astype(np.float32)
        image[rng.random(image.shape) < 0.7] = 0.0
        image[0, 0, 0] = -0.0  # kept: zero by its bits only
        columns = {"image": image, "weight": np.ones(n, np.float32), "channel": np.full(n, c["id"], np.int16),
                   "event_id": np.stack([np.zeros(n), np.arange(n), np.full(n, c["id"]), np.arange(n)],
                                        axis=1).astype(np.int64)}
        write_piece(dense.store.staging, c["name"], piece_key(f"u{c['id']}", 0, n), columns, {
            "filename": f"/data/{c['name']}.root", "file_index": c["id"], "fileuuid": f"u{c['id']}",
            "entrystart": 0, "entrystop": n, "n_read": n, "cutflow": [["all", n, float(n)]]}, CompressorConfig())
    finish_staging(dense.store.staging, {"files": [], "skipped": [], "cutflow": {}})
    csr = dense.replace(store={"url": str(tmp_path / "csr.zarr"), "form": "csr"})
    mix(dense, None)
    mix(csr, None)
    assert zarr.open_group(f"{csr.store.url}/train/image_csr", mode="r").attrs["shape"] == [3, 4]
    for name in open_store(dense.store.url).group_names():
        ours, theirs = open_store(csr.store.url).group(name), open_store(dense.store.url).group(name)
        assert ours.column_info("image") == theirs.column_info("image")
        every = range(theirs.n_chunks)
        got, expected = (g.read_chunks(every, ("image",), compact=()) for g in (ours, theirs))
        assert got["image"].shape[1:] == (3, 4) and np.array_equal(bits(got["image"]), bits(expected["image"]))
        cells = ours.read_chunks(every, ("image",), compact=("image",))["image"]
        assert np.array_equal(bits(cells.dense().reshape(-1, 3, 4)), bits(expected["image"]))
    assert verify(csr.store.url) == []
