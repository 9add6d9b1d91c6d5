"""Inputs on remote storage, read through real servers on loopback: a store made from root://
(Debian's XRootD server), http:// (Python's http.server, and XRootD's HTTP plug-in) and
s3:// (moto) equals, event by event, the store made from the same files read locally."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
import zlib

import numpy as np
import pytest

from megaset.config import Config
from megaset.errors import ConfigError, InputFileError, MissingExtraError
from megaset.loopback import http_server, s3_server, xrootd_server
from megaset.pipeline.ingest import ingest
from megaset.pipeline.remote import expand
from megaset.pipeline.simulate import generate, write_ntuple
from megaset.storage.mix import mix
from megaset.storage.staging import staging_attrs
from megaset.storage.store import open_store

CHANNELS = {"zmmjets": 1400, "ttbar": 1100, "c1n2_wz_800_50": 600}
FAST = {"timeout": 3, "retries": 1, "backoff": 0.1}


@pytest.fixture(scope="module")
def xrootd():
    try:
        with xrootd_server() as server:
            yield server
    except FileNotFoundError as err:
        if os.environ.get("MEGASET_TEST_REQUIRE_XROOTD"):
            raise
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def sample(xrootd):
    """Two files per channel in the folder the XRootD server serves: ``{channel: [names]}``."""
    names = {}
    for c, (channel, n) in enumerate(CHANNELS.items()):
        (xrootd.data / channel).mkdir()
        names[channel] = []
        for i in range(2):
            name = f"{channel}/{channel}_{i}.root"
            write_ntuple(xrootd.data / name, generate(channel, n, seed=10 * c + i, first_event=n * i), "mini")
            names[channel].append(name)
    return names


@pytest.fixture(scope="module")
def http(xrootd, sample):
    with http_server(xrootd.data) as server:
        yield server


@pytest.fixture(scope="module")
def s3(sample, xrootd):
    import s3fs

    with s3_server("megaset-inputs") as bucket:
        fs = s3fs.S3FileSystem()
        for names in sample.values():
            for name in names:
                fs.put(str(xrootd.data / name), f"{bucket}/ntuples/{name}")
        yield f"{bucket}/ntuples"


def make_config(files: dict[str, list[str]], work, **remote) -> Config:
    channels = {ch: {"files": paths, "signal": ch.startswith("c1n2")} for ch, paths in files.items()}
    return Config.model_validate({
        "inputs": {"chunksize": 500, "channels": channels, "remote": remote},
        "store": {"url": str(work / "store.zarr"), "chunk_len": 256},
    })


def build(cfg: Config, client=None):
    summary = ingest(cfg, client)
    mix(cfg, None)
    return summary


@pytest.fixture(scope="module")
def reference(xrootd, sample, tmp_path_factory):
    """The store made from the served folder read locally."""
    cfg = make_config({ch: [str(xrootd.data / ch / "*.root")] for ch in sample}, tmp_path_factory.mktemp("local"))
    build(cfg)
    return cfg


def assert_same_store(url: str, reference: str) -> None:
    store, expected = open_store(url), open_store(reference)
    assert store.group_names() == expected.group_names()
    for name in expected.group_names():
        group, truth = store.group(name), expected.group(name)
        assert group.columns() == truth.columns() and group.n_chunks == truth.n_chunks > 0
        for (i, values), (_, wanted) in zip(group.iter_chunks(truth.columns()), truth.iter_chunks(truth.columns()),
                                            strict=True):
            for column in wanted:
                np.testing.assert_array_equal(values[column], wanted[column], err_msg=f"{name} chunk {i} {column}")


def local_checksums(xrootd, sample) -> dict[str, tuple[int, str]]:
    out = {}
    for names in sample.values():
        for name in names:
            content = (xrootd.data / name).read_bytes()
            out[name] = (len(content), f"adler32:{zlib.adler32(content):08x}")
    return out


def recorded(cfg: Config) -> dict[str, dict]:
    return {f["path"]: f for f in staging_attrs(cfg.store.staging)["files"]}


@pytest.mark.slow
def test_root_on_two_workers_gives_the_local_store_opening_each_file_once_per_worker(
        xrootd, sample, reference, tmp_path, cluster_client):
    # Globs: the XRootD server lists folders.
    cfg = make_config({ch: [f"{xrootd.url}/{ch}/*.root"] for ch in sample}, tmp_path)
    build(cfg, cluster_client)
    assert_same_store(cfg.store.url, reference.store.url)
    files, checksums = recorded(cfg), local_checksums(xrootd, sample)
    assert sorted(files) == sorted(f"{xrootd.url}/{name}" for name in checksums)
    for name, (size, checksum) in checksums.items():
        # The server's adler32, asked for without reading the file, is the one of the bytes.
        assert (files[f"{xrootd.url}/{name}"]["size"], files[f"{xrootd.url}/{name}"]["checksum"]) == (size, checksum)
        # Three chunks per file and a file check: without one open per file per worker, four.
        assert 1 <= xrootd.opens(f"/{name}") <= len(cluster_client.scheduler_info()["workers"]), name


@pytest.mark.slow
def test_http_server_ignoring_ranges_gives_the_local_store_fetching_each_file_once(
        xrootd, sample, http, reference, tmp_path):
    """Python's http.server, as the user who found ``http://http://...`` ran it: it answers
    byte-range requests with the whole file, so each file is fetched whole, once."""
    cfg = make_config({ch: [f"{http.url}/{name}" for name in names] for ch, names in sample.items()}, tmp_path)
    build(cfg)
    assert_same_store(cfg.store.url, reference.store.url)
    files, checksums = recorded(cfg), local_checksums(xrootd, sample)
    for name, expected in checksums.items():
        info = files[f"{http.url}/{name}"]
        assert info["whole_file"] and (info["size"], info["checksum"]) == expected
        # The range probe and fsspec's test that the file exists (both closed unread), then one
        # whole read, which the check, the checksum and every chunk in this process share.
        assert http.gets[f"/{name}"] == 3, name


@pytest.mark.slow
def test_https_style_server_with_ranges_and_digests_gives_the_local_store(xrootd, sample, reference, tmp_path):
    """XRootD's HTTP plug-in answers byte ranges and ``Want-Digest: adler32``, as EOS and dCache do."""
    cfg = make_config({ch: [f"{xrootd.http_url}/{name}" for name in names] for ch, names in sample.items()}, tmp_path)
    build(cfg)
    assert_same_store(cfg.store.url, reference.store.url)
    files = recorded(cfg)
    for name, expected in local_checksums(xrootd, sample).items():
        info = files[f"{xrootd.http_url}/{name}"]
        assert not info["whole_file"] and (info["size"], info["checksum"]) == expected


