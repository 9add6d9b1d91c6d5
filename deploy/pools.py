"""Pools of workers (``cluster.pools``) and the Dask resources that place the stages on them.

Every pool starts as a single-pool ``cluster`` section of its own size (:func:`pool_sections`):
a Kubernetes worker group, an HTCondor job description, a group of local worker processes. A
pool without GPUs declares the resource ``CPU`` (its threads), a pool with GPUs the resource
``GPU`` (its GPUs). Ingest and mix ask for ``CPU`` (:func:`placed`), so they run on the CPU pools
alone; training ranks and scoring tasks already go to the workers declaring ``GPU`` when there are
any (:mod:`megaset.training.ddp`, :mod:`megaset.training.score`), else to any worker. A single-pool
section asks for nothing and declares only ``GPU`` if it has GPUs: it runs as before.

>>> from megaset.config import ClusterConfig
>>> cfg = ClusterConfig(pools={"cpu": {"workers": 14}, "gpu": {"workers": 1, "gpus": 1}})
>>> {name: worker_resources(p) for name, p in pool_sections(cfg).items()}
{'cpu': {'CPU': 1}, 'gpu': {'GPU': 1}}
>>> stage_resources(cfg, "ingest"), stage_resources(cfg, "train")
({'CPU': 1}, None)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from megaset.config import ClusterConfig

__all__ = ["add_pools", "pool_sections", "worker_resources", "stage_resources", "placed", "resources_arg", "CPU_STAGES",
           "gpu_box"]

#: The stages that run on the CPU pools when the cluster has pools.
CPU_STAGES = ("ingest", "mix")


def pool_sections(cfg: ClusterConfig) -> dict[str, ClusterConfig]:
    """Each pool of ``cfg`` as the single-pool section that starts it, by pool name; a config
    without pools is its own one pool, named ``default``."""
    if not cfg.pools:
        return {"default": cfg}
    return {
        name: cfg.model_copy(update={
            "pools": None, "workers": pool.workers, "adapt": None, "threads_per_worker": pool.threads,
            "memory_per_worker": pool.memory, "gpus_per_worker": pool.gpus,
            "resources": {**cfg.resources, **({} if pool.gpus else {"CPU": pool.threads})},
        })
        for name, pool in cfg.pools.items()
    }


def worker_resources(cfg: ClusterConfig) -> dict[str, float]:
    """The Dask resources each worker of a single-pool section declares."""
    return {**cfg.resources, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}


def resources_arg(cfg: ClusterConfig) -> list[str]:
    """``dask worker`` arguments declaring :func:`worker_resources` (none when there are none)."""
    declared = worker_resources(cfg)
    if not declared:
        return []
    # Comma-separated: one word however many, in a shell command line as in a container argument list.
    return ["--resources", ",".join(f"{name}={value:g}" for name, value in declared.items())]


def stage_resources(cfg: ClusterConfig, stage: str) -> dict[str, float] | None:
    """What each task of ``stage`` asks for: ``{"CPU": 1}`` for ingest and mix on a cluster with a
    CPU pool; nothing otherwise (training and scoring find the GPU workers themselves)."""
    if stage in CPU_STAGES and cfg.pools and any(not p.gpus for p in cfg.pools.values()):
        return {"CPU": 1}
    return None


@contextlib.contextmanager
def placed(cfg: ClusterConfig, stage: str) -> Iterator[None]:
    """Every task submitted inside asks for the resources of ``stage`` (a Dask annotation)."""
    resources = stage_resources(cfg, stage)
    if resources is None:
        yield
        return
    import dask

    with dask.annotate(resources=resources):
        yield


def gpu_box(cores: int, gpus: int, memory: int) -> ClusterConfig | None:
    """The local cluster of a node with ``gpus`` GPUs, ``cores`` cores and ``memory`` bytes, for a
    configuration whose ``cluster`` section is left at its defaults: a CPU pool of one single-threaded
    worker per core not taken by a GPU worker, for ingest and mix, and a GPU pool of one worker per
    GPU, for training and scoring (one rank per GPU). Memory is shared evenly, at most 4 GiB a
    worker. ``None`` without GPUs: the default cluster stays as it is.

    >>> {name: (p.workers, p.gpus, p.memory) for name, p in gpu_box(16, 1, 128 * 2**30).pools.items()}
    {'cpu': (15, 0, '4 GiB'), 'gpu': (1, 1, '4 GiB')}
    >>> gpu_box(4, 2, 8 * 2**30).pools["cpu"].memory, gpu_box(8, 0, 2**35) is None
    ('2.00 GiB', True)
    """
    if gpus < 1:
        return None
    from dask.utils import format_bytes

    cpu_workers = max(1, cores - gpus)
    share = min(4 * 2**30, memory // (cpu_workers + gpus))
    size = "4 GiB" if share == 4 * 2**30 else format_bytes(share)
    return ClusterConfig.model_validate({"pools": {"cpu": {"workers": cpu_workers, "memory": size},
                                                   "gpu": {"workers": gpus, "gpus": 1, "memory": size}}})


def add_pools(cluster: Any, cfg: ClusterConfig, options: Callable[[ClusterConfig], dict[str, Any]]) -> None:
    """Give a cluster of Dask's ``SpecCluster`` family (local, HTCondor) the workers of every pool
    of ``cfg``: its own worker spec with ``options(pool section)`` on top, named ``<pool>-<i>``."""
    template = cluster.new_spec
    for name, pool in pool_sections(cfg).items():
        for i in range(pool.workers or 0):
            cluster.worker_spec[f"{name}-{i}"] = {"cls": template["cls"],
                                                  "options": {**template["options"], **options(pool)}}
    cluster.scale(len(cluster.worker_spec))
