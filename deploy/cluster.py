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
from megaset.deploy.pools import add_pools, pool_sections, resources_arg, worker_resources
from megaset.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["open_client", "describe", "dashboard_link", "cluster_size", "ClusterSize", "release_memory"]


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
        pools = f", pools {', '.join(cfg.pools)}" if cfg.pools else ""
        return f"existing scheduler at {cfg.address}{gpus}{pools}"
    where = {
        "local": "local cluster",
        "htcondor": "htcondor cluster",
        "kubernetes": (
            f"kubernetes cluster {cfg.kubernetes.name!r} "
            f"(namespace {cfg.kubernetes.namespace or 'current'}, image {cfg.kubernetes.image})"
        ),
    }[cfg.kind]
    if cfg.pools:
        return f"{where}, pools: " + "; ".join(f"{name} {_pool(p)}" for name, p in pool_sections(cfg).items())
    size = (
        f"adaptive {cfg.adapt.minimum}-{cfg.adapt.maximum} workers"
        if cfg.adapt
        else f"{cfg.workers} workers"
    )
    threads = f"{cfg.threads_per_worker} thread{'s' if cfg.threads_per_worker > 1 else ''}"
    gpus = f", {cfg.gpus_per_worker} GPU" if cfg.gpus_per_worker else ""
    return f"{where}, {size} x {threads}, {cfg.memory_per_worker} each{gpus}"


def _pool(cfg: ClusterConfig) -> str:
    threads = f"{cfg.threads_per_worker} thread{'s' if cfg.threads_per_worker > 1 else ''}"
    gpus = f", {cfg.gpus_per_worker} GPU" if cfg.gpus_per_worker else ""
    stages = "training, scoring" if cfg.gpus_per_worker else "ingest, mix"
    return f"{cfg.workers} workers x {threads}, {cfg.memory_per_worker} each{gpus} ({stages})"


def dashboard_link(client: Client, cfg: ClusterConfig) -> str | None:
    """The address of the cluster's Dask dashboard, as the client gives it; ``None`` where the
    scheduler serves none. A scheduler without one still serves its health and metrics routes on
    that port, and the client names the port all the same: a cluster started here (local,
    HTCondor) has one only with ``cluster.dashboard``; another scheduler is asked whether it
    serves the dashboard's page."""
    link = client.dashboard_link
    if not link or (cfg.kind in ("local", "htcondor") and not cfg.dashboard):
        return None

    def serves_status(dask_scheduler: Any) -> bool:  # defined here: sent by value, the scheduler needs no megaset
        rules = dask_scheduler.http_application.wildcard_router.rules
        return any(str(getattr(rule.matcher, "regex", None) and rule.matcher.regex.pattern).endswith("/status$")
                   for rule in rules)

    try:
        served = client.run_on_scheduler(serves_status)
    except Exception:  # noqa: BLE001  # a scheduler that runs no function of its clients: take the client's word
        served = True
    return link if served else None


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


#: Seconds a local cluster of pools waits for all its workers to start.
_POOL_START_S = 120


def _initial_workers(cfg: ClusterConfig) -> int:
    return cfg.adapt.minimum if cfg.adapt else cfg.workers


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _check_local_gpus(cfg: ClusterConfig) -> None:
    """Local GPU workers need as many visible CUDA devices as they declare in all, over every pool."""
    sections = pool_sections(cfg).values()
    needed = sum(s.gpus_per_worker * (s.adapt.maximum if s.adapt else s.workers or 0) for s in sections)
    if not needed:
        return
    visible = _cuda_devices()
    if visible < needed:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        env = f" (CUDA_VISIBLE_DEVICES={shown!r})" if shown is not None else ""
        if cfg.pools:
            asked = ", ".join(f"{name} {s.workers} x {s.gpus_per_worker}" for name, s in pool_sections(cfg).items()
                              if s.gpus_per_worker)
            fix = "lower the workers or gpus of the GPU pools"
        else:
            workers = cfg.adapt.maximum if cfg.adapt else cfg.workers
            asked = f"cluster.gpus_per_worker={cfg.gpus_per_worker} with up to {workers} local workers"
            fix = "set cluster.gpus_per_worker: 0 to run on CPU, or lower cluster.workers"
        msg = f"{asked} needs {needed} CUDA devices, but {visible} are visible on this machine{env}; {fix}"
        raise ConfigError(msg)