@pytest.mark.slow
def test_s3_gives_the_local_store_with_etags_as_checksums(xrootd, sample, s3, reference, tmp_path):
    cfg = make_config({ch: [f"{s3}/{ch}/*.root"] for ch in sample}, tmp_path)
    build(cfg)
    assert_same_store(cfg.store.url, reference.store.url)
    files = recorded(cfg)
    for names in sample.values():
        for name in names:
            content = (xrootd.data / name).read_bytes()
            # A single-part upload's ETag is the MD5 of its bytes.
            assert files[f"{s3}/{name}"]["checksum"] == f"etag:{hashlib.md5(content).hexdigest()}"


def test_globs_expand_where_the_protocol_lists(xrootd, sample, s3):
    names = sample["ttbar"]
    assert expand(f"{xrootd.url}/ttbar/*_1.root", 5) == [f"{xrootd.url}/{names[1]}"]
    assert expand(f"{s3}/ttbar/*.root", 5) == [f"{s3}/{name}" for name in names]
    assert expand(f"{xrootd.url}/ttbar/none_*.root", 5) == []


def test_http_glob_is_refused_and_a_query_is_not_a_glob():
    with pytest.raises(ConfigError, match=r"http://host/data/\*\.root: plain HTTP cannot list a folder.*root://"):
        expand("http://host/data/*.root", 5)
    assert expand("https://host/data/x.root?authz=a?b", 5) == ["https://host/data/x.root?authz=a?b"]


def test_root_url_without_the_xrootd_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "fsspec_xrootd", None)
    with pytest.raises(MissingExtraError, match=r"root://host//x\.root: root:// inputs need the XRootD client: "
                                                r"pip install 'megaset\[xrootd\]'"):
        expand("root://host//x.root", 5)


def _silent_port():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_failure(url: str, tmp_path, **remote) -> str:
    cfg = make_config({"zmmjets": [url]}, tmp_path, **{**FAST, **remote})
    with pytest.raises(InputFileError) as caught:
        ingest(cfg)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{url}: ")
    skipped = ingest(cfg.replace(inputs={"on_bad_file": "skip"}, store={"url": str(tmp_path / "skip.zarr")})).skipped
    assert [s["file"] for s in skipped] == [url]
    return message


