"""Compressor settings of the config turned into Zarr v3 codecs, in one place."""

from __future__ import annotations

from typing import Any

from megaset.config import CompressorConfig

__all__ = ["compressors"]


def compressors(cfg: CompressorConfig) -> list[Any]:
    """The ``compressors=`` argument of ``zarr.create_array`` for a compressor config.

    >>> compressors(CompressorConfig(codec="none"))
    []
    >>> type(compressors(CompressorConfig(codec="zstd", level=3))[0]).__name__
    'ZstdCodec'
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    if cfg.codec == "none":
        return []
    if cfg.codec == "zstd":
        return [ZstdCodec(level=cfg.level)]
    cname = cfg.codec.removeprefix("blosc-")
    # Byte shuffle groups the float32 exponent bytes of the many zero/near-equal RMM cells.
    return [BloscCodec(cname=cname, clevel=min(cfg.level, 9), shuffle="shuffle")]
