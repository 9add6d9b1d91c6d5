"""The one place that creates and closes Dask clusters; every stage gets its client here.

``cluster.kind`` picks the backend: ``local`` (a ``LocalCluster`` of worker processes),
``kubernetes`` (the dask-kubernetes operator, see :mod:`megaset.deploy.kube`), ``htcondor``
(dask-jobqueue, see :mod:`megaset.deploy.condor`) or ``address`` (an existing scheduler). The
size comes from the same keys for every kind: ``workers`` or ``adapt``, ``threads_per_worker``,
``memory_per_worker`` and ``gpus_per_worker``; GPUs are declared as the Dask worker resource
``GPU``, which is how DDP ranks and scoring tasks find them.

>>> from megaset.config import ClusterConfig
>>> describe(ClusterConfig(kind="local", workers=2))
'local cluster, 2 workers x 1 thread, 4 GiB each'
>>> str(ClusterSize(workers=2, threads=4, memory=2**33, gpus=0))
'2 workers, 4 threads, 8.00 GiB memory, 0 GPUs'
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megaset.config import ClusterConfig
from megaset.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["open_client", "describe", "cluster_size", "ClusterSize", "release_memory"]


@dataclass(frozen=True)
class ClusterSize:
    """What a connected cluster really has, summed over its workers."""

    workers: int
    threads: int
    memory: int
    gpus: float

    def __str__(self) -> str:
        from dask.utils import format_bytes

        gpus = f"{self.gpus:g} GPU{'' if self.gpus == 1 else 's'}"
        return f"{self.workers} workers, {self.threads} threads, {format_bytes(self.memory)} memory, {gpus}"


def describe(cfg: ClusterConfig) -> str:
    """One line saying what cluster the config asks for."""
    if cfg.kind == "address":
        gpus = f", {cfg.gpus_per_worker} GPU per worker required" if cfg.gpus_per_worker else ""
        return f"existing scheduler at {cfg.address}{gpus}"
    where = {
        "local": "local cluster",
        "htcondor": "htcondor cluster",
        "kubernetes": (
            f"kubernetes cluster {cfg.kubernetes.name!r} "
            f"(namespace {cfg.kubernetes.namespace or 'current'}, image {cfg.kubernetes.image})"
        ),
    }[cfg.kind]
    size = (
        f"adaptive {cfg.adapt.minimum}-{cfg.adapt.maximum} workers"
        if cfg.adapt
        else f"{cfg.workers} workers"
    )
    threads = f"{cfg.threads_per_worker} thread{'s' if cfg.threads_per_worker > 1 else ''}"
    gpus = f", {cfg.gpus_per_worker} GPU" if cfg.gpus_per_worker else ""
    return f"{where}, {size} x {threads}, {cfg.memory_per_worker} each{gpus}"


def cluster_size(client: Client) -> ClusterSize:
    """Workers, threads, memory (bytes) and GPUs (the ``GPU`` resource) connected right now.

    Adaptive, Kubernetes and HTCondor clusters grow after the client connects: this is a
    snapshot, printed by the command line once it is connected.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return ClusterSize(
        workers=len(workers),
        threads=sum(w["nthreads"] for w in workers),
        memory=sum(w.get("memory_limit") or 0 for w in workers),
        gpus=sum(w.get("resources", {}).get("GPU", 0) for w in workers),
    )


def _initial_workers(cfg: ClusterConfig) -> int:
    return cfg.adapt.minimum if cfg.adapt else cfg.workers


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _check_local_gpus(cfg: ClusterConfig) -> None:
    """Local GPU workers need as many visible CUDA devices as they declare in all."""
    if not cfg.gpus_per_worker:
        return
    workers = cfg.adapt.maximum if cfg.adapt else cfg.workers
    needed = cfg.gpus_per_worker * workers
    visible = _cuda_devices()
    if visible < needed:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        env = f" (CUDA_VISIBLE_DEVICES={shown!r})" if shown is not None else ""
        msg = (
            f"cluster.gpus_per_worker={cfg.gpus_per_worker} with up to {workers} local workers "
            f"needs {needed} CUDA devices, but {visible} are visible on this machine{env}; "
            "set cluster.gpus_per_worker: 0 to run on CPU, or lower cluster.workers"
        )
        raise ConfigError(msg)


