"""Forms of the store's RMM column: bytes stored and decode cost per event, on one thread.

(a) a staging area of simulated events (``mix.py``'s: generator -> selection -> RMM, the real
    ingest kernels) or an existing one (--staging), mixed into a store in this process;
(b) the RMM rows of every group of that store written again, chunk by chunk with the store's
    chunking, in each form:
      dense   the [N, F] float32 column as the store holds it (one Zarr chunk per store chunk);
      csr     per chunk the cell indices (uint16) and values (float32) of its non-zero cells,
              row after row, and per event the number of its cells (uint16, chunked like the
              group): the CSR matrix of the chunk;
    each with the store's codec (zstd 1) and with blosc-lz4 (byte shuffle), crc32c as always;
(c) per form, on one thread (Zarr's codec pool and blosc held to one thread): the bytes stored
    per event, and the time to read a chunk back into dense rows and into
    :class:`~megaset.storage.compact.CompactRows` (the loader's form), best of --repeat passes
    over every chunk, wall and CPU microseconds per event; the rows read back are checked
    equal to the store's;
(d) the staging area mixed again with ``store.form: csr`` (:mod:`megaset.storage.csr`) and both
    stores read through ``StoreGroup.read_chunk``, dense and as cells: the readers' cost, and
    the mix's CPU time per event of each form.

    python benchmarks/store_forms.py --events 1000000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mix import staged_config, staging_arguments

FORMS = (("dense", "zstd", 1), ("csr", "zstd", 1), ("dense", "blosc-lz4", 5), ("csr", "blosc-lz4", 5))


def _stored(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")


def write_form(form: str, codecs: list, groups: list[list[np.ndarray]], target: Path) -> Callable[[int, bool], object]:
    """Write every group's chunks (dense rows) at ``target/<k>`` in ``form``, each group an
    array (or arrays) of its own as in the store; returns ``read(j, compact)`` of the ``j``-th
    chunk over all groups."""
    shutil.rmtree(target, ignore_errors=True)
    readers = [_write_group(form, codecs, chunks, target / str(k)) for k, chunks in enumerate(groups)]
    where = [(reader, i) for reader, chunks in zip(readers, groups, strict=True) for i in range(len(chunks))]

    def read(j: int, compact: bool):
        reader, i = where[j]
        return reader(i, compact)
    return read


def _write_group(form: str, codecs: list, chunks: list[np.ndarray], target: Path) -> Callable[[int, bool], object]:
    import zarr

    from megaset.storage.compact import CompactRows

    n, width, chunk_len = sum(len(c) for c in chunks), chunks[0].shape[1], len(chunks[0])
    root = zarr.open_group(str(target), mode="w", zarr_format=3)
    if form == "dense":
        array = root.create_array("rmm", shape=(n, width), chunks=(chunk_len, width), dtype="f4", compressors=codecs)
        for i, rows in enumerate(chunks):
            array[i * chunk_len:i * chunk_len + len(rows)] = rows
        array = zarr.open_array(str(target / "rmm"), mode="r")

        def read(i: int, compact: bool):
            rows = array[i * chunk_len:(i + 1) * chunk_len]
            return CompactRows.of(rows) if compact else rows
        return read
    nnz = root.create_array("nnz", shape=(n,), chunks=(chunk_len,), dtype="u2", compressors=codecs)
    for i, rows in enumerate(chunks):
        cells = CompactRows.of(rows)
        row, cell = np.divmod(cells.positions, width)
        nnz[i * chunk_len:i * chunk_len + len(rows)] = np.bincount(row, minlength=len(rows)).astype(np.uint16)
        for name, values in (("cell", cell.astype(np.uint16)), ("value", cells.values)):
            part = root.create_array(f"{name}/{i}", shape=values.shape, chunks=(max(len(values), 1),),
                                     dtype=values.dtype, compressors=codecs)
            part[:] = values
    group = zarr.open_group(str(target), mode="r")
    nnz = group["nnz"]

    def read_csr(i: int, compact: bool):
        counts = nnz[i * chunk_len:(i + 1) * chunk_len].astype(np.int32)
        cell, value = group[f"cell/{i}"][:], group[f"value/{i}"][:]
        row = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        positions = row * np.int32(width) + cell
        if compact:
            return CompactRows((len(counts), width), positions, value)
        out = np.zeros(len(counts) * width, dtype=value.dtype)
        out[positions] = value
        return out.reshape(len(counts), width)
    return read_csr


def timed(read: Callable, n_chunks: int, compact: bool, repeat: int) -> tuple[float, float, object]:
    """Best wall and CPU seconds over ``repeat`` passes of reading every chunk; the last pass's values."""
    best_wall = best_cpu = float("inf")
    last = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        last = [read(i, compact) for i in range(n_chunks)]
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, last


