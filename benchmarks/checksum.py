"""The cost of the crc32c checksum on every chunk (``storage/codecs.py``), measured in one run.

The same RMM-like rows (float32, 529 cells, about 2 % of them non-zero, as a 2-lepton event)
are written to and read back from a local Zarr array chunked like the store (``store.chunk_len``
events per chunk), with the store's compressor and then with and without the checksum. The
two variants run in turn ``--repeat`` times and the best time of each is kept, so that load
from elsewhere on the machine hits both alike.

    python benchmarks/checksum.py --events 200000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def rows(n: int, width: int = 529, fill: float = 0.02, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, width), dtype=np.float32)
    hit = rng.random((n, width)) < fill
    out[hit] = rng.exponential(0.3, int(hit.sum())).astype(np.float32)
    return out


def write_read(values: np.ndarray, path: Path, chunk_len: int, checksum: bool,
               codec: str) -> tuple[float, float, float, float]:
    """Wall seconds to write the whole array, then to read it back chunk by chunk as the readers
    do, and the CPU seconds of this process for each (zarr's threads included): unlike wall
    time, other jobs on the machine leave them comparable."""
    import zarr

    from megaset.config import CompressorConfig
    from megaset.storage.codecs import compressors

    shutil.rmtree(path, ignore_errors=True)
    array = zarr.create_array(store=str(path), shape=values.shape, chunks=(chunk_len, values.shape[1]),
                              dtype=values.dtype, compressors=compressors(CompressorConfig(codec=codec), checksum))
    t0, c0 = time.perf_counter(), time.process_time()
    array[:] = values
    t1, c1 = time.perf_counter(), time.process_time()
    for start in range(0, len(values), chunk_len):
        array[start:start + chunk_len]
    return t1 - t0, time.perf_counter() - t1, c1 - c0, time.process_time() - c1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--chunk-len", type=int, default=16_384)
    parser.add_argument("--codec", default="zstd", choices=("zstd", "blosc-lz4", "blosc-zstd", "none"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    values = rows(args.events)
    mb = values.nbytes / 1e6
    best = {False: [np.inf] * 4, True: [np.inf] * 4}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for checksum in (False, True):
                times = write_read(values, Path(tmp) / "a.zarr", args.chunk_len, checksum, args.codec)
                best[checksum] = [min(b, t) for b, t in zip(best[checksum], times, strict=True)]
    print(f"{args.events:,} rows of {values.shape[1]} float32 cells ({mb:.0f} MB), chunks of {args.chunk_len}, "
          f"{args.codec}, best of {args.repeat}")
    for i, what in enumerate(("write", "read")):
        plain, crc = best[False][i], best[True][i]
        cpu_plain, cpu_crc = best[False][i + 2], best[True][i + 2]
        print(f"  {what:5}: wall without {mb / plain:5.0f} MB/s, with crc32c {mb / crc:5.0f} MB/s, ratio "
              f"{crc / plain:.3f}; CPU without {cpu_plain:.2f} s, with {cpu_crc:.2f} s, "
              f"ratio {cpu_crc / cpu_plain:.3f}")


if __name__ == "__main__":
    main()
