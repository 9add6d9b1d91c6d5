"""Warm workers: numba's kernels compiled ahead of time, the heavy modules imported once per worker.

A fresh worker process would otherwise spend its first chunk importing uproot, coffea, awkward and
zarr and compiling the numba kernels of the selection, the RMM and the jet features (seconds to
tens of seconds, in every worker, again after every restart or pre-emption). Two things remove it:

* :func:`warm_kernels` compiles every kernel of ingest for the input types it meets, into numba's
  on-disk cache. ``megaset warmup`` (or ``python -m megaset.warmup``) runs it at install or image
  build time; the container recipe sets ``NUMBA_CACHE_DIR`` and runs it while building.
* :class:`WarmWorker`, a Dask worker plugin that :func:`megaset.deploy.cluster.open_client`
  registers on every cluster, imports the modules of the stages and loads the kernels from the
  cache when a worker joins, before it takes a task: adaptive workers too.

numba only uses a cache directory it can also write. When ``NUMBA_CACHE_DIR`` names one that
this process cannot write (an image's read-only file system, another user's install),
:func:`usable_numba_cache` copies it to a fresh temporary directory and points numba there.

The cache is valid for the CPU it was compiled for: ``NUMBA_CPU_NAME`` (the image sets
``x86-64-v2``) makes it portable across the machines of a cluster.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
from distributed import WorkerPlugin

__all__ = ["usable_numba_cache", "warm_kernels", "import_stage_modules", "WarmWorker", "kernel_stats", "main"]

#: The modules the tasks of ingest and mix import, imported once per worker by :class:`WarmWorker`.
STAGE_MODULES = (
    "numba",
    "uproot",
    "awkward",
    "coffea.processor",
    "zarr",
    "megaset.pipeline.processor",
    "megaset.pipeline.jet_processor",
    "megaset.pipeline.jet_features",
    "megaset.storage.mix_chunk",
)
#: What training ranks and scoring tasks import on top (GPU workers, or workers of a single pool).
MODEL_MODULES = ("torch", "megaset.training.score")


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def usable_numba_cache() -> str | None:
    """The numba cache directory of this process, made writable: ``NUMBA_CACHE_DIR`` as given when
    this process can write it, else a private copy of it in a temporary directory (``NUMBA_CACHE_DIR``
    then names the copy); ``None`` when it is unset (numba's default, next to the sources)."""
    shipped = os.environ.get("NUMBA_CACHE_DIR")
    if not shipped or _writable(shipped):
        return shipped or None
    copy = tempfile.mkdtemp(prefix="megaset-numba-cache-")
    if os.path.isdir(shipped):
        shutil.copytree(shipped, copy, dirs_exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = copy
    if "numba" in sys.modules:  # numba read the variable when it was imported
        from numba.core import config

        config.CACHE_DIR = copy  # type: ignore[attr-defined]  # set from the environment at import
    return copy


def _event_source(dtype: type) -> dict[str, Any]:
    """A small simulated chunk of events (the demo's ntuple branches) with ``dtype`` kinematics."""
    import awkward as ak

    from megaset.pipeline.simulate import generate

    def cast(value: Any) -> Any:
        if isinstance(value, ak.Array):
            return ak.values_astype(value, dtype) if "float" in str(ak.type(value)) else value
        return value.astype(dtype) if value.dtype.kind == "f" else value

    return {name: ak.Array(cast(value)) for name, value in generate("ttbar", 400, seed=1).items()}


def _jet_source(dtype: type) -> dict[str, Any]:
    """Eight jets of 30 constituents in the default jet schema, inside the default selection."""
    import awkward as ak

    rng = np.random.default_rng(1)
    n_jets, n_const = 8, 30
    pt = rng.uniform(0.5, 1.5, (n_jets, n_const))
    pt *= 850.0 / pt.sum(axis=1, keepdims=True)
    eta, phi = rng.normal(0.0, 0.2, (2, n_jets, n_const))
    energy = pt * np.cosh(eta)
    return {
        "constPt": ak.Array(pt.astype(dtype)), "constEta": ak.Array(eta.astype(dtype)),
        "constPhi": ak.Array(phi.astype(dtype)), "constE": ak.Array(energy.astype(dtype)),
        "eventNumber": ak.Array(np.arange(n_jets, dtype=np.int64)),
    }


def warm_kernels() -> dict[str, float]:
    """Compile (or load from numba's cache) every numba kernel of ingest, by running the event and
    jet processors on small in-memory chunks with float32 and with float64 inputs (the types the
    ntuples hold): exactly the signatures a real chunk compiles. Seconds per input kind."""
    from megaset.config import Config
    from megaset.pipeline.jet_processor import JetProcessor
    from megaset.pipeline.processor import RMMProcessor

    usable_numba_cache()
    cfg, jets = Config(), Config.model_validate({"inputs": {"kind": "jets"}})
    ids = ({"warm": 0}, {"warm": 0}, {"warm": 1.0})
    seconds = {}
    for dtype in (np.float32, np.float64):
        t0 = time.perf_counter()
        RMMProcessor(cfg, *ids).build(_event_source(dtype), "warm", "warm", 0)
        seconds[f"events {np.dtype(dtype).name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        JetProcessor(jets, *ids).build(_jet_source(dtype), "warm", "warm", 0)
        seconds[f"jets {np.dtype(dtype).name}"] = time.perf_counter() - t0
    return seconds


def kernel_stats() -> dict[str, dict[str, Any]]:
    """Every numba kernel of ingest: its compiled signatures and numba's cache hits and misses
    in this process (a kernel loaded from the cache has hits and no misses)."""
    from megaset.pipeline import jet_features
    from megaset.pipeline._select_kernels import kernels
    from megaset.pipeline.rmm import _kernel

    found = {f"select.{name}": fn for name, fn in vars(kernels()).items()}
    found["rmm._fill"] = _kernel()
    found |= {f"jet_features.{name}": fn for name, fn in vars(jet_features).items()
              if hasattr(fn, "stats") and hasattr(fn, "signatures")}
    return {name: {"signatures": [str(s) for s in fn.signatures],
                   "cache_hits": sum(fn.stats.cache_hits.values()),
                   "cache_misses": sum(fn.stats.cache_misses.values())}
            for name, fn in sorted(found.items())}


def import_stage_modules(models: bool) -> None:
    """Import the modules of ingest and mix (and of training and scoring when ``models``)."""
    for name in STAGE_MODULES + (MODEL_MODULES if models else ()):
        importlib.import_module(name)


class WarmWorker(WorkerPlugin):
    """Dask worker plugin: imports the stages' modules and loads the kernels when a worker starts.

    Workers declaring the resource ``CPU`` belong to a CPU pool (ingest and mix only) and skip
    torch; every other worker imports it too, since training ranks and scoring may run there.
    It runs in a thread so that the worker keeps answering the scheduler meanwhile.
    """

    name = "megaset-warm-worker"
    idempotent = True

    async def setup(self, worker: Any) -> None:
        models = not worker.state.total_resources.get("CPU")
        await asyncio.to_thread(self.warm, models)

    @staticmethod
    def warm(models: bool) -> None:
        usable_numba_cache()
        import_stage_modules(models)
        warm_kernels()


def main() -> None:
    """``python -m megaset.warmup`` (as ``megaset warmup``): fill numba's cache, say what it holds."""
    cache = usable_numba_cache()
    seconds = warm_kernels()
    print(f"numba cache: {cache or 'beside the installed sources (NUMBA_CACHE_DIR unset)'}")
    for kind, s in seconds.items():
        print(f"  {kind}: {s:.2f} s")
    for name, stats in kernel_stats().items():
        print(f"  {name}: {len(stats['signatures'])} signature(s)")


if __name__ == "__main__":
    main()