def _check_worker_gpus(client: Client, cfg: ClusterConfig) -> None:
    """An existing cluster must have workers declaring the ``GPU`` resource the config asks for.

    Only the workers connected now can be checked: an adaptive cluster with none yet passes.
    """
    if not cfg.gpus_per_worker:
        return
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        return
    declared = {addr: w.get("resources", {}).get("GPU", 0) for addr, w in workers.items()}
    if max(declared.values()) >= cfg.gpus_per_worker:
        return
    shown = ", ".join(f"{addr} GPU={n:g}" for addr, n in sorted(declared.items())[:4])
    more = f" and {len(declared) - 4} more" if len(declared) > 4 else ""
    msg = (
        f"cluster.gpus_per_worker={cfg.gpus_per_worker}, but no worker of the scheduler at "
        f"{cfg.address} declares that many GPUs ({shown}{more}); start the workers with "
        f"`dask worker ... --resources GPU={cfg.gpus_per_worker}`, or set cluster.gpus_per_worker: 0"
    )
    raise ConfigError(msg)


def _connect(cfg: ClusterConfig, timeout: float) -> Client:
    from distributed import Client

    try:
        return Client(cfg.address, timeout=timeout)
    except OSError as err:  # TimeoutError included
        msg = (
            f"cannot reach the Dask scheduler at cluster.address={cfg.address!r} within "
            f"{timeout:g} s ({err}); check the address and that the scheduler is running"
        )
        raise ConfigError(msg) from None


def _local(cfg: ClusterConfig) -> Any:
    from dask.utils import parse_bytes
    from distributed import LocalCluster

    _check_local_gpus(cfg)
    return LocalCluster(
        n_workers=_initial_workers(cfg),
        threads_per_worker=cfg.threads_per_worker,
        memory_limit=parse_bytes(cfg.memory_per_worker),
        processes=True,
        # Scheduler, workers and their nannies listen on cluster.host alone (loopback unless the
        # config asks otherwise): whoever reaches a scheduler port can run code on the workers.
        host=cfg.host,
        dashboard_address=f"{cfg.host}:8787" if cfg.dashboard else None,
        # The scheduler serves its health and metrics routes even without a dashboard, on port
        # 8787 of every interface unless told otherwise: a second cluster on the machine would
        # warn that it is taken, and the event stream would be open to the network.
        scheduler_kwargs=None if cfg.dashboard else {"dashboard_address": f"{cfg.host}:0"},
        resources={"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else None,
    )


def _start(cfg: ClusterConfig) -> Any:
    """A started cluster of the configured kind, scaled to the configured size."""
    if cfg.kind == "kubernetes":
        from megaset.deploy.kube import start_kube_cluster

        cluster = start_kube_cluster(cfg)
    elif cfg.kind == "htcondor":
        from megaset.deploy.condor import start_htcondor_cluster

        cluster = start_htcondor_cluster(cfg)
    else:
        cluster = _local(cfg)
    try:
        if cfg.adapt:
            cluster.adapt(minimum=cfg.adapt.minimum, maximum=cfg.adapt.maximum)
        else:
            cluster.scale(cfg.workers)
    except BaseException:
        cluster.close()
        raise
    return cluster


def release_memory(client: Client) -> None:
    """Hand the heap that the workers have freed back to the system, between the stages of one
    run: glibc keeps freed memory for reuse, and after an ingest of many chunks about 260 MiB
    per worker of it stayed resident under the next stage. ``malloc_trim`` on every worker is
    Dask's own advice for this; where the C library has no such call nothing is done."""
    client.run(_trim)


def _trim() -> None:
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


@contextlib.contextmanager
def open_client(cfg: ClusterConfig, *, timeout: float | None = None) -> Iterator[Client]:
    """A connected ``distributed.Client`` for the configured cluster, closed on exit.

    A cluster started here (local, Kubernetes, HTCondor) is shut down on exit as well; an
    existing scheduler (``kind: address``) is left running.

    Parameters
    ----------
    cfg
        The ``cluster`` section of the configuration.
    timeout
        Seconds to reach an existing scheduler; default ``cfg.connect_timeout``.

    Raises
    ------
    ConfigError
        If the scheduler cannot be reached in time, the backend cannot start (no Kubernetes
        credentials, no ``condor_submit``), or GPUs are asked for where there are none.
    """
    from distributed import Client

    if cfg.kind == "address":
        client = _connect(cfg, cfg.connect_timeout if timeout is None else timeout)
        with contextlib.closing(client):
            _check_worker_gpus(client, cfg)
            _warm(client, cfg)
            yield client
        return
    import dask

    from megaset.deploy.worker_env import WORKER_MALLOC_ENV

    # Nannies read it when they start a worker, adaptive ones too: keep it for the cluster's life.
    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_MALLOC_ENV.items()}
    with dask.config.set(environ), _start(cfg) as cluster, Client(cluster) as client:
        _warm(client, cfg)
        yield client


def _warm(client: Client, cfg: ClusterConfig) -> None:
    """Every worker, present and to come, imports the stages' modules and loads numba's kernels
    as it starts (:mod:`megaset.warmup`): its first chunk then costs what the others do."""
    if cfg.warm_workers:
        from megaset.warmup import WarmWorker

        client.register_plugin(WarmWorker())