def _check_worker_gpus(client: Client, cfg: ClusterConfig) -> None:
    """An existing cluster must have workers declaring the ``GPU`` resource the config asks for.

    Only the workers connected now can be checked: an adaptive cluster with none yet passes.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if cfg.pools and workers:
        _check_worker_pools(workers, cfg)
    if not cfg.gpus_per_worker or not workers:
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


def _check_worker_pools(workers: dict[str, Any], cfg: ClusterConfig) -> None:
    """Each pool of an existing cluster needs a worker declaring the resource that places stages on it."""
    for name, pool in pool_sections(cfg).items():
        wanted = "GPU" if pool.gpus_per_worker else "CPU"
        if any(w.get("resources", {}).get(wanted, 0) >= 1 for w in workers.values()):
            continue
        msg = (
            f"cluster.pools.{name} runs {'training and scoring' if wanted == 'GPU' else 'ingest and mix'}, but no "
            f"worker of the scheduler at {cfg.address} declares the resource {wanted}; start its workers with "
            f"`dask worker {cfg.address} {' '.join(resources_arg(pool))}`"
        )
        raise ConfigError(msg)


def _connect(cfg: ClusterConfig, timeout: float) -> Client:
    from distributed import Client

    from megaset.deploy.tls import configured_files

    files = configured_files(cfg)
    if files is None and str(cfg.address).startswith("tls://") and not _dask_tls_configured():
        msg = (
            f"cluster.address={cfg.address!r} is a TLS scheduler, but no certificates are given: set "
            "cluster.tls.ca_file, cert_file and key_file to the PEM files of its cluster's certificate authority, "
            "a certificate it signed and its key (or give them in the dask configuration, distributed.comm.tls.*)"
        )
        raise ConfigError(msg)
    try:
        # Without cluster.tls files, Dask's own: its configuration, or a facility's security loader.
        return Client(cfg.address, timeout=timeout, security=files.security() if files else None)
    except OSError as err:  # TimeoutError and ssl.SSLError included
        if files and "certificate" in str(err).lower():
            msg = (
                f"the Dask scheduler at cluster.address={cfg.address!r} refused the certificates of cluster.tls "
                f"(ca_file {files.ca}, cert_file {files.cert}): {err}; give the files of that cluster's "
                "certificate authority"
            )
        elif not files and _speaks_tls(str(cfg.address), timeout):
            msg = (
                f"the Dask scheduler at cluster.address={cfg.address!r} speaks TLS alone: write the address as "
                "tls://host:port and set cluster.tls.ca_file, cert_file and key_file to the certificates of "
                "its cluster (docs/deploy.md, TLS)"
            )
        else:
            msg = (
                f"cannot reach the Dask scheduler at cluster.address={cfg.address!r} within "
                f"{timeout:g} s ({err}); check the address and that the scheduler is running"
            )
        raise ConfigError(msg) from None


def _dask_tls_configured() -> bool:
    import dask

    return bool(dask.config.get("distributed.comm.tls.ca-file", None)
                or dask.config.get("distributed.client.security-loader", None))


def _speaks_tls(address: str, timeout: float) -> bool:
    """Whether ``host:port`` of ``address`` answers a TLS handshake with a certificate (one this
    machine cannot verify: a cluster's own authority), which a plain-TCP Dask client cannot speak."""
    import socket
    import ssl

    host, _, port = address.partition("://")[2].rpartition(":")
    if not port.isdigit():
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    try:
        with (socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5)) as sock,
              context.wrap_socket(sock)):
            return True
    except ssl.SSLCertVerificationError:
        return True
    except OSError:
        return False


def _local(cfg: ClusterConfig) -> Any:
    from dask.utils import parse_bytes
    from distributed import LocalCluster

    _check_local_gpus(cfg)
    cluster = LocalCluster(
        **_local_tls(cfg),
        n_workers=0 if cfg.pools else _initial_workers(cfg),
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
        resources=worker_resources(cfg) or None,
    )
    if cfg.pools:
        add_pools(cluster, cfg, lambda pool: {"nthreads": pool.threads_per_worker,
                                              "memory_limit": parse_bytes(pool.memory_per_worker),
                                              "resources": worker_resources(pool)})
    return cluster


def _local_tls(cfg: ClusterConfig) -> dict[str, Any]:
    """``LocalCluster`` arguments for ``cluster.tls``: the config's files, or a certificate made for this
    cluster alone (kept in memory; the worker processes get it from their nanny)."""
    from megaset.deploy.tls import configured_files, made_security, tls_enabled

    if not tls_enabled(cfg):
        return {}
    files = configured_files(cfg)
    return {"protocol": "tls://", "security": files.security() if files else made_security()}


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
        if cfg.pools:
            # Each backend started its pools (a scale to one number would make them all alike); local
            # workers are up in seconds, batch and Kubernetes ones join as they are scheduled.
            if cfg.kind == "local":
                cluster.wait_for_workers(sum(p.workers for p in cfg.pools.values()), timeout=_POOL_START_S)
        elif cfg.adapt:
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
