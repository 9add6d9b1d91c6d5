"""Small Zarr v3 helpers shared by the writers (mix, score), the reader API and verify.

Any fsspec URL works: a local path, ``file://``, ``s3://bucket/key`` (credentials and endpoint
from the usual ``AWS_*`` environment variables, which Dask worker processes inherit), ...
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from megaset.errors import MegasetError, StoreError

__all__ = ["open_group", "chunk_exists", "stored_bytes", "float_fill", "writing"]

#: Write failures that no retry cures, and what would.
_REFUSED = {
    errno.ENOSPC: "free space on its filesystem, or set store.url to a filesystem with more room",
    errno.EDQUOT: "free space within your quota, or set store.url to a filesystem with more room",
    errno.EROFS: "set store.url to a location on a writable filesystem",
    errno.EACCES: "check the permissions of that path or set store.url to a location you can write to",
    errno.EPERM: "check the permissions of that path or set store.url to a location you can write to",
}


def open_group(url: str, path: str = "", *, mode: str = "r", what: str = "store", hint: str = ""):
    """The Zarr group at ``path`` inside ``url``; a missing one raises :class:`StoreError`
    naming it (and ``hint``, what would create it)."""
    import zarr

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


def stored_bytes(url: str) -> int:
    """Bytes the store at ``url`` occupies (compressed chunks and metadata)."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url)
    return int(fs.du(root, total=True))


def float_fill(dtype: np.dtype) -> Any:
    """The fill value of a new column: NaN for floats, so an unwritten chunk reads as missing."""
    return np.nan if np.dtype(dtype).kind == "f" else 0


@contextlib.contextmanager
def writing(url: str, command: str) -> Iterator[None]:
    """Turn a refused write into the store (disk full, quota, read-only, permissions), here or
    in a Dask task, into a :class:`StoreError` naming ``url``, the cause and the fix, and
    saying that ``command`` resumes."""
    try:
        yield
    except MegasetError:
        raise
    except OSError as err:
        if err.errno not in _REFUSED:
            raise
        # A full disk often fails the final flush, which names no file.
        at = f" (at {err.filename})" if err.filename and str(err.filename).rstrip("/") != url.rstrip("/") else ""
        cause = os.strerror(err.errno)
        msg = (
            f"cannot write to store {url!r}: {cause[0].lower()}{cause[1:]}{at}; {_REFUSED[err.errno]}, "
            f"then rerun `{command}`: finished chunks are kept"
        )
        raise StoreError(msg) from err
