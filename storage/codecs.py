"""Compressor settings of the config turned into Zarr v3 codecs (and a checksum), in one place."""

from __future__ import annotations

from typing import Any

from megaset.config import CompressorConfig

__all__ = ["compressors"]


def compressors(cfg: CompressorConfig, checksum: bool = True) -> list[Any]:
    """The ``compressors=`` argument of ``zarr.create_array`` for a compressor config.

    With ``checksum`` (every array megaset writes) the compressed bytes of each chunk carry
    zarr v3's ``crc32c`` checksum, checked at every read: a chunk damaged on disk or in a
    copy is an error naming it instead of wrong values or a decompressor's complaint
    (benchmarks/checksum.py measures the cost).

    >>> [type(c).__name__ for c in compressors(CompressorConfig(codec="none"))]
    ['Crc32cCodec']
    >>> [type(c).__name__ for c in compressors(CompressorConfig(codec="zstd", level=3), checksum=False)]
    ['ZstdCodec']
    """
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    tail = [Crc32cCodec()] if checksum else []
    if cfg.codec == "none":
        return tail
    if cfg.codec == "zstd":
        return [ZstdCodec(level=cfg.level), *tail]
    cname = cfg.codec.removeprefix("blosc-")
    # Byte shuffle groups the float32 exponent bytes of the many zero/near-equal RMM cells.
    return [BloscCodec(cname=cname, clevel=min(cfg.level, 9), shuffle="shuffle"), *tail]
