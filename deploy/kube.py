"""``kind: kubernetes``: the ``DaskCluster`` resource built from the config, and its start.

The dask-kubernetes operator turns a ``DaskCluster`` resource into a scheduler pod, a
scheduler service ``<name>-scheduler`` and a group of worker pods. :func:`kube_cluster_spec`
renders that resource from the ``cluster`` section alone (no API call), so it can be checked
offline and written out as a manifest; :func:`start_kube_cluster` hands it to ``KubeCluster``.

>>> from megaset.config import ClusterConfig
>>> spec = kube_cluster_spec(ClusterConfig(kind="kubernetes", workers=3, memory_per_worker="8 GiB"))
>>> spec["spec"]["worker"]["replicas"], spec["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]
(3, {'cpu': 1, 'memory': '8Gi'})
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from megaset.config import ClusterConfig
from megaset.deploy.pools import pool_sections, resources_arg
from megaset.deploy.tls import MOUNT, SECRET_KEYS, TLSFiles, tls_enabled
from megaset.deploy.worker_env import WORKER_MALLOC_ENV
from megaset.errors import ConfigError
from megaset.extras import require

__all__ = ["kube_cluster_spec", "kube_worker_groups", "kube_network_policy", "start_kube_cluster", "quantity"]

#: The files of the Secret ``cluster.tls.secret`` as scheduler, workers and driver see them.
MOUNTED = TLSFiles(*(f"{MOUNT}/{name}" for name in SECRET_KEYS))
#: The scheduler's port for Dask's own protocol (the operator's service exposes it).
SCHEDULER_PORT = 8786
#: The scheduler's HTTP routes with TLS: distributed's defaults and its API, through which the operator
#: retires workers and reads the adaptive target; the Dask RPC it would fall back on speaks tcp:// alone.
HTTP_ROUTES = (
    "distributed.http.scheduler.prometheus", "distributed.http.scheduler.info", "distributed.http.scheduler.json",
    "distributed.http.health", "distributed.http.proxy", "distributed.http.statics", "distributed.http.scheduler.api",
)

_UNITS = (
    ("Ti", 2**40), ("T", 10**12), ("Gi", 2**30), ("G", 10**9),
    ("Mi", 2**20), ("M", 10**6), ("Ki", 2**10), ("k", 10**3),
)


def quantity(size: str) -> str:
    """A human size ('4 GiB', '1.5 GB') as the exact Kubernetes quantity with the largest unit.

    Dask reads the result back to the same number of bytes, so worker memory limits and
    container limits agree to the byte.

    >>> quantity("4 GiB"), quantity("1.5 GiB"), quantity("2 GB"), quantity("1000 B")
    ('4Gi', '1536Mi', '2G', '1k')
    """
    from dask.utils import parse_bytes

    nbytes = parse_bytes(size)
    for unit, factor in _UNITS:
        if nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return str(nbytes)


def _cpu(cores: float) -> int | str:
    return int(cores) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def _worker_command(cfg: ClusterConfig) -> list[str]:
    return [
        "dask", "worker",
        "--nthreads", str(cfg.threads_per_worker),
        "--memory-limit", quantity(cfg.memory_per_worker),
        *resources_arg(cfg),
        *(MOUNTED.args() if tls_enabled(cfg) else []),
    ]


def _worker_resources(cfg: ClusterConfig) -> dict[str, dict[str, Any]]:
    cpu, memory = _cpu(cfg.threads_per_worker), quantity(cfg.memory_per_worker)
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if cfg.gpus_per_worker:
        # Extended resources are given as limits only; Kubernetes sets the request equal.
        limits["nvidia.com/gpu"] = cfg.gpus_per_worker
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def _harden(pod: dict[str, Any], cfg: ClusterConfig) -> None:
    """Non-root, no privilege escalation, no capabilities; image pull policy and account."""
    kube = cfg.kubernetes
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": kube.run_as_user,
        "runAsGroup": kube.run_as_user,
        "fsGroup": kube.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if kube.service_account:
        pod["serviceAccountName"] = kube.service_account
    for container in pod["containers"]:
        container["imagePullPolicy"] = kube.image_pull_policy
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }


def kube_cluster_spec(cfg: ClusterConfig) -> dict[str, Any]:
    """The ``DaskCluster`` resource (a plain dict) that ``kind: kubernetes`` creates.

    Built with dask-kubernetes' ``make_cluster_spec``, then: workers sized by
    ``threads_per_worker`` / ``memory_per_worker`` / ``gpus_per_worker`` (requests and limits,
    ``nvidia.com/gpu``, the Dask resource ``GPU``), a small scheduler without GPUs or
    credentials, the object-store secret as environment of the workers, node selector and
    tolerations for the workers, a non-root security context everywhere.
    """
    require("kubernetes")
    from dask_kubernetes.operator import make_cluster_spec

    if cfg.pools:  # the first pool is the cluster's own worker group, the others kube_worker_groups
        cfg = next(iter(pool_sections(cfg).values()))
    kube = cfg.kubernetes
    spec = make_cluster_spec(
        name=kube.name,
        image=kube.image,
        n_workers=cfg.adapt.minimum if cfg.adapt else cfg.workers,
        resources=_worker_resources(cfg),
        env={**{k: str(v) for k, v in WORKER_MALLOC_ENV.items()}, **kube.env},
        worker_command=_worker_command(cfg),
    )
    if kube.namespace:
        spec["metadata"]["namespace"] = kube.namespace
    spec["metadata"]["labels"] = {"app.kubernetes.io/name": "megaset"}

    scheduler = spec["spec"]["scheduler"]["spec"]
    memory = quantity(kube.scheduler_memory)
    cpu = _cpu(kube.scheduler_cores)
    # make_cluster_spec starts the scheduler with the `dask-scheduler` script, which
    # distributed no longer installs.
    # Every interface of the pod: the scheduler service reaches it through the pod's address; the
    # NetworkPolicy (kube_network_policy) and TLS keep others out.
    scheduler["containers"][0]["args"] = ["dask", "scheduler", "--host", "0.0.0.0", *_tls_args(cfg)]
    # It also gives the scheduler the workers' resources; it needs neither their size nor
    # their GPUs.
    scheduler["containers"][0]["resources"] = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    _harden(scheduler, cfg)

    worker = spec["spec"]["worker"]["spec"]
    if kube.secret:
        worker["containers"][0]["envFrom"] = [{"secretRef": {"name": kube.secret}}]
    if kube.node_selector:
        worker["nodeSelector"] = dict(kube.node_selector)
    if kube.tolerations:
        worker["tolerations"] = [dict(t) for t in kube.tolerations]
    _harden(worker, cfg)
    if tls_enabled(cfg):
        _mount_tls(scheduler, cfg)
        _mount_tls(worker, cfg)
        scheduler["containers"][0]["env"].append({"name": "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES",
                                                  "value": repr(list(HTTP_ROUTES))})
        namespace = f".{kube.namespace}.svc.cluster.local" if kube.namespace else ""
        # The operator gives workers a tcp:// address unless one is set already.
        worker["containers"][0]["env"].append({"name": "DASK_SCHEDULER_ADDRESS",
                                               "value": f"tls://{kube.name}-scheduler{namespace}:{SCHEDULER_PORT}"})
    return spec


def _tls_args(cfg: ClusterConfig) -> list[str]:
    return ["--protocol", "tls", *MOUNTED.args()] if tls_enabled(cfg) else []


def _mount_tls(pod: dict[str, Any], cfg: ClusterConfig) -> None:
    """The Secret ``cluster.tls.secret`` as files under MOUNT, readable by the containers' group alone."""
    # 0o440: the Secret's files belong to root and to the pod's fsGroup, which the containers run as.
    pod.setdefault("volumes", []).append({"name": "dask-tls",
                                          "secret": {"secretName": cfg.tls.secret, "defaultMode": 0o440}})
    for container in pod["containers"]:
        container.setdefault("volumeMounts", []).append({"name": "dask-tls", "mountPath": MOUNT, "readOnly": True})


