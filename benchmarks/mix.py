"""Mix-pass throughput against a plain chunk-by-chunk Zarr copy of the same bytes, in one run.

(a) a staging area of simulated events (generator -> selection -> RMM, the real ingest kernels,
    without the ROOT round trip) or an existing one (--staging);
(b) the mix on a Dask LocalCluster: one task per output chunk, stratified shuffle, all groups;
(c) a plain copy on the same cluster: one task per output chunk, reading a contiguous range of
    the concatenated staging pieces and writing the same columns, chunking and codec;
(d) optional surveys: codecs on the same RMM rows (one core), and chunk lengths of the mix;
(e) one core, chunk by chunk: a mix task and a copy task alternately on the same process, the
    median time of each. On a machine shared with other jobs (e) is the steadier ratio.
Rates are MB/s of uncompressed RMM data; the ratio (b)/(c) is the mix's cost of mixing.

    python benchmarks/mix.py --events 1000000 --workers 2 --codecs --chunk-lens 4096 16384
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

#: Input events per background channel, as shares of --events (roughly the simulated mixture).
SHARES = {"zeejets": 0.3, "zmmjets": 0.3, "zttjets": 0.08, "ttbar": 0.12, "singletop": 0.03,
          "wjets": 0.09, "diboson": 0.05, "higgs": 0.03}
SIGNAL = "c1n2_wz_800_50"


def build_staging(url: str, events: int, signal_events: int, piece_events: int, cfg) -> None:
    """A finished staging area of simulated events, pieces of ``piece_events`` input events."""
    from megaset.pipeline.processor import piece_columns
    from megaset.pipeline.rmm import build_rmm, feature_names, rmm_inputs
    from megaset.pipeline.schema import read_events
    from megaset.pipeline.selection import select
    from megaset.pipeline.simulate import generate
    from megaset.storage.staging import finish_staging, init_staging, piece_key, write_piece

    todo = {name: int(share * events) for name, share in SHARES.items()} | {SIGNAL: signal_events}
    channels = [{"id": i, "name": n, "signal": n == SIGNAL, "data": False} for i, n in enumerate(todo)]
    init_staging(url, list(todo), {"schema_version": 1, "feature_names": feature_names(cfg.rmm),
                                   "rmm": cfg.rmm.model_dump(mode="json"), "channels": channels,
                                   "config": cfg.resolved(), "code_version": "bench"})
    files = []
    for c in channels:
        for first in range(0, todo[c["name"]], piece_events):
            n = min(piece_events, todo[c["name"]] - first)
            index, path = len(files), f"sim/{c['name']}_{first}.root"
            branches = generate(c["name"], n, seed=index, first_event=first)
            sel = select(read_events(branches, cfg.schema, path), cfg.selection, path)
            objects = rmm_inputs(sel.objects, cfg.rmm)
            # staged sparse, as the ingest stages it
            rmm = build_rmm(objects, sel.aux["met"], sel.aux["met_phi"], cfg.rmm, sparse=True)
            write_piece(url, c["name"], piece_key(f"f{index:05d}", 0, n), piece_columns(sel, rmm, c["id"], index, 1.0),
                        {"filename": path, "file_index": index, "n_read": n,
                         "cutflow": [[step, int(raw), float(w)] for step, raw, w in sel.cutflow]},
                        cfg.store.staging_compressor)
            files.append({"index": index, "channel": c["name"], "path": path, "size": 0, "checksum": "", "entries": n})
    finish_staging(url, {"files": files, "skipped": [], "cutflow": {}})


def staging_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the staging area: simulated (how many events, in pieces of how many) or given."""
    parser.add_argument("--events", type=int, default=1_000_000, help="background input events to simulate")
    parser.add_argument("--signal-events", type=int, default=50_000)
    parser.add_argument("--piece-events", type=int, default=200_000, help="input events per staging piece")
    parser.add_argument("--staging", default=None, help="use this finished staging area instead of simulating")


def staged_config(args: argparse.Namespace, work: Path, **store):
    """A config whose store is ``work/store.zarr`` (``store`` settings added) and whose staging
    area is ``--staging`` or one simulated now under ``work`` (:func:`staging_arguments`)."""
    from megaset.config import Config

    cfg = Config.model_validate({"store": {"url": str(work / "store.zarr"),
                                           "staging_url": args.staging or str(work / "staging.zarr"), **store}})
    if not args.staging:
        shutil.rmtree(cfg.store.staging, ignore_errors=True)
        t0 = time.perf_counter()
        build_staging(cfg.store.staging, args.events, args.signal_events, args.piece_events, cfg)
        print(f"(a) staged {args.events + args.signal_events:,} simulated events: {time.perf_counter() - t0:.1f} s")
    return cfg


