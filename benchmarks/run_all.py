"""The whole pipeline at two sample sizes, and every stage against a plain baseline, in one run.

(1) The chain of ``megaset run`` (simulate -> ingest -> mix -> train -> score -> report) at
    --compare and at --events simulated background events, each in a fresh driver process with
    a fresh LocalCluster of --workers worker processes: wall seconds and events/s per stage, the
    peak resident memory of the driver and of every worker over the whole chain and within each
    stage (measured in each process), and the memory flatness, peak at --events / peak at
    --compare, for the driver and the largest worker: PASS when at most 1.3. The training
    settings (TRAINING below) and the chunking are the same at both sizes, and the chunks are
    chosen small enough to be full in the smaller sample too (see _arguments).
(2) On the --events run's files and store, side by side on one fresh cluster:
    ingest vs uproot reading the same branches (benchmarks/ingest.py);
    the mix vs a plain chunk-by-chunk copy of the same staging rows (benchmarks/mix.py);
    training steps fed by the streaming loader vs by in-memory tensors, whole epochs after a
    first one that fills the loader's cache (benchmarks/training.py), and the first epoch's rate;
    scoring on the cluster vs a plain forward pass of the same model over the same events held
    in memory, on as many cores (the Dask overhead);
    an SQL query (the 1 % highest scores above a MET cut) vs reading the same columns with
    zarr and numpy, each in a fresh process: time, and peak memory above the imports (the first
    run included: for polars that is mostly its library's code paged in) and above a warmed
    engine (the memory the query holds for its data; the target is on this one).
Every ratio is measured / baseline, both taken in this run, and is printed with its target
(TARGETS) and PASS or FAIL. The exit status is 1 when a flatness check or a target fails, the
forward pass's scores or the query's rows differ from the stored ones or the plain read's, or
a worker was restarted during a pipeline run.

    python benchmarks/run_all.py --events 8000000 --compare 1000000 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ingest import read_vs_ingest
from mix import mix_vs_copy
from training import alternate, isolated, peak_rss_mib

#: Training inside the pipeline, the same at every size: a fixed number of epochs keeps its
#: time proportional to the train group (about 2 % of the simulated events).
TRAINING = {"model": "ae-shallow", "epochs": 2, "early_stopping": {"patience": 1000}}
#: Share of the simulated background events that end in the train group (default selection and
#: splits, measured), to check before the long runs that every DDP rank gets a chunk.
TRAIN_SHARE = 0.021
FLATNESS_LIMIT = 1.3
MET_CUT = 50.0  # GeV, the cut of the query
#: Side-by-side targets: key -> (the least measured / baseline ratio that passes, or with
#: ``at_most`` the largest).
TARGETS = {
    "ingest": 0.8,
    "mix": 0.8,
    "train": 0.95,
    "score": 0.8,
    "query": 0.8,
    "query_memory": 2.0,
}
AT_MOST = {"query_memory"}


def pipeline_config(work: Path, events: int, workers: int, chunk_len: int, input_chunk: int):
    """The demo configuration, scaled to ``events`` simulated background events under ``work``,
    with ``input_chunk`` events per simulated file and per ingest chunk."""
    from megaset.config import Config

    return Config.model_validate({
        "simulate": {"output": str(work / "ntuples"), "events": events, "events_per_file": input_chunk},
        "inputs": {"chunksize": input_chunk},
        "store": {"url": str(work / "store.zarr"), "chunk_len": chunk_len},
        "cluster": {"workers": workers},
        "training": {"output": str(work / "models"), **TRAINING},
        # One model's chain, stage by stage as the figures below were taken (the default
        # combination would add a second model's training and scoring to each run).
        "scoring": {"combine": {}},
        "report": {"output": str(work / "report")},
    })


def _stage_events(out: dict[str, Any]) -> dict[str, int]:
    """Events each stage handled: input events for simulate and ingest, store events for the
    mix, scoring and report, train events x epochs for training."""
    groups = out["mix"]["groups"]
    stored = sum(g["n_events"] for g in groups.values())
    return {"simulate": out["ingest"].n_read, "ingest": out["ingest"].n_read, "mix": stored,
            "train": groups["train"]["n_events"] * out["train"]["epochs"],
            "score": out["score"]["events_scored"], "report": stored}


def _pipeline(work: str, events: int, workers: int, chunk_len: int, input_chunk: int) -> dict[str, Any]:
    """One fresh run of the whole chain; run in a fresh process (see ``isolated``).

    The peaks of the driver and of each worker are read, and started anew, after every stage;
    their maximum is the peak of the whole chain. Each worker's is read inside the worker
    process: its own, whoever started it.
    """
    from megaset.deploy.cluster import open_client
    from megaset.run import STAGES, run

    cfg = pipeline_config(Path(work), events, workers, chunk_len, input_chunk)
    stages: dict[str, dict[str, Any]] = {}
    with open_client(cfg.cluster) as client:
        client.wait_for_workers(workers)
        first = client.run(os.getpid)

        def log(line: str) -> None:
            print(f"  [{events:,} events] {line}", flush=True)
            stage = line.split(":", 1)[0]
            if stage in STAGES and line.startswith(f"{stage}: done"):
                stages[stage] = {"driver": peak_rss_mib(reset=True), "workers": client.run(peak_rss_mib, reset=True)}

        out = run(cfg, client, log=log)
        last = client.run(os.getpid)
        stages["end"] = {"driver": peak_rss_mib(), "workers": client.run(peak_rss_mib)}
    for peaks in stages.values():
        peaks["workers"] = {last.get(addr, addr): mib for addr, mib in peaks["workers"].items()}
    return {
        "events": events,
        "seconds": out["seconds"],
        "stage_events": _stage_events(out),
        "store_events": {name: g["n_events"] for name, g in out["mix"]["groups"].items()},
        "train_epochs": out["train"]["epochs"],
        "stage_peaks_mib": stages,
        "driver_peak_mib": max(p["driver"] for p in stages.values()),
        "workers_peak_mib": {pid: max(p["workers"].get(pid, 0.0) for p in stages.values()) for pid in last.values()},
        "workers_restarted": sorted(first.values()) != sorted(last.values()),
        "worker_pids": {"start": sorted(first.values()), "end": sorted(last.values())},
    }


def run_pipeline(work: Path, events: int, workers: int, chunk_len: int, input_chunk: int) -> dict[str, Any]:
    """The whole chain at ``events`` in a fresh driver process."""
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    out = isolated(_pipeline, str(work), events, workers, chunk_len, input_chunk)[0]
    return {**out, "wall_s": time.perf_counter() - t0}


#: The peaks the flatness check compares: key, label, value in a run_pipeline result.
PEAKS = (("driver", "driver", lambda r: r["driver_peak_mib"]),
         ("worker_max", "largest worker", lambda r: max(r["workers_peak_mib"].values())))


def flatness(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS at the large size over the small one, for the driver and the largest worker."""
    out = {}
    for name, _, key in PEAKS:
        ratio = key(large) / key(small)
        out[name] = {"small_mib": key(small), "large_mib": key(large), "ratio": ratio,
                     "pass": ratio <= FLATNESS_LIMIT}
    return out