@pytest.mark.parametrize("scheme", ["root", "http"])
def test_unreachable_server_is_one_line_retried(scheme, tmp_path):
    port = _closed_port()
    url = f"root://127.0.0.1:{port}//x.root" if scheme == "root" else f"http://127.0.0.1:{port}/x.root"
    message = _one_line_failure(url, tmp_path)
    assert "cannot reach 127.0.0.1 (" in message
    assert "check that the server is up" in message and "(failed 2 times, retried with backoff)" in message


@pytest.mark.parametrize("scheme", ["root", "http"])
def test_silent_server_times_out_in_one_line(scheme, tmp_path):
    sock = _silent_port()
    port = sock.getsockname()[1]
    url = f"root://127.0.0.1:{port}//x.root" if scheme == "root" else f"http://127.0.0.1:{port}/x.root"
    try:
        message = _one_line_failure(url, tmp_path, timeout=1, retries=0)
    finally:
        sock.close()
    assert "127.0.0.1 did not answer within 1 s" in message and "raise inputs.remote.timeout" in message


def test_missing_files_are_one_line_and_not_retried(xrootd, sample, http, s3, tmp_path):
    message = _one_line_failure(f"{xrootd.url}/ttbar/absent.root", tmp_path / "root")
    assert "no such file ([ERROR] Server responded with an error: [3011]" in message
    assert f"xrdfs {xrootd.url.split('/')[2]} ls /ttbar lists the folder" in message and "failed" not in message
    message = _one_line_failure(f"{s3}/ttbar/absent.root", tmp_path / "s3")
    assert f"no such file (not found); check the path (aws s3 ls {s3}/ttbar/ lists the folder)" in message
    before = http.gets["/ttbar/absent.root"]
    message = _one_line_failure(f"{http.url}/ttbar/absent.root", tmp_path / "http")
    assert "no such file (not found); check the path (curl -I" in message
    assert http.gets["/ttbar/absent.root"] - before == 2  # once failing, once skipping: no retries


def test_permission_denied_is_one_line_naming_the_credentials(xrootd, sample, tmp_path):
    locked = xrootd.data / "locked.root"
    shutil.copy(xrootd.data / sample["ttbar"][0], locked)
    locked.chmod(0)
    if os.geteuid() != 0 and os.access(locked, os.R_OK):
        pytest.skip("this file system lets its owner read a file without read permission")
    message = _one_line_failure(f"{xrootd.url}/locked.root", tmp_path)
    assert "permission denied ([ERROR] Server responded with an error: [3010]" in message
    assert "X509_USER_PROXY" in message and "BEARER_TOKEN" in message and "failed" not in message


def test_a_transient_failure_is_retried_with_backoff(tmp_path):
    """A server that takes connections and drops them at once: each try is one connection,
    and the tries are spaced by the backoff (0.2 s, then 0.4 s)."""
    sock = _silent_port()
    accepted = []

    def drop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(time.monotonic())
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.root"
    cfg = make_config({"zmmjets": [url]}, tmp_path, timeout=3, retries=2, backoff=0.2)
    try:
        with pytest.raises(InputFileError, match=r"cannot reach 127\.0\.0\.1 .*failed 3 times, retried with backoff"):
            ingest(cfg)
    finally:
        sock.close()
    gaps = np.diff(accepted)
    assert len(accepted) >= 3 and gaps.max() >= 0.4 and np.sum(gaps >= 0.2) >= 2


def test_https_sends_the_token_found_as_grid_tools_find_it(tmp_path, monkeypatch):
    from megaset.pipeline.remote import bearer_token, storage_options

    for name in ("BEARER_TOKEN", "BEARER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if bearer_token() is not None:
        pytest.skip(f"/tmp/bt_u{os.geteuid()} holds a token on this machine")
    assert "headers" not in storage_options("https://host/x.root", 5)
    (tmp_path / f"bt_u{os.geteuid()}").write_text("from-runtime-dir\n")
    assert bearer_token() == "from-runtime-dir"
    named = tmp_path / "token"
    named.write_text(" from-file ")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(named))
    assert bearer_token() == "from-file"
    monkeypatch.setenv("BEARER_TOKEN", "from-variable")
    assert storage_options("https://host/x.root", 5)["headers"] == {"Authorization": "Bearer from-variable"}
    # Never over plain http, where it would travel in the clear, nor to other protocols.
    assert "headers" not in storage_options("http://host/x.root", 5)
    assert "headers" not in storage_options("root://host//x.root", 5)