def stores(cfg, groups: list, chunks: list[np.ndarray], repeat: int) -> None:
    """(d): the same staging area mixed with ``store.form: csr`` beside the dense store; both
    read through ``StoreGroup.read_chunk``, dense and ``compact=("rmm",)``, one thread."""
    from megaset.storage.mix import mix
    from megaset.storage.store import open_store

    csr_cfg = cfg.replace(store={"url": cfg.store.url.replace("store.zarr", "store-csr.zarr"), "form": "csr"})
    shutil.rmtree(csr_cfg.store.url, ignore_errors=True)
    t0 = time.process_time()
    mix(csr_cfg, None)
    t_csr = time.process_time() - t0
    shutil.rmtree(cfg.store.url, ignore_errors=True)
    t0 = time.process_time()
    mix(cfg, None)
    t_dense = time.process_time() - t0
    n_events = sum(len(c) for c in chunks)
    us = 1e6 / n_events
    print(f"\n(d) the stores, store.form dense and csr, read_chunk on one thread, best of {repeat}; "
          f"microseconds per event, wall (CPU)")
    print(f"{'store.form':<22}{'B/event':>10}{'mix CPU us':>12}{'-> dense':>18}{'-> compact':>18}")
    for form, url, t_mix in (("dense", cfg.store.url, t_dense), ("csr", csr_cfg.store.url, t_csr)):
        store = open_store(url)
        where = [(store.group(g.name), i) for g in groups for i in range(g.n_chunks)]

        def read(j: int, compact: bool, where=where):
            group, i = where[j]
            return group.read_chunk(i, ("rmm",), compact=("rmm",) if compact else ())["rmm"]
        wall_d, cpu_d, dense = timed(read, len(where), False, repeat)
        wall_c, cpu_c, _ = timed(read, len(where), True, repeat)
        if not all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(dense, chunks, strict=True)):
            msg = f"the {form} store's rows differ from the dense store's"
            raise SystemExit(msg)
        stored = sum(_stored(Path(url) / g.name / ("rmm" if form == "dense" else "rmm_csr")) for g in groups)
        print(f"{form:<22}{stored / n_events:>10,.0f}{t_mix * us:>12.2f}"
              f"{wall_d * us:>10.2f} ({cpu_d * us:.2f}){wall_c * us:>10.2f} ({cpu_c * us:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    staging_arguments(parser)
    parser.add_argument("--chunk-len", type=int, default=16384, help="store.chunk_len")
    parser.add_argument("--repeat", type=int, default=5, help="passes over every chunk; the best is shown")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()

    import os

    import numcodecs.blosc
    import zarr

    from megaset.config import CompressorConfig
    from megaset.storage.codecs import compressors
    from megaset.storage.mix import mix
    from megaset.storage.store import open_store

    zarr.config.set({"threading.max_workers": 1})
    numcodecs.blosc.set_nthreads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = staged_config(args, work, chunk_len=args.chunk_len)
    shutil.rmtree(cfg.store.url, ignore_errors=True)
    mix(cfg, None)
    store = open_store(cfg.store.url)
    groups = [store.group(name) for name in store.group_names()]
    by_group = [[g.read_chunk(i, ("rmm",))["rmm"] for i in range(g.n_chunks)] for g in groups if g.n_chunks]
    chunks = [rows for group in by_group for rows in group]
    n_events = sum(len(c) for c in chunks)
    width = chunks[0].shape[1]
    filled = sum(int(np.count_nonzero(c)) for c in chunks) / n_events
    print(f"(b) {n_events:,} events in {len(chunks)} chunks of {args.chunk_len:,} over {len(groups)} groups; "
          f"{width} cells a row, {filled:.1f} non-zero on average ({filled / width:.1%}); "
          f"dense float32 {width * 4:,} B/event; load average {os.getloadavg()[0]:.1f}")

    print(f"\n(c) one thread, best of {args.repeat}; microseconds per event, wall (CPU)")
    print(f"{'form':<22}{'B/event':>10}{'ratio':>8}{'-> dense':>18}{'-> compact':>18}")
    reference = None
    for form, codec, level in FORMS:
        target = work / f"{form}-{codec}.zarr"
        read = write_form(form, compressors(CompressorConfig(codec=codec, level=level)), by_group, target)
        per_event = _stored(target) / n_events
        wall_d, cpu_d, dense = timed(read, len(chunks), False, args.repeat)
        wall_c, cpu_c, compact = timed(read, len(chunks), True, args.repeat)
        for ours, theirs, cells in zip(dense, chunks, compact, strict=True):
            if not (np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
                    and np.array_equal(cells.dense().view(np.uint32), theirs.view(np.uint32))):
                msg = f"{form} {codec}: rows read back differ from the store's"
                raise SystemExit(msg)
        reference = reference or per_event
        us = 1e6 / n_events
        print(f"{form + ', ' + codec + ' ' + str(level):<22}{per_event:>10,.0f}{reference / per_event:>8.1f}"
              f"{wall_d * us:>10.2f} ({cpu_d * us:.2f}){wall_c * us:>10.2f} ({cpu_c * us:.2f})")
        shutil.rmtree(target, ignore_errors=True)
    stores(cfg, groups, chunks, args.repeat)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