def _copy_chunk(bounds: tuple[int, int], pieces: list[tuple[str, str, int]], staging: str, url: str,
                columns: list[str]) -> int:
    """Plain copy of rows ``bounds`` (one output chunk) of the concatenated pieces into ``url``."""
    import zarr

    from megaset.storage.staging import read_piece

    first, stop = bounds
    parts: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    offset = 0
    for channel, key, n in pieces:
        lo, hi = max(first - offset, 0), min(stop - offset, n)
        if lo < hi:
            for name, values in read_piece(staging, channel, key, columns, slice(lo, hi)).items():
                parts[name].append(values)
        offset += n
    root = zarr.open_group(url, mode="r+")
    for name in columns:
        root[name].with_config({"write_empty_chunks": True})[first:stop] = np.concatenate(parts[name])
    return stop - first


def plain_copy(client, staging: str, url: str, chunk_len: int, codec) -> float:
    """Seconds to copy every staged row, chunk by chunk, one Dask task per output chunk."""
    import zarr

    from megaset.storage.codecs import compressors
    from megaset.storage.staging import list_pieces, piece_schema

    listing = list_pieces(staging)
    pieces = [(ch, key, int(a["n_rows"])) for ch, ps in listing.items() for key, a in ps if int(a["n_rows"])]
    total = sum(n for _, _, n in pieces)
    schema = piece_schema(next(a for ps in listing.values() for _, a in ps))
    root = zarr.create_group(store=url, overwrite=True)
    for name, (dtype, tail) in schema.items():
        root.create_array(name, shape=(total, *tail), dtype=dtype, chunks=(chunk_len, *tail),
                          compressors=compressors(codec))
    bounds = [(k * chunk_len, min((k + 1) * chunk_len, total)) for k in range(-(-total // chunk_len))]
    t0 = time.perf_counter()
    futures = client.map(_copy_chunk, bounds, pieces=pieces, staging=staging,
                         url=url, columns=sorted(schema), pure=False)
    assert sum(client.gather(futures)) == total
    return time.perf_counter() - t0


def mix_vs_copy(cfg, client, work: Path, repeat: int) -> tuple[int, int, float, float, float, dict[str, float]]:
    """(b) and (c) from ``cfg.store.staging``: ``(rows, RMM bytes, mix s, copy s, compression
    ratio, the least CPU s of each side, driver and workers: {"mix", "copy"})``.

    The mix writes ``cfg.store.url`` and the copy a scratch store under ``work``, alternately,
    best of ``repeat`` each: other load on the machine hits both alike.
    """
    from ingest import cluster_cpu
    from megaset.storage.mix import mix
    from megaset.storage.store import open_store

    t_mix, t_copy = [], []
    cpu = {"mix": float("inf"), "copy": float("inf")}
    for _ in range(repeat):
        shutil.rmtree(cfg.store.url, ignore_errors=True)
        c0 = cluster_cpu(client)
        t_mix.append(mix(cfg, client)["seconds"])
        cpu["mix"] = min(cpu["mix"], cluster_cpu(client) - c0)
        c0 = cluster_cpu(client)  # the copy's CPU includes its setup, which its time leaves out
        t_copy.append(plain_copy(client, cfg.store.staging, str(work / "copy.zarr"), cfg.store.chunk_len,
                                 cfg.store.compressor))
        cpu["copy"] = min(cpu["copy"], cluster_cpu(client) - c0)
        shutil.rmtree(work / "copy.zarr", ignore_errors=True)
    store = open_store(cfg.store.url)
    n_rows = sum(store.group(g).n_events for g in store.group_names())
    rmm_raw = n_rows * len(store.feature_names) * 4
    rmm_stored = sum(_stored(Path(cfg.store.url) / g / "rmm") for g in store.group_names())
    return n_rows, rmm_raw, min(t_mix), min(t_copy), rmm_raw / rmm_stored, cpu


def per_chunk(cfg, work: Path, n_chunks: int = 12) -> tuple[float, float]:
    """(e): median seconds of a train-chunk mix task and of a copy task, alternating, one core."""
    import zarr

    from megaset.storage.codecs import compressors
    from megaset.storage.mix import prepare_mix
    from megaset.storage.mix_chunk import build_chunk
    from megaset.storage.staging import list_pieces

    staging, url, chunk_len = cfg.store.staging, str(work / "per-chunk.zarr"), cfg.store.chunk_len
    shutil.rmtree(url, ignore_errors=True)
    listing = list_pieces(staging)
    job = prepare_mix(cfg.replace(store={"url": url, "staging_url": staging}))
    plan, columns, kwargs = job.plan, job.columns, job.chunk_kwargs()
    pieces = [(ch, key, int(a["n_rows"])) for ch, ps in listing.items() for key, a in ps if int(a["n_rows"])]
    copy = zarr.create_group(store=str(work / "copy.zarr"), overwrite=True)
    for name, (dtype, tail) in columns.items():
        copy.create_array(name, shape=(sum(n for *_, n in pieces), *tail), dtype=dtype, chunks=(chunk_len, *tail),
                          compressors=compressors(cfg.store.compressor))
    t_mix, t_copy = [], []
    # Whole chunks only: the group's last one may be short.
    n_chunks = min(n_chunks, plan.group("train").n_chunks - 1)
    for k, task in enumerate(plan.tasks("train", range(n_chunks))):
        t0 = time.perf_counter()
        build_chunk(task, **kwargs)
        t_mix.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _copy_chunk((k * chunk_len, (k + 1) * chunk_len), pieces, staging, str(work / "copy.zarr"), sorted(columns))
        t_copy.append(time.perf_counter() - t0)
    shutil.rmtree(work / "copy.zarr", ignore_errors=True)
    # The first two warm up (array metadata, allocator).
    return float(np.median(t_mix[2:])), float(np.median(t_copy[2:]))


def _stored(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def codec_survey(rows: np.ndarray, chunk_len: int, work: Path) -> None:
    """Write / read rate and compression ratio of each codec on the same RMM rows, one core."""
    import zarr

    from megaset.config import CompressorConfig
    from megaset.storage.codecs import compressors

    print(f"\n(d) codecs on {len(rows):,} RMM rows in chunks of {chunk_len}, 1 core:")
    print(f"{'codec':<16}{'ratio':>8}{'write MB/s':>12}{'read MB/s':>12}")
    for codec, level in (("none", 0), ("blosc-lz4", 5), ("blosc-zstd", 1), ("blosc-zstd", 3),
                         ("zstd", 1), ("zstd", 3), ("zstd", 6)):
        target = work / f"codec-{codec}-{level}.zarr"
        shutil.rmtree(target, ignore_errors=True)
        array = zarr.create_array(store=str(target), shape=rows.shape, dtype=rows.dtype,
                                  chunks=(chunk_len, rows.shape[1]),
                                  compressors=compressors(CompressorConfig(codec=codec, level=level)))
        t0 = time.perf_counter()
        array[...] = rows
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        array[...]
        t_read = time.perf_counter() - t0
        print(f"{codec + ' ' + str(level):<16}{rows.nbytes / _stored(target):>8.1f}"
              f"{rows.nbytes / t_write / 1e6:>12,.0f}{rows.nbytes / t_read / 1e6:>12,.0f}")
        shutil.rmtree(target, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    staging_arguments(parser)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of (b) and (c) each; the best is shown")
    parser.add_argument("--chunk-lens", type=int, nargs="*", default=[], help="also mix with these chunk lengths")
    parser.add_argument("--codecs", action="store_true", help="survey the codecs on the same RMM rows")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from megaset.storage.store import open_store

    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = staged_config(args, work)

    runs = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        for chunk_len in [cfg.store.chunk_len, *args.chunk_lens]:
            run_cfg = cfg.replace(store={"chunk_len": chunk_len, "url": str(work / f"store-{chunk_len}.zarr")})
            runs.append((chunk_len, *mix_vs_copy(run_cfg, client, work, args.repeat)))

    codec = cfg.store.compressor
    print(f"\n{args.workers} workers, codec {codec.codec} level {codec.level}; MB/s of uncompressed RMM data, "
          f"best of {args.repeat}")
    print(f"{'chunk_len':>10}{'events':>12}{'RMM MB':>10}{'(b) mix':>10}{'(c) copy':>10}{'ratio':>8}{'compr.':>8}")
    for chunk_len, n_rows, raw, t_mix, t_copy, ratio, cpu in runs:
        print(f"{chunk_len:>10,}{n_rows:>12,}{raw / 1e6:>10,.0f}{raw / t_mix / 1e6:>10,.0f}"
              f"{raw / t_copy / 1e6:>10,.0f}{t_copy / t_mix:>8.2f}{ratio:>8.1f}"
              f"   CPU s: mix {cpu['mix']:.2f}, copy {cpu['copy']:.2f}")
    print("(b) includes planning, layout creation, metadata and the completion mark.")

    print(f"\n(e) one core, train chunks of {cfg.store.chunk_len}, alternating, median per chunk:")
    t_mix, t_copy = per_chunk(cfg, work)
    raw = cfg.store.chunk_len * len(open_store(str(work / f"store-{cfg.store.chunk_len}.zarr")).feature_names) * 4
    print(f"mix task {t_mix * 1e3:.0f} ms ({raw / t_mix / 1e6:,.0f} MB/s), copy task {t_copy * 1e3:.0f} ms "
          f"({raw / t_copy / 1e6:,.0f} MB/s), ratio {t_copy / t_mix:.2f}")

    if args.codecs:
        train = open_store(str(work / f"store-{cfg.store.chunk_len}.zarr")).group("train")
        rows = np.concatenate([train.read_chunk(i, ("rmm",))["rmm"] for i in range(min(train.n_chunks, 8))])
        codec_survey(rows, cfg.store.chunk_len, work)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
