"""What counts as a failure to reach an input, and how often it is tried. The servers that
raise these failures for real are in test_remote.py; here the policy, on the exceptions the
clients raise."""

from __future__ import annotations

import pytest
from coffea.processor.executor import WorkItem

from megaset.config import RemoteConfig
from megaset.errors import BranchError, InputFileError
from megaset.pipeline.retry import Failure, RetryingWork, classify, with_retries

FAST = RemoteConfig(retries=2, backoff=0.01)


def failing(times: int, error: Exception):
    """A piece of work that raises ``error`` the first ``times`` calls; counts its calls."""
    calls = []

    def work():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return work, calls


def test_client_errors_are_classified_through_the_causes_coffea_wraps_them_in():
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    def wrapped(cause: Exception) -> Exception:
        # Raised and chained as coffea does it, with the bare Exception it uses.
        try:
            try:
                raise cause  # noqa: TRY301 - raised here to be chained
            except Exception as err:
                raise Exception("Failed to open file: WorkItem(...)") from err  # noqa: TRY002, EM101 - coffea's
        except Exception as outer:  # noqa: BLE001 - the bare Exception above
            return outer

    xrootd = OSError("Failed to open file: [ERROR] Server responded with an error: [3011] Unable to open /x.root; "
                     "no such file or directory\n")
    assert classify(wrapped(xrootd)) == Failure(
        "missing", False,
        "[ERROR] Server responded with an error: [3011] Unable to open /x.root; no such file or directory")
    assert classify(wrapped(OSError("Failed to open file: [ERROR] Operation expired"))).kind == "timeout"
    url = URL("https://host/x.root")
    request = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    busy = aiohttp.ClientResponseError(request, (), status=503, message="Service Unavailable")
    assert classify(wrapped(busy)) == Failure("server", True, "HTTP 503 Service Unavailable")
    assert classify(wrapped(ConnectionResetError(104, "Connection reset by peer"))).transient
    assert classify(wrapped(ValueError("not a ROOT file"))) is None
    # A file that was read but lacks a branch is the file check's to report, not a reach failure.
    assert classify(wrapped(BranchError("x.root", "no branch 'lepPt'", "lepPt"))) is None


def test_transient_failures_are_retried_until_they_pass():
    work, calls = failing(2, ConnectionResetError(104, "Connection reset by peer"))
    assert with_retries(work, "root://host//x.root", FAST) == "done" and len(calls) == 3


def test_transient_failures_stop_after_the_last_retry():
    work, calls = failing(5, TimeoutError())
    with pytest.raises(InputFileError,
                       match=r"^root://host//x\.root: host did not answer within 60 s \(timed out\); "
                             r"raise inputs\.remote\.timeout.*\(failed 3 times, retried with backoff\)$"):
        with_retries(work, "root://host//x.root", FAST)
    assert len(calls) == 3


def test_lasting_failures_are_not_retried_and_others_pass_through():
    work, calls = failing(5, PermissionError(13, "Permission denied"))
    with pytest.raises(InputFileError, match=r"s3://b/x\.root: permission denied .*AWS_ACCESS_KEY_ID"):
        with_retries(work, "s3://b/x.root", FAST)
    assert len(calls) == 1
    work, calls = failing(5, ValueError("not a ROOT file"))
    with pytest.raises(ValueError, match="not a ROOT file"):
        with_retries(work, "s3://b/x.root", FAST)
    assert len(calls) == 1


def test_a_chunk_that_cannot_be_reached_fails_or_is_skipped():
    item = WorkItem("ttbar", "http://host/ttbar.root", "mini", 500, 1000, "uuid")

    def vanished(_):
        msg = "http://host/ttbar.root"
        raise FileNotFoundError(msg)

    with pytest.raises(InputFileError, match=r"http://host/ttbar\.root: no such file"):
        RetryingWork(vanished, FAST, skip=False)(item)
    out = RetryingWork(vanished, FAST, skip=True)((item, "processor"))
    assert out == {"out": {"skipped": {"http://host/ttbar.root": ["entries 500-1000: no such file (not found); "
                                       "check the path (curl -I shows what the server answers)"]}}}


def test_a_damaged_read_is_neither_retried_nor_a_bug():
    """An error raised inside uproot is a damaged file (fails the same way every time); one raised
    elsewhere is not a file's fault."""
    import uproot

    from megaset.pipeline.retry import damaged

    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever uproot raises for these bytes
        uproot.compression.decompress(uproot.source.chunk.Chunk.wrap(None, b"ZL\x08garbagegarbage"), None, 0, 10, 1)
    assert damaged(info.value) is not None
    assert damaged(ValueError("a bug of ours")) is None
    assert damaged(FileNotFoundError("x.root")) is None  # not reachable: classify's, not damage
