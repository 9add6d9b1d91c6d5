"""Small Zarr v3 helpers shared by the mix (writer), the reader API and verify.

Any fsspec URL works: a local path, ``file://``, ``s3://bucket/key`` (credentials and endpoint
from the usual ``AWS_*`` environment variables, which Dask worker processes inherit), ...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megaset.errors import StoreError

__all__ = ["open_group", "chunk_exists", "stored_bytes", "float_fill"]


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
