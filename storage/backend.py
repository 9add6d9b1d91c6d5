"""Small Zarr v3 helpers shared by the writers (mix, score), the reader API and verify.

Any fsspec URL works: a local path, ``file://``, ``s3://bucket/key`` (credentials and endpoint
from the usual ``AWS_*`` environment variables, which Dask worker processes inherit), ...
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from megaset.errors import DamagedChunkError, MegasetError, StoreError
from megaset.extras import require_for_url

__all__ = ["open_group", "chunk_exists", "float_fill", "writing", "checked_reads", "damaged_chunks",
           "remove_tree", "is_local", "reach"]

#: Write failures that no retry cures, and what would.
_REFUSED = {
    errno.ENOSPC: "free space on its filesystem, or set {key} to a filesystem with more room",
    errno.EDQUOT: "free space within your quota, or set {key} to a filesystem with more room",
    errno.EROFS: "set {key} to a location on a writable filesystem",
    errno.EACCES: "check the permissions of that path or set {key} to a location you can write to",
    errno.EPERM: "check the permissions of that path or set {key} to a location you can write to",
}


def open_group(url: str, path: str = "", *, mode: str = "r", what: str = "store", hint: str = ""):
    """The Zarr group at ``path`` inside ``url``; a missing one raises :class:`StoreError`
    naming it (and ``hint``, what would create it)."""
    import zarr

    require_for_url(url)
    target = f"{url.rstrip('/')}/{path}" if path else url
    try:
        return zarr.open_group(store=target, mode=mode, zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, KeyError) as err:
        msg = f"no {what} at {target!r}" + (f": {hint}" if hint else f" ({err})")
        raise StoreError(msg) from err


def chunk_exists(array: Any, index: int) -> bool:
    """Whether chunk ``index`` (along the first axis) of a Zarr array is stored."""
    from zarr.core.sync import sync

    coords = (index,) + (0,) * (array.ndim - 1)
    path = array.store_path
    key = f"{path.path}/{array.metadata.encode_chunk_key(coords)}" if path.path else (
        array.metadata.encode_chunk_key(coords))
    return bool(sync(path.store.exists(key)))


def remove_tree(url: str) -> None:
    """Delete everything under ``url`` (a store or staging area being rebuilt); nothing there is fine."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def is_local(url: str) -> bool:
    """Whether ``url`` is a path or ``file://`` URL (else an object store or other remote filesystem)."""
    from fsspec.core import split_protocol

    protocol, _ = split_protocol(url)
    return protocol in (None, "file", "local")


def _probe_options(protocol: str, timeout_s: float) -> dict[str, Any]:
    """Options of a filesystem that answers or fails within about ``timeout_s``: botocore would
    otherwise retry a refused connection for half a minute (its retries within s3fs's)."""
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s,
                                  "retries": {"max_attempts": 1, "mode": "standard"}}}
    return {}


def _endpoint(fs: Any, url: str) -> str:
    """The server ``fs`` talks to: S3's endpoint (``AWS_ENDPOINT_URL`` or AWS), else the URL's host."""
    from urllib.parse import urlsplit

    try:
        client = fs.s3  # s3fs's client, once connected
    except Exception:  # noqa: BLE001  # not s3fs, or not connected: the other sources below
        client = None
    if client is not None:
        return str(client.meta.endpoint_url)
    options = getattr(fs, "client_kwargs", None) or {}
    return str(options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or urlsplit(url).netloc)