# ---------------------------------------------------------------------------- side by side


def _best_of(repeat: int, fn) -> tuple[float, Any]:
    """Shortest wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _forward(cfg, threads: int, repeat: int) -> dict[str, Any]:
    """Plain forward pass: every event of the store, scaled, in memory; the model on ``threads``."""
    import torch

    from megaset.storage.scores import score_column
    from megaset.storage.store import open_store
    from megaset.training.checkpoint import load_model
    from megaset.training.score import checkpoint_path, reconstruction_errors

    torch.set_num_threads(threads)
    model, scaling, _ = load_model(checkpoint_path(cfg, cfg.training.model))
    store = open_store(cfg.store.url)
    groups = [store.group(name) for name in store.group_names()]
    column = score_column(cfg.training.model)
    x = np.concatenate([scaling(c["rmm"]) for g in groups for _, c in g.iter_chunks(("rmm",))])
    stored = np.concatenate([c[column] for g in groups for _, c in g.iter_chunks((column,))])
    blocks = cfg.scoring.blocks
    reconstruction_errors(model, x[: cfg.scoring.batch_size], blocks=blocks)  # warm
    seconds, errors = _best_of(repeat, lambda: reconstruction_errors(
        model, x, blocks=blocks, batch_size=cfg.scoring.batch_size))
    return {"events": len(x), "seconds": seconds,
            "agrees_with_store": bool(np.allclose(errors["total"], stored, rtol=1e-4, atol=1e-7))}


def top_scores_sql(cfg, k: int) -> str:
    """The query: the ``k`` highest scores of the train group above the MET cut."""
    from megaset.storage.query import sql_name
    from megaset.storage.scores import score_column

    score = sql_name(score_column(cfg.training.model))
    return (f"SELECT channel, met, m_ll, {score} FROM train WHERE met > {MET_CUT} "
            f"ORDER BY {score} DESC LIMIT {k}")


def _measured_query(run, repeat: int) -> dict[str, Any]:
    """Time ``run`` (best of ``repeat``) in this fresh process, and its peak memory twice: above
    the imports, first run included, and above a warmed engine (imports and one run done, the
    peak started anew), which is what the query holds for its data."""
    imports = peak_rss_mib()
    run()
    first = peak_rss_mib(reset=True)
    warm = peak_rss_mib()  # the resident memory at the reset
    seconds, result = _best_of(repeat, run)
    return {"seconds": seconds, "result": result, "imports_mib": imports, "first_mib": first, "warm_mib": warm,
            "peak_mib": peak_rss_mib()}


def _query_sql(cfg, k: int, repeat: int) -> dict[str, Any]:
    import polars  # noqa: F401 - what the query imports on first use counts with the imports
    import zarr  # noqa: F401

    from megaset.storage.query import query

    out = _measured_query(lambda: query(cfg.store.url, top_scores_sql(cfg, k)), repeat)
    frame = out.pop("result")
    return {**out, "scores": frame[frame.columns[-1]].to_numpy()}


def _query_numpy(cfg, k: int, repeat: int) -> dict[str, Any]:
    """The same rows with zarr and numpy: read the four columns whole, cut, sort."""
    import zarr

    from megaset.storage.scores import score_column

    def top() -> np.ndarray:
        group = zarr.open_group(cfg.store.url, mode="r")["train"]
        columns = {name: group[name][...] for name in ("channel", "met", "m_ll", score_column(cfg.training.model))}
        score = columns[score_column(cfg.training.model)]
        keep = np.flatnonzero(columns["met"] > MET_CUT)
        rows = keep[np.argsort(-score[keep], kind="stable")[:k]]
        return score[rows]

    out = _measured_query(top, repeat)
    return {**out, "scores": out.pop("result")}


def _on_cluster(cfg, work: Path, repeat: int) -> dict[str, Any]:
    """Ingest vs uproot read, mix vs copy (into scratch stores under ``work``), Dask scoring."""
    from megaset.deploy.cluster import open_client
    from megaset.pipeline.inputs import expand_files, resolve_channels
    from megaset.training.score import score

    files = expand_files(resolve_channels(cfg))
    bench = cfg.replace(store={"url": str(work / "store.zarr")})
    with open_client(cfg.cluster) as client:
        client.wait_for_workers(cfg.cluster.workers)
        n_read, t_read, summary, t_ingest, ingest_cpu = read_vs_ingest(bench, client, files, work, repeat)
        n_rows, raw, t_mix, t_copy, compression, mix_cpu = mix_vs_copy(bench, client, work, repeat)
        # Scoring and the forward pass in turn, the best of each: on a shared machine the speed
        # of the cores drifts by up to 2x within minutes, and one side timed after the other
        # measured the drift.
        cores = cfg.cluster.workers * cfg.cluster.threads_per_worker
        t_score, plain = float("inf"), None
        for _ in range(repeat):
            seconds, scored = _best_of(1, lambda: score(cfg, client, overwrite=True))
            t_score = min(t_score, seconds)
            one = isolated(_forward, cfg, cores, 1)[0]
            plain = one if plain is None or one["seconds"] < plain["seconds"] else plain
    shutil.rmtree(work, ignore_errors=True)
    return {
        "ingest": {"events": n_read, "ingest_s": t_ingest, "uproot_read_s": t_read, "ratio": t_read / t_ingest,
                   "checked_s": summary.seconds_inspect, "cpu_s": ingest_cpu},
        "mix": {"events": n_rows, "rmm_mb": raw / 1e6, "mix_s": t_mix, "copy_s": t_copy, "ratio": t_copy / t_mix,
                "compression": compression, "cpu_s": mix_cpu},
        "score": {"events": scored["events_scored"], "dask_s": t_score, "plain": plain, "cores": cores},
    }


def _scoring(dask: dict[str, Any]) -> dict[str, Any]:
    """Dask scoring against the plain forward pass, both timed by :func:`_on_cluster`."""
    plain = dask.pop("plain")
    dask_rate, plain_rate = dask["events"] / dask["dask_s"], plain["events"] / plain["seconds"]
    return {**dask, "plain_events": plain["events"], "plain_s": plain["seconds"], "dask_per_s": dask_rate,
            "plain_per_s": plain_rate, "ratio": dask_rate / plain_rate, "agrees": plain["agrees_with_store"]}


def _training(cfg, n_train: int, repeat: int, train_steps: int) -> dict[str, Any]:
    rates = isolated(alternate, cfg, os.cpu_count() or 1, repeat, train_steps or None)[0]
    # One process reads the whole group: an epoch shorter than train_steps ends the round.
    epoch = -(-n_train // cfg.training.batch_size)
    steps = min(train_steps, epoch) if train_steps else epoch
    return {"steps": steps, "batch_size": cfg.training.batch_size, "stream_per_s": rates["stream"],
            "memory_per_s": rates["memory"], "ratio": rates["stream"] / rates["memory"],
            "stream_first_per_s": rates["stream_first"]}


def _query(cfg, n_train: int, repeat: int) -> dict[str, Any]:
    k = max(1, n_train // 100)
    sql = isolated(_query_sql, cfg, k, repeat)[0]
    plain = isolated(_query_numpy, cfg, k, repeat)[0]
    return {"sql": top_scores_sql(cfg, k), "events": n_train, "rows": len(sql["scores"]),
            "sql_s": sql["seconds"], "numpy_s": plain["seconds"], "ratio": plain["seconds"] / sql["seconds"],
            "sql_peak_mib": max(sql["first_mib"], sql["peak_mib"]),
            "numpy_peak_mib": max(plain["first_mib"], plain["peak_mib"]),
            "sql_added_mib": sql["first_mib"] - sql["imports_mib"],
            "numpy_added_mib": plain["first_mib"] - plain["imports_mib"],
            "sql_data_mib": sql["peak_mib"] - sql["warm_mib"], "numpy_data_mib": plain["peak_mib"] - plain["warm_mib"],
            "same_rows": bool(np.allclose(np.sort(sql["scores"]), np.sort(plain["scores"])))}


def side_by_side(cfg, work: Path, repeat: int, train_steps: int) -> dict[str, Any]:
    """Part (2) on the files and store of ``cfg`` (a finished pipeline run); scratch under ``work``."""
    from megaset.storage.store import open_store

    out = _on_cluster(cfg, work, repeat)
    out["score"] = _scoring(out["score"])
    n_train = open_store(cfg.store.url).group("train").n_events
    out["train"] = _training(cfg, n_train, repeat, train_steps)
    out["query"] = _query(cfg, n_train, repeat)
    return out


# ---------------------------------------------------------------------------- output


def _row(cells: list[str], widths: list[int]) -> str:
    return "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _pipeline_lines(runs: list[dict[str, Any]]) -> list[str]:
    widths = [12] + [12, 9, 12] * len(runs)
    lines = [_row(["stage", *(c for r in runs for c in (f"{r['events']:,}", "", ""))], widths),
             _row(["", *(c for _ in runs for c in ("events", "s", "events/s"))], widths)]
    for stage in runs[-1]["seconds"]:
        cells = [stage]
        for r in runs:
            n, s = r["stage_events"][stage], r["seconds"][stage]
            cells += [f"{n:,}", f"{s:.1f}", f"{n / s:,.0f}"]
        lines.append(_row(cells, widths))
    lines.append(_row(["total", *(c for r in runs for c in ("", f"{sum(r['seconds'].values()):.1f}", ""))], widths))
    return lines


def _memory_lines(runs: list[dict[str, Any]], flat: dict[str, Any] | None) -> list[str]:
    widths = [40] + [12] * len(runs) + ([8, 6] if flat else [])
    head = ["peak RSS, MiB", *(f"{r['events']:,}" for r in runs)] + (["ratio", ""] if flat else [])
    lines = [_row(head, widths)]
    for key, label, value in PEAKS:
        cells = [label, *(f"{value(r):,.0f}" for r in runs)]
        if flat:
            cells += [f"{flat[key]['ratio']:.2f}", "PASS" if flat[key]["pass"] else "FAIL"]
        lines.append(_row(cells, widths))
    for r in runs:
        peaks = ", ".join(f"pid {pid} {mib:,.0f}" for pid, mib in sorted(r["workers_peak_mib"].items()))
        restarted = "RESTARTED " + str(r["worker_pids"]) if r["workers_restarted"] else "same pids start to end"
        lines.append(f"  workers at {r['events']:,}: {peaks}; {restarted}")
    if flat:
        lines.append(f"  flatness: peak at {runs[-1]['events']:,} / peak at {runs[0]['events']:,}, "
                     f"PASS when <= {FLATNESS_LIMIT}")
    return [*lines, "", *_stage_memory_lines(runs)]


def _stage_memory_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Peak of the driver and of the largest worker within each stage."""
    widths = [12] + [12, 12] * len(runs)
    lines = [_row(["in stage", *(c for r in runs for c in (f"{r['events']:,}", ""))], widths),
             _row(["", *(c for _ in runs for c in ("driver", "worker"))], widths)]
    for stage in runs[-1]["seconds"]:
        peaks = [r["stage_peaks_mib"][stage] for r in runs]
        cells = (c for p in peaks for c in (f"{p['driver']:,.0f}", f"{max(p['workers'].values()):,.0f}"))
        lines.append(_row([stage, *cells], widths))
    lines.append("  peak RSS, MiB, within each stage: what a process still holds from earlier stages included")
    return lines


