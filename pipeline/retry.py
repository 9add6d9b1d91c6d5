"""Failures to reach an input: told in one line, and retried only when they may pass.

A remote read fails either because the server is down, slow or busy (it may work a moment
later) or because the URL or the credentials are wrong (it fails the same way every time).
The first kind is retried with exponential backoff (``inputs.remote.retries`` and ``backoff``),
the second is reported at once. Either way the report is one line: the URL, what went wrong,
and what would fix it. Failures that are not about reaching the file (a damaged file, a
missing branch) are not classified here and reach the file check unchanged.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from coffea import processor

from megaset.errors import ConfigError, InputFileError, MegasetError, MissingExtraError
from megaset.extras import missing_extra
from megaset.pipeline.remote import protocol

if TYPE_CHECKING:
    from distributed import Client

    from megaset.config import RemoteConfig
    from megaset.progress import Progress

__all__ = ["Failure", "classify", "damaged", "with_retries", "RetryingWork", "retrying_executor"]

T = TypeVar("T")

# What the XRootD client says, in the message fsspec-xrootd raises it with: kXR status codes
# of the server's answer (XProtocol.hh), then the client's own words for network trouble.
_XRD_CODES = {
    "3010": ("permission", False),  # kXR_NotAuthorized
    "3011": ("missing", False),  # kXR_NotFound
    "3030": ("missing", False),  # kXR_noReplicas
    "3007": ("server", True),  # kXR_IOError
    "3012": ("server", True),  # kXR_ServerError
    "3014": ("server", True),  # kXR_noserver
    "3024": ("server", True),  # kXR_Overloaded
    "3035": ("timeout", True),  # kXR_ReqTimedOut
}
_XRD_WORDS = (
    ("invalid address", "unresolvable", False),
    ("auth failed", "permission", False),
    ("operation expired", "timeout", True),
    ("socket timeout", "timeout", True),
    ("connection error", "unreachable", True),
    ("connection refused", "unreachable", True),
    ("stream error", "unreachable", True),
    ("socket error", "unreachable", True),
)
_XRD_CODE = re.compile(r"\[(30\d\d)\]")


@dataclass(frozen=True)
class Failure:
    """Why an input could not be reached: ``kind`` is one of unreachable, unresolvable,
    timeout, missing, permission, server, client; ``cause`` the client's words, on one line."""

    kind: str
    transient: bool
    cause: str

    def reason(self, url: str, timeout: float, tries: int = 1) -> str:
        """The one-line report: what went wrong and what would fix it (after ``url: ``)."""
        proto = protocol(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        s3 = proto in ("s3", "s3a")
        where = f"the S3 endpoint of bucket {host!r}" if s3 else (host or "the server")
        address = "the endpoint (AWS_ENDPOINT_URL or the profile's) is" if s3 else "the host and port in the URL are"
        if self.kind == "client":
            return self.cause.removeprefix(f"{url}: ")
        text = {
            "unreachable": f"cannot reach {where} ({self.cause}); check that the server is up and that "
                           f"{address} right and reachable from here and from the workers (firewall, VPN)",
            "unresolvable": f"cannot resolve the host {host!r} ({self.cause}); check the host name in the URL",
            "timeout": f"{where} did not answer within {timeout:g} s ({self.cause}); raise "
                       "inputs.remote.timeout, or retry when the server is less busy",
            "missing": f"no such file ({self.cause}); check the path{_listing_hint(url)}",
            "permission": f"permission denied ({self.cause}); {_credentials_hint(url)}",
            "server": f"{where} failed to serve it ({self.cause}); retry later, or ask the storage's operators",
        }[self.kind]
        return f"{text} (failed {tries} times, retried with backoff)" if tries > 1 else text


def _listing_hint(url: str) -> str:
    parts = urlsplit(url)
    folder = "/" + parts.path.strip("/").rpartition("/")[0]
    return {
        "root": f" (xrdfs {parts.netloc} ls {folder} lists the folder)",
        "s3": f" (aws s3 ls {url.rpartition('/')[0]}/ lists the folder)",
        "http": " (curl -I shows what the server answers)",
        "https": " (curl -I shows what the server answers)",
    }.get(protocol(url), "")


def _credentials_hint(url: str) -> str:
    proto = protocol(url)
    if proto in ("s3", "s3a"):
        return ("check the S3 credentials where megaset and its workers run (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and the bucket's policy")
    if proto == "root":
        return ("check that a valid X.509 proxy (X509_USER_PROXY, from voms-proxy-init) or token "
                "(BEARER_TOKEN or BEARER_TOKEN_FILE) is in the environment where megaset and its "
                "workers run, and that it may read this path")
    if proto == "https":
        return ("check that a valid token (BEARER_TOKEN or BEARER_TOKEN_FILE) is in the environment where "
                "megaset and its workers run, and that it may read this path; an X.509 proxy is used over "
                "root:// only, so for one use the storage's root:// address")
    if proto == "http":
        return ("plain http sends no credentials (they would travel in the clear): use the storage's https:// "
                "or root:// address")
    return "check the file's permissions for the user megaset and its workers run as"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _botocore_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """botocore's timeout and connection errors; none without the s3 extra (no S3 read then)."""
    try:
        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
    except ImportError:
        return (), ()
    return (ConnectTimeoutError, ReadTimeoutError), (EndpointConnectionError,)


def _classify_one(err: BaseException) -> Failure | None:
    import aiohttp

    cause = _one_line(err)
    if (extra := missing_extra(err)) is not None:
        return Failure("client", False, _one_line(extra))
    if isinstance(err, ImportError) and "xrootd" in cause.lower():  # the client's libraries, not the module
        return Failure("client", False, "root:// inputs need the XRootD client: pip install 'megaset[xrootd]' "
                                        f"({cause})")
    if isinstance(err, (socket.gaierror, aiohttp.ClientConnectorDNSError)):
        return Failure("unresolvable", False, cause)
    if isinstance(err, aiohttp.ClientResponseError):
        status = err.status
        if status in (401, 403):
            return Failure("permission", False, f"HTTP {status} {err.message}")
        if status == 404:
            return Failure("missing", False, f"HTTP {status} {err.message}")
        if status in (408, 429) or status >= 500:
            return Failure("server", True, f"HTTP {status} {err.message}")
        return None
    timeouts, unreachable = _botocore_errors()
    if isinstance(err, (TimeoutError, *timeouts)):
        return Failure("timeout", True, cause if cause != type(err).__name__ else "timed out")
    if isinstance(err, (ConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, *unreachable)):
        return Failure("unreachable", True, cause)
    if isinstance(err, FileNotFoundError):
        return Failure("missing", False, "not found")
    if isinstance(err, PermissionError):
        return Failure("permission", False, cause)
    if isinstance(err, OSError) and ("[ERROR]" in cause or "[FATAL]" in cause):
        said = cause[cause.index("["):]  # the XRootD client's words, without fsspec-xrootd's
        if (code := _XRD_CODE.search(said)) and code.group(1) in _XRD_CODES:
            return Failure(*_XRD_CODES[code.group(1)], said)
        lowered = said.lower()
        for words, kind, transient in _XRD_WORDS:
            if words in lowered:
                return Failure(kind, transient, said)
    return None


def classify(err: BaseException) -> Failure | None:
    """What kept an input from being reached, from the exception and its causes; ``None`` when
    the failure is not about reaching it (a file that is there but damaged, a missing branch).

    >>> classify(FileNotFoundError("s3://b/x.root"))
    Failure(kind='missing', transient=False, cause='not found')
    >>> classify(ValueError("not a ROOT file")) is None
    True
    """
    chain = list(_chain(err))
    # megaset's own errors say what is wrong with a file that was read: nothing to reach.
    if any(isinstance(e, MegasetError) and not isinstance(e, MissingExtraError) for e in chain):
        return None
    return next((f for f in map(_classify_one, chain) if f is not None), None)


def damaged(err: BaseException) -> str | None:
    """The cause, on one line, when ``err`` is a read of a file that is there but damaged: an
    error raised while uproot read it (a decompression error, a basket cut short by a truncated
    file, bytes that do not deserialize) that is not about reaching it. Such a read fails the
    same way every time, so it is never retried; ``None`` for anything else (a bug is no bad file).
    """
    if classify(err) is not None:
        return None
    for e in _chain(err):
        if isinstance(e, MegasetError):
            return None
        tb = e.__traceback__
        while tb is not None:
            if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("uproot."):
                return f"{type(e).__name__}: {_one_line(e)}"
            tb = tb.tb_next
    return None


def with_retries(work: Callable[[], T], url: str, remote: RemoteConfig) -> T:
    """``work()``, retried after a transient failure to reach ``url`` (waiting ``backoff``,
    then twice as long each time, ``retries`` times at most).

    Raises
    ------
    InputFileError
        Naming ``url``, in one line, when it cannot be reached: at once for a lasting cause,
        after the last retry for a transient one. Other failures propagate unchanged.
    """
    tries = 0
    while True:
        tries += 1
        try:
            return work()
        except Exception as err:
            failure = classify(err)
            if failure is None:
                raise
            if not failure.transient or tries > remote.retries:
                raise InputFileError(url, failure.reason(url, remote.timeout, tries)) from err
        time.sleep(remote.backoff * 2 ** (tries - 1))


class RetryingWork:
    """A coffea work function (one chunk of one file) run through :func:`with_retries`.

    With ``skip``, a chunk whose file cannot be reached is reported in the output under
    ``"skipped"`` (as the processor reports an unreadable one) instead of failing the run.
    With ``topic``, a chunk done on a Dask worker logs an event of that topic, which the
    executor counts for its ``progress``.
    """

    def __init__(self, function: Callable[[Any], Any], remote: RemoteConfig, skip: bool, topic: str | None = None):
        self.function = function
        self.remote = remote
        self.skip = skip
        self.topic = topic

    def __call__(self, item: Any) -> Any:
        out = self._run(item)
        if self.topic is not None:
            from distributed import get_worker

            get_worker().log_event(self.topic, 1)
        return out

    def _run(self, item: Any) -> Any:
        chunk = item[0] if isinstance(item, tuple) else item  # the Dask executor adds the processor
        try:
            return with_retries(lambda: self.function(item), chunk.filename, self.remote)
        except InputFileError as err:
            if not self.skip:
                raise
            reason = f"entries {chunk.entrystart}-{chunk.entrystop}: {err.reason}"
            return {"out": {"skipped": {chunk.filename: [reason]}}}
        except Exception as err:
            refused = next((e for e in _chain(err) if isinstance(e, ConfigError)), None)
            if refused is None:
                cause = damaged(err)
                if cause is None:
                    raise
                reason = (f"entries {chunk.entrystart}-{chunk.entrystop} of tree {chunk.treename!r} cannot be "
                          f"read, the file is damaged or truncated ({cause})")
                if self.skip:
                    return {"out": {"skipped": {chunk.filename: [reason]}}}
                # Returned, not raised: the executor would wrap it in a bare Exception with a long
                # traceback. The ingest raises it after the run.
                error = InputFileError(chunk.filename, f"{reason}; replace the file, or set inputs.on_bad_file: "
                                                       "skip to go on without it")
                return {"out": {"errors": {f"{chunk.filename}:{chunk.entrystart:012d}": error}}}
        # coffea wraps what a processor raises in a bare Exception, whose cause the error is: the
        # configuration's error goes on alone (the two refer to each other, which no pickle of the
        # chain survives), and stops the run at once (on a cluster, through the task).
        refused.__cause__ = refused.__context__ = None
        raise refused


@dataclass
class _Retrying:
    """Executor mixin: every chunk runs as a :class:`RetryingWork`, counted for ``progress``
    (``progress(chunks done, chunks)``) as it finishes."""

    remote: Any = None
    skip: bool = False
    progress: Progress | None = None

    def __call__(self, items, function, accumulator):
        if self.progress is None:
            return super().__call__(items, RetryingWork(function, self.remote, self.skip), accumulator)
        import threading
        import uuid

        items = list(items)
        total, done, lock = len(items), 0, threading.Lock()
        report = self.progress

        def tick(_event: Any = None) -> None:
            nonlocal done
            with lock:
                if done < total:
                    done += 1
                    report(done, total)

        report(0, total)
        client = getattr(self, "client", None)
        if client is None:
            work = RetryingWork(function, self.remote, self.skip)
            out = super().__call__(items, lambda item: (work(item), tick())[0], accumulator)
        else:
            # The workers log an event per chunk; the client calls tick for each as it arrives.
            topic = f"megaset-ingest-{uuid.uuid4().hex}"
            client.subscribe_topic(topic, tick)
            try:
                out = super().__call__(items, RetryingWork(function, self.remote, self.skip, topic), accumulator)
            finally:
                client.unsubscribe_topic(topic)
        with lock:  # an event still on its way when the last result came
            if done < total:
                done = total
                report(total, total)
        return out


@dataclass
class _RetryingIterative(_Retrying, processor.IterativeExecutor):
    pass


@dataclass
class _RetryingDask(_Retrying, processor.DaskExecutor):
    pass


def retrying_executor(client: Client | None, remote: RemoteConfig, skip: bool, progress: Progress | None = None):
    """The coffea executor of the ingest: on the cluster of ``client``, else in this process.

    Its chunks run as :class:`RetryingWork`; the executor's own retries, which rerun any
    failure at once, are off (a worker that dies is still the scheduler's to retry). It draws
    no bar of its own: ``progress(chunks done, chunks)`` is called as chunks finish.
    """
    if client is None:
        return _RetryingIterative(remote=remote, skip=skip, progress=progress, status=False, retries=0)
    return _RetryingDask(remote=remote, skip=skip, client=client, progress=progress, status=False, retries=0)