def _cause(err: BaseException, timeout_s: float) -> str:
    """What failed, in a few words and the library's own message."""
    chain = [err, err.__cause__, err.__context__]
    text = " ".join(str(e) for e in chain if e is not None)
    if isinstance(err, TimeoutError) or "timeout" in text.lower() or "timed out" in text.lower():
        return _silent(timeout_s)
    if isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return (f"access denied ({err}): check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                "~/.aws) and the bucket's policy")
    if "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return f"the credentials are refused ({err}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws"
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"no such bucket ({err}): create it, or name an existing one"
    if "Could not connect" in text or "Connect call failed" in text or isinstance(err, ConnectionError):
        return f"nothing answers there ({err}): check the endpoint (AWS_ENDPOINT_URL) and that the server runs"
    return f"{type(err).__name__}: {err}"


def _silent(timeout_s: float) -> str:
    return (f"no answer within {timeout_s:g} s: check the endpoint and the network, or raise store.connect_timeout_s "
            "for a slow one")


def reach(url: str, *, key: str = "store.url", timeout_s: float = 5.0) -> None:
    """Ask the filesystem of ``url`` about it once, giving up after about ``timeout_s``: an
    unreachable or refusing object store raises :class:`StoreError` naming ``key``, ``url``,
    the endpoint and the cause, before any work starts. A local path is not asked."""
    import threading

    from fsspec.core import split_protocol, url_to_fs

    if is_local(url):
        return
    require_for_url(url)  # a missing client is a missing extra, not an unreachable store
    protocol, _ = split_protocol(url)
    outcome: list[BaseException | None] = []
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            fs, path = url_to_fs(url, skip_instance_cache=True, **_probe_options(str(protocol), timeout_s))
            box["fs"] = fs
            if hasattr(fs, "retries"):
                fs.retries = 1  # s3fs's own retries, around botocore's
            with contextlib.suppress(FileNotFoundError):  # reachable; the output is made by its writer
                fs.info(path)
            outcome.append(None)
        except Exception as err:  # noqa: BLE001  # every failure of a foreign client is reported in one line below
            outcome.append(err)

    # A thread bounds the wait for filesystems that take no timeout option.
    thread = threading.Thread(target=ask, daemon=True, name=f"reach {url}")
    thread.start()
    thread.join(timeout_s + 2)
    fs = box.get("fs")
    endpoint = _endpoint(fs, url) if fs is not None else url
    if not outcome:
        cause = _silent(timeout_s)
    elif outcome[0] is None:
        return
    else:
        cause = _cause(outcome[0], timeout_s)
    msg = f"{key} {url!r}: cannot reach the object store at {endpoint}: {cause}"
    raise StoreError(msg)


def float_fill(dtype: np.dtype) -> Any:
    """The fill value of a new column: NaN for floats, so an unwritten chunk reads as missing."""
    return np.nan if np.dtype(dtype).kind == "f" else 0


@contextlib.contextmanager
def writing(url: str, command: str, *, what: str = "store", key: str = "store.url") -> Iterator[None]:
    """Turn a refused write into the store (disk full, quota, read-only, permissions), here or
    in a Dask task, into a :class:`StoreError` naming ``url`` (a ``what``, set by the config
    ``key``), the cause and the fix, and saying that ``command`` resumes."""
    try:
        yield
    except MegasetError:
        raise
    except OSError as err:
        if err.errno not in _REFUSED:
            raise
        cause = os.strerror(err.errno)
        msg = (
            f"cannot write to {what} {url!r}: {cause[0].lower()}{cause[1:]}{_place(err.filename, url)}; "
            f"{_REFUSED[err.errno].format(key=key)}, then rerun `{command}`: finished chunks are kept"
        )
        raise StoreError(msg) from err


def _place(filename: Any, url: str) -> str:
    """`` (at <path>)`` for the path a write failed at, when it is a path other than ``url``
    itself. A full disk often fails the final flush, which names no file;
    other layers put a file descriptor or nothing at all there, which would say nothing."""
    if not isinstance(filename, str | bytes | os.PathLike):
        return ""
    path = os.fsdecode(filename).rstrip("/")
    return f" (at {path})" if path and path != url.rstrip("/") else ""


#: What zarr's crc32c codec says of a chunk whose bytes changed after it was written.
_CHECKSUM_MISMATCH = "Stored and computed checksum do not match"


def _is_damage(err: BaseException) -> bool:
    return isinstance(err, ValueError) and _CHECKSUM_MISMATCH in str(err)


def _chunk_ranges(array: Any, selection: Any) -> list[range]:
    """Per axis, the chunks a selection of slices (or ``...``) touches."""
    parts = selection if isinstance(selection, tuple) else (selection,)
    parts = tuple(slice(None) if p is Ellipsis else p for p in parts)
    parts += (slice(None),) * (array.ndim - len(parts))
    out = []
    for part, size, chunk in zip(parts, array.shape, array.chunks, strict=True):
        start, stop, _ = part.indices(size) if isinstance(part, slice) else (int(part), int(part) + 1, 1)
        out.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
    return out


async def damaged_chunks(array: Any, selection: Any = ...) -> list[str]:
    """The stored chunks of a Zarr ``AsyncArray`` in ``selection`` (slices or ``...``) whose
    crc32c checksum fails, as ``<array URL>/<chunk key>``; each chunk is read on its own."""

    async def bad(coords: tuple[int, ...]) -> str | None:
        block = tuple(slice(c * n, min((c + 1) * n, size)) for c, n, size in zip(coords, array.chunks, array.shape,
                                                                                 strict=True))
        try:
            await array.getitem(block)
        except ValueError as err:
            if _is_damage(err):
                return f"{array.store_path}/{array.metadata.encode_chunk_key(coords)}"
            raise
        return None

    found = await asyncio.gather(*(bad(c) for c in itertools.product(*_chunk_ranges(array, selection))))
    return [f for f in found if f is not None]


async def checked_reads(reads: Sequence[tuple[Any, Any]], where: str, fix: str) -> list[np.ndarray]:
    """``array.getitem(selection)`` of every ``(AsyncArray, selection)``, concurrently. A chunk
    whose checksum fails raises :class:`DamagedChunkError` naming ``where`` (the group read),
    every damaged chunk of the reads and ``fix``, instead of zarr's bare ``ValueError``."""
    try:
        return list(await asyncio.gather(*(array.getitem(selection) for array, selection in reads)))
    except ValueError as err:
        if not _is_damage(err):
            raise
        found = [c for array, selection in reads for c in await damaged_chunks(array, selection)]
        msg = (f"{where}: damaged chunk{'s' if len(found) > 1 else ''} {', '.join(found) or '(not found again)'}: "
               f"the bytes stored no longer match their crc32c checksum (a disk, transfer or copy fault); {fix}")
        raise DamagedChunkError(msg, found) from None
