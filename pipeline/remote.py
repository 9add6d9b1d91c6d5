"""Inputs where physicists keep them: local disk, XRootD (``root://``), HTTP(S) and S3.

uproot reads every URL through fsspec. What this module adds is what the file check and the
ingest need on top of that, per protocol:

- :func:`expand`: a configured path or glob as the URLs it names. XRootD, S3 and local disks
  list folders, so globs work there; plain HTTP has no listing (a server's HTML index is not
  one), so a glob in an http(s) URL is refused and every other http(s) URL is taken as written
  (a ``?`` in it starts a query, not a pattern).
- :func:`stored_checksum`: what the server says about a file's content without reading it: an
  XRootD ``query checksum`` (adler32, the checksum grid storage keeps), an HTTP ``Digest``
  (asked for with ``Want-Digest: adler32``, as EOS, dCache and XRootD's HTTP answer) or
  ``ETag``, an S3 ``ETag``. ``None`` where there is none: the file is then read once.
- :func:`reads_whole`: an HTTP server that ignores byte-range requests (Python's
  ``http.server`` is one) answers every read with the whole file; such a file is fetched
  whole once per process and read from that copy (fsspec's ``simplecache``, as uproot does
  for servers it knows to be like that) instead of failing.
- :class:`Source`: the uproot source every input is opened with: uproot's fsspec source, given
  ``inputs.remote.timeout`` in the form each protocol takes it (the XRootD client, aiohttp and
  botocore each have their own) and the whole-file reads above.

Credentials are never part of a URL or of the configuration: the XRootD client finds an X.509
proxy or a token in its usual environment (``X509_USER_PROXY``, ``BEARER_TOKEN``,
``BEARER_TOKEN_FILE``), S3 clients the ``AWS_*`` variables or a profile. Over https the same
token is sent (:func:`bearer_token`), read where each request starts, on the worker, so that
it never travels with a task; plain http gets none, as it would travel in the clear.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uproot.source.fsspec import FSSpecSource

from megaset.errors import ConfigError
from megaset.extras import require_for_url

if TYPE_CHECKING:
    from megaset.config import RemoteConfig

__all__ = ["Source", "bearer_token", "expand", "protocol", "reads_whole", "require_client", "stored_checksum",
           "uproot_options"]

_LOCAL = ("file", "local")
_HTTP = ("http", "https")
# Glob characters in the path of an http(s) URL; the query after "?" may hold anything.
_HTTP_GLOB = re.compile(r"[*\[]")


def protocol(url: str) -> str:
    """The URL's scheme as fsspec names it; ``"file"`` for a plain path.

    >>> protocol("root://eosuser.cern.ch//eos/user/a/x.root"), protocol("data/x.root")
    ('root', 'file')
    """
    from fsspec.core import split_protocol

    return split_protocol(url)[0] or "file"


def require_client(url: str) -> None:
    """Raise :class:`~megaset.errors.MissingExtraError`, naming the extra to install, when
    the client that reads ``url`` (s3://, root://) is not installed."""
    require_for_url(url)


def bearer_token() -> str | None:
    """The WLCG token of this process's environment, found where the XRootD client and other
    grid tools look (WLCG Bearer Token Discovery): the ``BEARER_TOKEN`` variable, else the
    file ``BEARER_TOKEN_FILE`` names, else ``$XDG_RUNTIME_DIR/bt_u<uid>``, else
    ``/tmp/bt_u<uid>``; ``None`` when there is none. Read anew each time: tokens are short-lived,
    and whatever renews them rewrites the file.
    """
    if token := os.environ.get("BEARER_TOKEN", "").strip():
        return token
    uid = os.geteuid()
    if named := os.environ.get("BEARER_TOKEN_FILE"):
        places = [Path(named)]
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        places = [Path(runtime) / f"bt_u{uid}"] if runtime else []
        places.append(Path(f"/tmp/bt_u{uid}"))
    for place in places:
        if place.is_file() and (token := place.read_text().strip()):
            return token
    return None


def storage_options(url: str, timeout: float) -> dict[str, Any]:
    """``timeout`` as the filesystem of ``url`` takes it, and over https the bearer token: each
    client names and applies a timeout differently, and an option one does not know is an
    error in some (s3fs passes unknown options to botocore's session, which refuses them)."""
    proto = protocol(url)
    if proto == "root":
        return {"timeout": max(1, round(timeout))}  # the XRootD client counts whole seconds
    if proto in _HTTP:
        from aiohttp import ClientTimeout

        # Time without an answer, not a total: a whole-file read of a large file may take long.
        options: dict[str, Any] = {"timeout": ClientTimeout(sock_connect=timeout, sock_read=timeout)}
        token = bearer_token() if proto == "https" else None
        if token:
            options["headers"] = {"Authorization": f"Bearer {token}"}
        return options
    if proto in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout}}
    return {}


def _filesystem(url: str, timeout: float):
    from fsspec.core import url_to_fs

    return url_to_fs(url, **storage_options(url, timeout))