def kube_network_policy(cfg: ClusterConfig) -> dict[str, Any]:
    """The ``NetworkPolicy`` of the cluster of ``cfg``: its scheduler's and workers' ports (Dask's,
    the dashboards') take connections only from the pods of the same Dask cluster and from the
    driver Job (deploy/kubernetes/job.yaml); the dask-kubernetes operator may reach the scheduler's
    HTTP port, through which it scales the cluster.

    >>> from megaset.config import ClusterConfig
    >>> policy = kube_network_policy(ClusterConfig(kind="kubernetes"))
    >>> policy["spec"]["podSelector"]
    {'matchLabels': {'dask.org/cluster-name': 'megaset'}}
    """
    kube = cfg.kubernetes

    def own() -> dict[str, Any]:  # a fresh dict each time: YAML would write one shared twice as an alias
        return {"matchLabels": {"dask.org/cluster-name": kube.name}}

    metadata: dict[str, Any] = {"name": f"{kube.name}-dask"}
    if kube.namespace:
        metadata["namespace"] = kube.namespace
    metadata["labels"] = {"app.kubernetes.io/name": "megaset"}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": own(),
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [
                    {"podSelector": own()},
                    {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "megaset",
                                                     "app.kubernetes.io/component": "driver"}}},
                ]},
                {"from": [{"namespaceSelector": {},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "dask-kubernetes-operator"}}}],
                 "ports": [{"protocol": "TCP", "port": 8787}]},
            ],
        },
    }