def side_ratios(side: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every side-by-side ratio with its target and whether it passes."""
    q = side["query"]
    ratios = {"ingest": side["ingest"]["ratio"], "mix": side["mix"]["ratio"], "train": side["train"]["ratio"],
              "score": side["score"]["ratio"], "query": q["ratio"],
              "query_memory": q["sql_data_mib"] / max(q["numpy_data_mib"], 1.0)}
    return {key: {"ratio": r, "target": TARGETS[key], "at_most": key in AT_MOST,
                  "pass": r <= TARGETS[key] if key in AT_MOST else r >= TARGETS[key]}
            for key, r in ratios.items()}


def _side_lines(side: dict[str, Any]) -> list[str]:
    widths = [52, 14, 14, 8, 10, 6]
    i, m, t, s, q = side["ingest"], side["mix"], side["train"], side["score"], side["query"]
    rows = [
        ("ingest", "ingest vs uproot read, input events/s", i["events"] / i["ingest_s"],
         i["events"] / i["uproot_read_s"]),
        ("mix", "mix vs plain chunk copy, MB/s of RMM data", m["rmm_mb"] / m["mix_s"], m["rmm_mb"] / m["copy_s"]),
        ("train", f"training steps ({t['steps']} x {t['batch_size']}): stream vs memory, /s", t["stream_per_s"],
         t["memory_per_s"]),
        ("score", f"scoring: Dask vs forward pass on {s['cores']} cores, events/s", s["dask_per_s"],
         s["plain_per_s"]),
        ("query", "query: polars SQL vs zarr + numpy, events/s", q["events"] / q["sql_s"], q["events"] / q["numpy_s"]),
        (None, "query peak RSS, MiB", q["sql_peak_mib"], q["numpy_peak_mib"]),
        (None, "query peak RSS above imports, first run, MiB", q["sql_added_mib"], q["numpy_added_mib"]),
        ("query_memory", "query peak RSS above a warmed engine, MiB", q["sql_data_mib"], q["numpy_data_mib"]),
    ]
    checks = side_ratios(side)
    lines = [_row(["side by side", "measured", "baseline", "ratio", "target", ""], widths)]
    for key, label, a, b in rows:
        if key is None:
            cells = [f"{a / max(b, 1.0):.2f}", "", ""]
        else:
            c = checks[key]
            cells = [f"{c['ratio']:.2f}", ("<= " if c["at_most"] else ">= ") + f"{c['target']:g}",
                     "PASS" if c["pass"] else "FAIL"]
        lines.append(_row([label, f"{a:,.0f}", f"{b:,.0f}", *cells], widths))
    ic, mc = i.get("cpu_s"), m.get("cpu_s")
    if ic and mc:
        lines.append(f"  CPU s of driver and workers (steadier on a shared machine): ingest {ic['ingest']:.1f} vs read "
                     f"{ic['read']:.1f} ({ic['read'] / ic['ingest']:.2f}); mix {mc['mix']:.1f} vs copy "
                     f"{mc['copy']:.1f} ({mc['copy'] / mc['mix']:.2f}, the copy's setup included)")
    lines.append(f"  training's first epoch, every chunk read from the store (later ones find them in the "
                 f"loader's cache): stream {t['stream_first_per_s']:,.0f}/s, "
                 f"{t['stream_first_per_s'] / t['memory_per_s']:.2f} of memory")
    lines.append(f"  scores of the forward pass equal the stored ones: {s['agrees']}; "
                 f"query rows equal: {q['same_rows']} ({q['rows']:,} rows)")
    lines.append(f"  query: {q['sql']}")
    return lines


def _chunks_per_rank() -> int:
    """Train chunks each DDP rank (one per worker) must read to fill the loader's buffers:
    a shuffle window and the chunks read ahead of it."""
    from megaset.config import LoaderConfig

    loader = LoaderConfig()
    return loader.shuffle_chunks + loader.read_ahead


def _enough_chunks(events: int, workers: int, chunk_len: int, per_rank: int = 1) -> bool:
    """Whether the train group at ``events`` holds ``per_rank`` chunks for every worker (the
    last one may be partial)."""
    return events * TRAIN_SHARE > (per_rank * workers - 1) * chunk_len


def _chunk_len_for(events: int, workers: int, default: int) -> int:
    """``default``, or the largest power of two below it that fills the loader of every rank."""
    chunk_len = default
    per_rank = _chunks_per_rank()
    while chunk_len > 1024 and not _enough_chunks(events, workers, chunk_len, per_rank):
        chunk_len //= 2
    return chunk_len


def _input_chunk_for(events: int) -> int:
    """Events in the smallest background channel at ``events``: files and ingest chunks of this
    size are full in every channel of that sample, as they are in the larger one."""
    from megaset.config import SimulateConfig
    from megaset.pipeline.simulate import event_counts

    return min(event_counts(SimulateConfig(events=events, signal_events=0)).values())


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=8_000_000, help="simulated background events, large sample")
    parser.add_argument("--compare", type=int, default=1_000_000,
                        help="simulated background events of the small sample of the flatness check; 0: none")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (1 thread each)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side-by-side measurement; the best is kept")
    parser.add_argument("--chunk-len", type=int, default=None,
                        help="events per store chunk at both sizes (default: the store default, or smaller "
                             "where the smaller sample's train group would have fewer chunks than workers)")
    parser.add_argument("--input-chunk", type=int, default=None,
                        help="events per simulated file and per ingest chunk at both sizes (default: the "
                             "smallest background channel of the smaller sample)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="training steps per side-by-side round; 0: whole epochs")
    parser.add_argument("--workdir", default=None, help="work here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated files and stores")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args()
    if args.compare and args.compare >= args.events:
        parser.error(f"--compare {args.compare:,} must be smaller than --events {args.events:,} (or 0)")
    from megaset.config import StoreConfig

    # Memory is bounded by the input chunk, the store chunk and the loader's depth, not by the
    # sample: the flatness check compares two samples in which these buffers are full, so that
    # the smaller one does not pass for flat only because its files and train group are small.
    smallest, default = args.compare or args.events, StoreConfig().chunk_len
    fits = _chunk_len_for(smallest, args.workers, default)
    if args.chunk_len is None:
        args.chunk_len = fits
    elif not _enough_chunks(smallest, args.workers, args.chunk_len):
        parser.error(f"at {smallest:,} events the train group holds about {smallest * TRAIN_SHARE:,.0f} events, "
                     f"fewer chunks of {args.chunk_len:,} than workers (DDP ranks): pass --chunk-len {fits} "
                     "or simulate more events")
    args.input_chunk = args.input_chunk or _input_chunk_for(smallest)
    print(f"at both sizes: store chunks of {args.chunk_len:,} events (default {default:,}), simulated files and "
          f"ingest chunks of {args.input_chunk:,} events: the buffers are full at {smallest:,} events too")
    return args


def _report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The table on the terminal and, with --json, the same figures in a file."""
    runs, flat = results["pipeline"], results["flatness"]
    title = (f"megaset benchmarks: {args.workers} workers, {os.cpu_count()} cores, store chunks of "
             f"{args.chunk_len:,} events, input chunks of {args.input_chunk:,}, model {TRAINING['model']} "
             f"({TRAINING['epochs']} epochs), {results['wall_s']:,.0f} s in all")
    lines = [title, "", *_pipeline_lines(runs), "", *_memory_lines(runs, flat), "",
             *_side_lines(results["side_by_side"])]
    print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


def main() -> None:
    args = _arguments()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="megaset-bench-all-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = []
    for events in [args.compare, args.events] if args.compare else [args.events]:
        print(f"pipeline at {events:,} events, fresh driver and {args.workers} workers", flush=True)
        runs.append(run_pipeline(work / f"pipeline-{events}", events, args.workers, args.chunk_len, args.input_chunk))
    flat = flatness(runs[0], runs[1]) if args.compare else None
    print(f"side by side on the {args.events:,}-event sample", flush=True)
    large = pipeline_config(work / f"pipeline-{args.events}", args.events, args.workers, args.chunk_len,
                            args.input_chunk)
    side = side_by_side(large, work / "side-by-side", args.repeat, args.train_steps)
    _report(args, {"workers": args.workers, "cores": os.cpu_count(), "chunk_len": args.chunk_len,
                   "input_chunk": args.input_chunk,
                   "training": TRAINING, "wall_s": time.perf_counter() - t0, "pipeline": runs,
                   "flatness": flat, "side_by_side": side, "targets": side_ratios(side)})
    if not args.keep:
        for r in runs:
            shutil.rmtree(work / f"pipeline-{r['events']}", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    checks = side_ratios(side)
    failed = (any(not f["pass"] for f in (flat or {}).values()) or any(r["workers_restarted"] for r in runs)
              or any(not c["pass"] for c in checks.values())
              or not (side["score"]["agrees"] and side["query"]["same_rows"]))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