def expand(pattern: str, timeout: float) -> list[str]:
    """The URLs a configured path or glob names, sorted; ``[]`` when a glob matches nothing.

    A literal remote URL is returned as written, without asking its server: the file check
    asks, on the workers, and reports what is wrong in one line.
    """
    proto = protocol(pattern)
    if proto in _HTTP:
        if _HTTP_GLOB.search(pattern.split("?", 1)[0]):
            msg = (
                f"{pattern}: plain HTTP cannot list a folder, so a glob cannot be expanded; list "
                "each file's URL, or use the storage's root:// or s3:// address, where globs work"
            )
            raise ConfigError(msg)
        return [pattern]
    require_client(pattern)
    import fsspec

    if proto not in _LOCAL and not fsspec.core.has_magic(pattern):
        return [pattern]
    fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=storage_options(pattern, timeout))
    if proto in _LOCAL:
        return sorted(paths)
    # fsspec keeps the scheme in some protocols' paths and strips it from others' (s3, root):
    # unstrip_protocol puts back exactly what was taken.
    return sorted(fs.unstrip_protocol(p) for p in paths)


def stored_checksum(url: str, timeout: float) -> tuple[int, str] | None:
    """``(size, checksum)`` as the server keeps them, or ``None`` when it keeps none.

    The checksum is ``adler32:<8 hex digits>`` (the form the file check computes when it reads
    a file, so the two compare) or ``etag:<value>`` (S3 and HTTP entity tags: they change when
    the content does, but are not a checksum of it one could compute).
    """
    proto = protocol(url)
    if proto in _LOCAL:
        return None
    fs, path = _filesystem(url, timeout)
    if proto in _HTTP:
        # The request's headers replace the filesystem's: the token's goes with them.
        info = fs.info(url, headers={**fs.kwargs.get("headers", {}), "Want-Digest": "adler32"})
        digest = dict(part.strip().split("=", 1) for part in info.get("Digest", "").split(",") if "=" in part)
        adler = {k.lower(): v for k, v in digest.items()}.get("adler32")
        if adler:
            return info["size"], f"adler32:{int(adler, 16):08x}"
        return (info["size"], f"etag:{info['ETag'].strip(chr(34))}") if info.get("ETag") else None
    info = fs.info(path)
    if proto == "root":
        try:
            algorithm, value = fs.checksum(path)
        except OSError:
            return None  # a server without a checksum plug-in: the file is read instead
        return info["size"], f"{algorithm}:{int(value, 16):08x}" if algorithm == "adler32" else f"{algorithm}:{value}"
    etag = str(info.get("ETag", "")).strip('"')
    return (info["size"], f"etag:{etag}") if etag else None


def reads_whole(url: str, timeout: float) -> bool:
    """Whether ``url`` is on an HTTP server that ignores byte-range requests.

    One request for the file's first byte: a server that honours ranges answers 206 with that
    byte, one that does not answers 200 and would send the whole file (the answer is closed
    unread). fsspec would hand such a whole answer to uproot as if it were the bytes asked for.
    """
    if protocol(url) not in _HTTP:
        return False
    from fsspec.asyn import sync

    fs, _ = _filesystem(url, timeout)

    async def status() -> int:
        session = await fs.set_session()
        kwargs = dict(fs.kwargs)
        headers = {**kwargs.pop("headers", {}), "Range": "bytes=0-0"}
        async with session.get(fs.encode_url(url), headers=headers, **kwargs) as response:
            if response.status == 404:
                raise FileNotFoundError(url)
            response.raise_for_status()
            return response.status

    return sync(fs.loop, status) != 206


def open_target(url: str, timeout: float, whole: bool) -> tuple[str, dict[str, Any]]:
    """The fsspec URL and options that read ``url``: through a local whole-file copy when the
    server cannot send parts (:func:`reads_whole`)."""
    options = storage_options(url, timeout)
    if not whole:
        return url, options
    return f"simplecache::{url}", {protocol(url): options}


class Source(FSSpecSource):
    """uproot's fsspec source, opened as :func:`open_target` says (``handler`` of
    :func:`uproot_options`)."""

    def __init__(self, file_path: str, *, whole_files: tuple[str, ...] = (), timeout: float = 60.0, **options):
        target, storage = open_target(file_path, timeout, file_path in whole_files)
        super().__init__(target, **options, **storage)


def uproot_options(remote: RemoteConfig, whole_files: tuple[str, ...] = ()) -> dict[str, Any]:
    """Options of ``uproot.open`` for every input: the source above, the timeout, and how
    uproot merges the byte ranges of one read into requests (an XRootD vector read, an HTTP
    multi-range request, an S3 ranged GET)."""
    from dask.utils import parse_bytes
    from uproot.source.coalesce import CoalesceConfig

    coalesce = CoalesceConfig(
        max_range_gap=parse_bytes(remote.max_range_gap),
        max_request_ranges=remote.max_request_ranges,
        max_request_bytes=parse_bytes(remote.max_request_bytes),
    )
    return {"handler": Source, "timeout": remote.timeout, "coalesce_config": coalesce,
            "whole_files": tuple(whole_files)}