def kube_worker_groups(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """A ``DaskWorkerGroup`` resource ``<name>-<pool>`` for every pool after the first (which is the
    ``DaskCluster``'s own worker group): the same pod as the cluster's workers, sized by the pool."""
    kube = cfg.kubernetes
    groups = []
    for pool, section in list(pool_sections(cfg).items())[1:] if cfg.pools else []:
        group: dict[str, Any] = {
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskWorkerGroup",
            "metadata": {"name": f"{kube.name}-{pool}", "labels": {"app.kubernetes.io/name": "megaset"}},
            "spec": {"cluster": kube.name, "worker": kube_cluster_spec(section)["spec"]["worker"]},
        }
        if kube.namespace:
            group["metadata"]["namespace"] = kube.namespace
        groups.append(group)
    return groups


def _discard_failed(name: str) -> None:
    """Close what a failed ``KubeCluster`` start left behind, deleting its DaskCluster if the
    start got that far; otherwise its event loop is left running until exit."""
    from dask_kubernetes.operator import KubeCluster
    from distributed.core import Status

    # KubeCluster keeps every instance, half-started ones included, for its own atexit reaper.
    for cluster in [c for c in KubeCluster._instances if c.name == name]:
        if cluster.status in (Status.running, Status.closed):
            continue
        try:
            cluster.close(timeout=30)
        except Exception:  # noqa: BLE001 - the API that failed the start fails the deletion too
            cluster.shutdown_on_close = False
            cluster.close(timeout=30)


def start_kube_cluster(cfg: ClusterConfig) -> Any:
    """Create (or connect to, if one of that name exists) the ``DaskCluster`` of ``cfg``.

    A cluster created here is deleted when closed; an existing one is left running.

    Raises
    ------
    ConfigError
        If the Kubernetes API cannot be reached or refuses, or the scheduler does not start
        within ``cluster.kubernetes.startup_timeout``.
    MissingExtraError
        If the ``kubernetes`` extra is not installed.
    """
    require("kubernetes")
    from megaset.deploy.tls import configured_files

    kube = cfg.kubernetes
    files = configured_files(cfg) if tls_enabled(cfg) else None
    try:
        with _operator_client_tls(files):
            cluster = _kube_cluster_class(files is not None)(
                custom_cluster_spec=kube_cluster_spec(cfg),
                namespace=kube.namespace,
                resource_timeout=kube.startup_timeout,
                quiet=True,
            )
        for group in kube_worker_groups(cfg):
            # The operator names the group <cluster>-<name>, as the rendered manifest does.
            cluster.add_worker_group(group["metadata"]["name"].removeprefix(f"{kube.name}-"),
                                     custom_spec=group["spec"]["worker"])
    except Exception as err:
        # kr8s, httpx and the operator raise many unrelated types; all mean the same here.
        _discard_failed(kube.name)
        msg = (
            f"cannot start the Kubernetes Dask cluster {kube.name!r} "
            f"(namespace {kube.namespace or 'current'}): {type(err).__name__}: {err}; check that "
            "the Kubernetes API is reachable (KUBECONFIG, or a pod whose ServiceAccount may create "
            "daskclusters: deploy/kubernetes/rbac.yaml) and that the dask-kubernetes operator is "
            "installed (docs/deploy.md)"
        )
        raise ConfigError(msg) from err
    if files is not None:
        cluster.security = files.security()  # what Client(cluster) connects with
    return cluster


def _kube_cluster_class(tls: bool) -> type:
    """``KubeCluster``, or with ``tls`` one reaching its scheduler at ``tls://``: the operator's
    client writes every scheduler address as ``tcp://``."""
    from dask_kubernetes.operator import KubeCluster

    if not tls:
        return KubeCluster

    class TLSKubeCluster(KubeCluster):
        async def _get_scheduler_address(self) -> str:
            address = await super()._get_scheduler_address()
            return "tls://" + address.partition("://")[2]

    return TLSKubeCluster


@contextlib.contextmanager
def _operator_client_tls(files: TLSFiles | None) -> Iterator[None]:
    """While a ``KubeCluster`` starts, its connections to the scheduler carry ``files``' certificates.

    The operator's client opens them with ``distributed.core.rpc(address)`` and no connection
    arguments, which a TLS scheduler refuses; the two modules that do so get an ``rpc`` with
    the client's TLS context for the start (the connection kept afterwards keeps it too).
    """
    if files is None:
        yield
        return
    from dask_kubernetes.operator import networking
    from dask_kubernetes.operator.kubecluster import kubecluster
    from distributed.core import rpc

    secured = functools.partial(rpc, connection_args=files.security().get_connection_args("client"))
    modules = (networking, kubecluster)
    for module in modules:
        module.rpc = secured
    try:
        yield
    finally:
        for module in modules:
            module.rpc = rpc
