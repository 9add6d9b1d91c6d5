"""The store on an object store: a full mix into ``s3://`` and reading it back.

The S3-compatible server (moto, ``megaset.loopback.s3_server``) listens on loopback; s3fs / botocore
find it through the ``AWS_ENDPOINT_URL`` and credential variables, which Dask worker processes
started afterwards inherit, exactly as on a cluster whose workers get the object store's
secrets as environment.
"""

from __future__ import annotations

import numpy as np
import pytest
from store_factory import make_config, make_staging

from megaset.errors import StoreError
from megaset.loopback import s3_server
from megaset.storage.mix import mix
from megaset.storage.store import open_store
from megaset.storage.verify import verify

BUCKET = "megaset-test"


@pytest.fixture(scope="module")
def s3_bucket():
    """An empty bucket on a loopback S3 server, with the environment pointing at it."""
    with s3_server(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def s3_client(s3_bucket):
    """Two worker processes started after the S3 environment is set, so they inherit it."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_mix_into_s3_and_read_back(s3_bucket, s3_client, tmp_path):
    local = make_config(tmp_path, chunk_len=128)
    make_staging(local.store.staging, {"zjets": [400, 150], "ttbar": [120], "diboson": [40], "susy": [90]})
    remote = local.replace(store={"url": f"{s3_bucket}/runs/store.zarr"})
    summary = mix(remote, s3_client)
    assert summary["resumed"] == 0 and summary["mb_written"] > 0
    mix(local, None)

    store, reference = open_store(remote.store.url), open_store(local.store.url)
    assert store.group_names() == reference.group_names() == ["train", "val", "test", "signal/susy", "data"]
    assert store.attrs["scaler"] == reference.attrs["scaler"]
    for name in store.group_names():
        group, expected = store.group(name), reference.group(name)
        assert group.n_chunks == expected.n_chunks and group.columns() == expected.columns()
        for (i, values), (_, truth) in zip(group.iter_chunks(group.columns()),
                                           expected.iter_chunks(expected.columns()), strict=True):
            for key in values:
                np.testing.assert_array_equal(values[key], truth[key], err_msg=f"{name} chunk {i} {key}")
    assert verify(remote.store.url) == []

    # Scores written next to the features on the object store, chunk by chunk.
    test = store.group("test")
    test.create_column("score/ae", "f4")
    assert not test.chunk_written("score/ae", 0)
    test.write_chunks("score/ae", range(test.n_chunks), np.arange(test.n_events, dtype=np.float32))
    assert test.chunk_written("score/ae", 0)
    np.testing.assert_array_equal(open_store(remote.store.url).group("test").read_chunk(0, ("score/ae",))["score/ae"],
                                  np.arange(128, dtype=np.float32))
    assert mix(remote, s3_client)["resumed"] == summary["chunks"]


def test_missing_s3_store_names_the_url(s3_bucket):
    with pytest.raises(StoreError, match=f"no megaset store at '{s3_bucket}/absent.zarr'"):
        open_store(f"{s3_bucket}/absent.zarr")


def test_input_checksum_of_an_object_is_its_adler32(s3_bucket):
    """The file check reads inputs on an object store through the same refilled buffer."""
    import zlib

    import s3fs

    from megaset.pipeline.inputs import _HASH_BLOCK, _checksum

    content = np.random.default_rng(5).bytes(2 * _HASH_BLOCK + 12345)
    url = f"{s3_bucket}/inputs/blob.root"
    s3fs.S3FileSystem().pipe(url, content)
    assert _checksum(url) == (len(content), f"adler32:{zlib.adler32(content):08x}")
