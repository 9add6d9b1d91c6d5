"""GPU figures of the loader, the trainer and the scoring, measured side by side on one store.

Run by ``benchmarks/gpu_check.sh`` on a machine with a CUDA device (see benchmarks/README.md);
on a CPU-only machine ``--device cpu`` runs the same measurements there, as a dry run of the
script. A store of synthetic RMM events (23 x 23 = 529 cells, about 2 % of them filled, per
channel as real events are: the cells of a few objects) is staged and mixed first, so that no
ntuple reading or RMM building counts, once in each store form of ``--forms`` (``store.form``:
dense rows, or the non-zero cells of each chunk); then, each printed and written as JSON:

(a) per form, the loader alone: events/s of ``ChunkDataset`` handing batches over on the device, at 1, 2,
    4, 8 and 16 reader threads;
(b) per form, training steps of one model fed by the loader vs by tensors already resident on the device
    (the same ``train_epoch``, alternated epoch by epoch, the best epoch of each kept): ratio;
(c) on the last form, ``train(cfg)`` end to end (2 epochs): samples/s and wall seconds;
(d) ``score``: events/s in this process, and on a local Dask cluster of one GPU worker
    (``cluster.gpus_per_worker: 1``).

    python benchmarks/gpu_check.py --json $OUT/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --events 40000 --chunk-len 4096   # a dry run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

SIDE = 23
CHANNELS = [
    {"id": 0, "name": "zjets", "signal": False, "data": False},
    {"id": 1, "name": "ttbar", "signal": False, "data": False},
    {"id": 2, "name": "diboson", "signal": False, "data": False},
    {"id": 3, "name": "susy", "signal": True, "data": False},
]
SHARE = {"zjets": 0.6, "ttbar": 0.3, "diboson": 0.1}


def _rmm(rng: np.random.Generator, channel: int, n: int) -> np.ndarray:
    """RMM-like rows: each channel fills about 2 % of the 529 cells (its objects' rows and
    columns), with energies and masses of tens to hundreds of GeV, the rest zero."""
    cells = np.random.default_rng(100 + channel).choice(SIDE * SIDE, size=11, replace=False)
    x = np.zeros((n, SIDE * SIDE), np.float32)
    x[:, cells] = rng.lognormal(4.0 + 0.1 * channel, 0.6, size=(n, len(cells))).astype(np.float32)
    # A few events lack an object: their cells stay empty, as in real RMMs.
    x[:, cells[-3:]] *= rng.random((n, 1)) < 0.7
    return x


def build_store(work: Path, events: int, chunk_len: int, workers: int, form: str) -> str:
    """Stage synthetic events per channel and mix them into a store of ``form``; returns its URL."""
    from megaset.config import CompressorConfig, Config
    from megaset.storage.mix import mix
    from megaset.storage.staging import finish_staging, init_staging, piece_key, write_piece

    cfg = Config.model_validate({"store": {"url": str(work / "store.zarr"),
                                           "staging_url": str(work / "staging.zarr"), "chunk_len": chunk_len,
                                           "form": form}})
    url = cfg.store.staging
    init_staging(url, [c["name"] for c in CHANNELS], {
        "schema_version": 2, "feature_names": [f"cell_{i}_{j}" for i in range(SIDE) for j in range(SIDE)],
        "rmm": {"objects": "synthetic"}, "channels": CHANNELS, "config": {"note": "synthetic"},
        "code_version": "benchmark",
    })
    rng = np.random.default_rng(0)
    files = []
    piece = 100_000
    for c in CHANNELS:
        n_channel = int(events * SHARE.get(c["name"], 0.02))
        for k, start in enumerate(range(0, n_channel, piece)):
            n = min(piece, n_channel - start)
            entry = np.arange(start, start + n)
            cols = {"rmm": _rmm(rng, c["id"], n),
                    "weight": rng.lognormal(0.0, 0.3, n).astype(np.float32),
                    "channel": np.full(n, c["id"], dtype=np.int16),
                    "event_id": np.stack([np.full(n, 284500), entry, np.full(n, c["id"]), entry],
                                         axis=1).astype(np.int64)}
            write_piece(url, c["name"], piece_key(f"uuid{c['id']}", start, start + n), cols, {
                "filename": f"/data/{c['name']}.root", "file_index": c["id"], "fileuuid": f"uuid{c['id']}",
                "entrystart": start, "entrystop": start + n, "n_read": n, "cutflow": [["all", n, float(n)]],
            }, CompressorConfig(codec="zstd", level=1))
            if k == 0:
                files.append({"index": c["id"], "channel": c["name"], "path": f"/data/{c['name']}.root",
                              "size": 1, "checksum": "adler32:0", "entries": n_channel})
    finish_staging(url, {"files": files, "skipped": [], "cutflow": {c["name"]: [["all", 1, 1.0]] for c in CHANNELS}})
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        mix(cfg, client)
    return cfg.store.url


def config(url: str, out: Path, args: argparse.Namespace, **cluster: Any):
    from megaset.config import Config

    return Config.model_validate({
        "store": {"url": url},
        "training": {"model": args.model, "epochs": 2, "batch_size": args.batch_size, "output": str(out),
                     "early_stopping": {"patience": 1000}, "loader": {"threads": args.threads}},
        "scoring": {"device": args.device},
        "cluster": {"workers": 1, "threads_per_worker": args.threads, **cluster},
    })


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_alone(cfg, device, threads: int) -> float:
    """Events/s of the train loader handing every batch over on ``device``."""
    from megaset.storage.store import open_store
    from megaset.training.loader import ChunkDataset
    from megaset.training.scaling import Scaling

    store = open_store(cfg.store.url)
    ds = ChunkDataset(store.group("train"), batch_size=cfg.training.batch_size, threads=threads,
                      read_ahead=max(2, threads), shuffle_chunks=cfg.training.loader.shuffle_chunks,
                      scaling=Scaling.from_scaler(store.scaler, cfg.training.scaling), device=device)
    start = time.perf_counter()
    n = sum(len(w) for _, w in ds)
    _sync(device)
    return n / (time.perf_counter() - start)


def steps_fed(cfg, device, rounds: int) -> dict[str, float]:
    """Best epoch rate (samples/s) of the same steps fed by the loader or by resident tensors."""
    import torch

    from megaset.storage.store import open_store
    from megaset.training.loop import datasets, train_epoch, weight_norm
    from megaset.training.registry import build_model
    from megaset.training.scaling import Scaling

    tc = cfg.training
    store = open_store(cfg.store.url)
    group = store.group("train")
    scaling = Scaling.from_scaler(store.scaler, tc.scaling)
    stream = datasets(store, tc, "rmm", scaling, device=device)[0]  # the trainer's loader
    chunks = [c for _, c in group.iter_chunks(("rmm", "weight"))]
    x = torch.from_numpy(np.concatenate([scaling(c["rmm"]) for c in chunks])).to(device)
    w = torch.from_numpy(np.concatenate([c["weight"] for c in chunks]).astype(np.float32)).to(device)
    norm = weight_norm(group, tc)
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, x.shape[1], tc.architecture).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)

    def resident():
        for idx in torch.randperm(len(w), device=device).split(tc.batch_size):
            yield x[idx], w[idx]

    best = {"loader": 0.0, "resident": 0.0}
    for i in range(rounds + 1):
        stream.set_epoch(i)
        for kind, source in (("loader", stream), ("resident", resident())):
            _sync(device)
            start = time.perf_counter()
            n = train_epoch(model, optimizer, islice(source, None), tc, norm, device)[1]
            _sync(device)
            if i:  # the first round warms caches, allocators and kernels
                best[kind] = max(best[kind], n / (time.perf_counter() - start))
    return {**best, "ratio": best["loader"] / best["resident"]}


def train_end_to_end(cfg) -> dict[str, Any]:
    from megaset.training.trainer import train

    start = time.perf_counter()
    summary = train(cfg)
    return {"wall_s": time.perf_counter() - start, "samples_per_s": summary["samples_per_s"],
            "epochs": summary["epochs"]}


def score_rates(cfg) -> dict[str, Any]:
    """Scoring events/s in this process, then on a local cluster of one GPU worker."""
    from megaset.deploy.cluster import open_client
    from megaset.training.score import checkpoint_path, score

    here = score(cfg, None, overwrite=True)
    out: dict[str, Any] = {"one_process": {"events_per_s": here["events_per_s"], "device": here["device"],
                                           "events": here["events_scored"]}}
    if cfg.scoring.device == "cpu":
        return out
    gpu_cfg = cfg.replace(cluster={"gpus_per_worker": 1})
    with open_client(gpu_cfg.cluster) as client:
        client.wait_for_workers(1)
        # The worker's imports and CUDA context first, into a column of its own.
        score(gpu_cfg, client, model="ae-warm", checkpoint=checkpoint_path(cfg, cfg.training.model), overwrite=True)
        there = score(gpu_cfg, client, overwrite=True)
    out["gpu_worker"] = {"events_per_s": there["events_per_s"], "device": there["device"],
                         "events": there["events_scored"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--events", type=int, default=400_000, help="background events of the synthetic store")
    parser.add_argument("--chunk-len", type=int, default=16_384)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--model", default="ae-shallow")
    parser.add_argument("--threads", type=int, default=4, help="reader threads of (b), (c) and the GPU worker")
    parser.add_argument("--workers", type=int, default=8, help="Dask workers that mix the store")
    parser.add_argument("--rounds", type=int, default=2, help="epochs of each feeding in (b), after a warm-up")
    parser.add_argument("--sections", default="abcd")
    parser.add_argument("--forms", default="dense,csr", help="store forms measured by (a) and (b), comma-separated; "
                        "(c) and (d) use the last")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device; run with --device cpu for a dry run")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "cores": os.cpu_count(), "torch": torch.__version__, "args": vars(args)}

    def report(key: str, value: Any) -> None:
        results[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory(prefix="megaset-gpu-") as tmp:
        for form in args.forms.split(","):
            work = Path(tmp) / form
            start = time.perf_counter()
            url = build_store(work, args.events, args.chunk_len, args.workers, form)
            cfg = config(url, work / "models", args)
            from megaset.storage.store import open_store

            train_events = open_store(url).group("train").n_events
            report(f"store_{form}", {"train_events": train_events, "build_s": time.perf_counter() - start})
            if "a" in args.sections:
                report(f"loader_alone_events_per_s_{form}", {t: loader_alone(cfg, device, t) for t in (1, 2, 4, 8, 16)})
            if "b" in args.sections:
                report(f"steps_loader_vs_resident_{form}", steps_fed(cfg, device, args.rounds))
        if "c" in args.sections or "d" in args.sections:
            report("train_end_to_end", train_end_to_end(cfg))
        if "d" in args.sections:
            report("score", score_rates(cfg))

if __name__ == "__main__":
    main()
