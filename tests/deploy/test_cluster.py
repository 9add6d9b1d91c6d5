"""Clusters from configuration: specs and job scripts rendered offline, real local and address
clusters (a `dask scheduler` and `dask worker` processes on loopback), and fast, clear failures."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dask.utils import parse_bytes

from megaset.config import ClusterConfig, Config, load_config
from megaset.deploy.cluster import ClusterSize, cluster_size, dashboard_link, describe, open_client, release_memory
from megaset.deploy.condor import MADE_AT_START, SCHEDULER_PLACEHOLDER, htcondor_job_script, start_htcondor_cluster
from megaset.deploy.kube import kube_cluster_spec, quantity
from megaset.deploy.tls import TLSFiles, generate
from megaset.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASK = str(Path(sys.executable).parent / "dask")



# Local, Kubernetes and HTCondor workers all start with it (deploy/cluster.py says why).
MALLOC_ENV = {"name": "MALLOC_MMAP_THRESHOLD_", "value": str(256 * 2**20)}

def refused_within(cfg: ClusterConfig, seconds: float, match: str) -> None:
    """``open_client(cfg)`` fails with a ConfigError matching ``match`` in under ``seconds``."""
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=match), open_client(cfg):
        pass
    assert time.perf_counter() - t0 < seconds


def containers(spec: dict) -> tuple[dict, dict]:
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    return scheduler, worker


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# ------------------------------------------------------------------ describe and sizes


def test_describe_every_kind():
    assert describe(ClusterConfig()) == "local cluster, 2 workers x 1 thread, 4 GiB each"
    assert describe(ClusterConfig(kind="htcondor", adapt={"minimum": 2, "maximum": 50},
                                  threads_per_worker=2, memory_per_worker="8 GiB", gpus_per_worker=1)) == (
        "htcondor cluster, adaptive 2-50 workers x 2 threads, 8 GiB each, 1 GPU")
    assert describe(load_config(DEPLOY / "kubernetes" / "config.yaml").cluster) == (
        "kubernetes cluster 'megaset' (namespace megaset, image ghcr.io/megaset/megaset:0.1.0), "
        "8 workers x 2 threads, 8 GiB each")
    assert describe(ClusterConfig(kind="address", address="tcp://10.0.0.1:8786", gpus_per_worker=1)) == (
        "existing scheduler at tcp://10.0.0.1:8786, 1 GPU per worker required")


@pytest.mark.parametrize(("size", "expected"), [("4 GiB", "4Gi"), ("1.5 GiB", "1536Mi"), ("2 GB", "2G"),
                                                ("3 TiB", "3Ti"), ("1000 B", "1k"), ("1001 B", "1001")])
def test_quantity_is_exact(size, expected):
    assert quantity(size) == expected
    assert parse_bytes(quantity(size)) == parse_bytes(size)


def test_quantity_reads_back_through_the_kubernetes_client():
    """Kubernetes' own reading of the quantities written into pod specs (the client library
    parses them, it does not write them; dask-kubernetes installs it)."""
    from kubernetes.utils import parse_quantity

    sizes = ["4 GiB", "1.5 GiB", "2 GB", "3 TiB", "1000 B", "1001 B", "512 MiB", "7.25 GB", "100 kiB", "1 PiB"]
    sizes += [f"{n} B" for n in np.random.default_rng(0).integers(1, 2**45, 200)]
    for size in sizes:
        assert parse_quantity(quantity(size)) == parse_bytes(size), size


# ------------------------------------------------------------------ Kubernetes spec, offline


def test_kube_spec_from_the_example_config():
    cfg = load_config(DEPLOY / "kubernetes" / "config.yaml").cluster
    spec = kube_cluster_spec(cfg)
    scheduler, worker = containers(spec)
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    assert spec["metadata"]["name"] == "megaset" and spec["metadata"]["namespace"] == "megaset"
    assert spec["spec"]["worker"]["replicas"] == 8
    assert scheduler["image"] == worker["image"] == "ghcr.io/megaset/megaset:0.1.0"
    assert scheduler["imagePullPolicy"] == worker["imagePullPolicy"] == "IfNotPresent"
    # The worker command: 2 threads, the container's memory as Dask's limit, no GPU resource.
    args = worker["args"]
    assert args[:2] == ["dask", "worker"]
    assert option(args, "--nthreads") == "2" and option(args, "--memory-limit") == "8Gi"
    assert "--resources" not in args
    assert worker["resources"] == {"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"cpu": 2, "memory": "8Gi"}}
    # The scheduler: its own small size, the command distributed still installs, TLS with the Secret's files.
    tls = ["--tls-ca-file", "/etc/dask-tls/ca.crt", "--tls-cert", "/etc/dask-tls/tls.crt",
           "--tls-key", "/etc/dask-tls/tls.key"]
    assert scheduler["args"] == ["dask", "scheduler", "--host", "0.0.0.0", "--protocol", "tls", *tls]
    assert " ".join(tls) in " ".join(args)
    assert scheduler["resources"] == {"requests": {"cpu": 1, "memory": "2Gi"}, "limits": {"cpu": 1, "memory": "2Gi"}}
    # Environment on both; object-store credentials only where tasks read and write; the workers
    # reach the scheduler at tls:// (the operator would give them tcp://).
    env = [MALLOC_ENV, {"name": "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "value": "5"}]
    # The operator scales through the scheduler's HTTP API (its RPC fallback speaks tcp:// alone).
    (routes,) = [e["value"] for e in scheduler["env"] if e["name"] == "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"]
    # distributed's own defaults, read from its file: a scheduler started in this process without
    # bokeh appends a route to the live config's list in place.
    import distributed
    import yaml

    defaults = yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text())
    assert set(ast.literal_eval(routes)) == {*defaults["distributed"]["scheduler"]["http"]["routes"],
                                             "distributed.http.scheduler.api"}
    assert scheduler["env"][:2] == env
    assert worker["env"] == [*env, {"name": "DASK_SCHEDULER_ADDRESS",
                                    "value": "tls://megaset-scheduler.megaset.svc.cluster.local:8786"}]
    assert worker["envFrom"] == [{"secretRef": {"name": "megaset-object-store"}}]
    assert "envFrom" not in scheduler
    for part in ("scheduler", "worker"):
        pod = spec["spec"][part]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                          "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"]}}
        assert "nodeSelector" not in pod and "tolerations" not in pod and "serviceAccountName" not in pod
        assert pod["volumes"] == [{"name": "dask-tls",
                                   "secret": {"secretName": "megaset-dask-tls", "defaultMode": 0o440}}]
        assert pod["containers"][0]["volumeMounts"] == [{"name": "dask-tls", "mountPath": "/etc/dask-tls",
                                                         "readOnly": True}]


def test_kube_spec_without_tls():
    spec = kube_cluster_spec(ClusterConfig(kind="kubernetes", tls={"enabled": False}))
    scheduler, worker = containers(spec)
    assert scheduler["args"] == ["dask", "scheduler", "--host", "0.0.0.0"]
    assert not any(a.startswith("--tls") for a in worker["args"])
    assert "DASK_SCHEDULER_ADDRESS" not in {e["name"] for e in worker["env"]}
    assert "volumes" not in spec["spec"]["scheduler"]["spec"] and "volumeMounts" not in worker


def test_kube_spec_gpu_variant():
    cfg = load_config(DEPLOY / "kubernetes" / "config-gpu.yaml").cluster
    spec = kube_cluster_spec(cfg)
    scheduler, worker = containers(spec)
    assert spec["metadata"]["name"] == "megaset-gpu"
    assert spec["spec"]["worker"]["replicas"] == 1  # adapt.minimum; the autoscaler does the rest
    assert worker["image"] == "ghcr.io/megaset/megaset:0.1.0-cuda"
    assert option(worker["args"], "--resources") == "GPU=1"
    assert option(worker["args"], "--nthreads") == "4" and option(worker["args"], "--memory-limit") == "32Gi"
    assert worker["resources"]["limits"] == {"cpu": 4, "memory": "32Gi", "nvidia.com/gpu": 1}
    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    assert "nvidia.com/gpu" not in scheduler["resources"]["limits"]
    pod = spec["spec"]["worker"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in spec["spec"]["scheduler"]["spec"]


def test_kube_spec_options():
    cfg = ClusterConfig(kind="kubernetes", threads_per_worker=1, memory_per_worker="1.5 GiB",
                        kubernetes={"service_account": "megaset-worker", "run_as_user": 4242,
                                    "scheduler_cores": 0.5, "image_pull_policy": "Always"})
    spec = kube_cluster_spec(cfg)
    scheduler, worker = containers(spec)
    assert "namespace" not in spec["metadata"]  # the current namespace
    assert scheduler["resources"]["requests"]["cpu"] == "500m"
    assert worker["resources"]["limits"]["memory"] == "1536Mi"
    assert "envFrom" not in worker
    # The current namespace: the scheduler service by its short name.
    assert worker["env"] == [MALLOC_ENV, {"name": "DASK_SCHEDULER_ADDRESS", "value": "tls://megaset-scheduler:8786"}]
    for part in ("scheduler", "worker"):
        pod = spec["spec"][part]["spec"]
        assert pod["serviceAccountName"] == "megaset-worker"
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 4242
        assert pod["containers"][0]["imagePullPolicy"] == "Always"


def test_kubernetes_without_credentials_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = ClusterConfig(kind="kubernetes", kubernetes={"name": "nowhere", "namespace": "megaset"},
                        tls={"enabled": False})
    refused_within(cfg, 10, r"cannot start the Kubernetes Dask cluster 'nowhere' \(namespace "
                        r"megaset\).*credentials.*KUBECONFIG")


def test_kubernetes_driver_connects_with_its_certificates(tmp_path):
    """The operator's client opens its scheduler connections with distributed's rpc and tcp://
    addresses: while a TLS cluster starts, both carry the certificates, and nothing else after."""
    import ssl

    from dask_kubernetes.operator import KubeCluster, networking
    from dask_kubernetes.operator.kubecluster import kubecluster
    from distributed.core import rpc

    from megaset.deploy.kube import _kube_cluster_class, _operator_client_tls

    assert networking.rpc is kubecluster.rpc is rpc  # what is replaced is there
    files = generate(tmp_path / "certs")
    with _operator_client_tls(files):
        for module in (networking, kubecluster):
            assert isinstance(module.rpc.keywords["connection_args"]["ssl_context"], ssl.SSLContext)
    assert networking.rpc is kubecluster.rpc is rpc
    tls_class = _kube_cluster_class(tls=True)
    assert issubclass(tls_class, KubeCluster) and _kube_cluster_class(tls=False) is KubeCluster
    assert "_get_scheduler_address" in vars(tls_class) and hasattr(KubeCluster, "_get_scheduler_address")


def test_kubernetes_driver_without_the_tls_secret_names_it():
    """Outside a pod that mounts the Secret, the driver says which file and key it misses, before any API call."""
    cfg = ClusterConfig(kind="kubernetes", kubernetes={"name": "nowhere", "namespace": "megaset"})
    refused_within(cfg, 5, r"cluster\.tls\.ca_file: cannot read /etc/dask-tls/ca\.crt \(the Secret "
                       r"'megaset-dask-tls' mounted at /etc/dask-tls.*No such file")


# ------------------------------------------------------------------ HTCondor job script, offline


def test_htcondor_job_script_shared_filesystem():
    script = htcondor_job_script(load_config(DEPLOY / "htcondor" / "config-shared-fs.yaml").cluster)
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env condor_submit"
    assert "RequestCpus = MY.DaskWorkerCores" in lines and "MY.DaskWorkerCores = 1" in lines
    assert f"MY.DaskWorkerMemory = {4 * 2**30}" in lines
    assert f"MY.DaskWorkerDisk = {10 * 2**30}" in lines
    assert 'requirements = OpSysAndVer == "AlmaLinux9"' in lines
    assert "LogDirectory = /shared/megaset/logs" in lines
    assert "Executable = /bin/sh" in lines and not any(line.startswith("request_GPUs") for line in lines)
    (arguments,) = [line for line in lines if line.startswith("Arguments = ")]
    # The prologue first, then the worker with the environment's own interpreter.
    assert arguments.startswith(
        "Arguments = \"-c 'export MALLOC_MMAP_THRESHOLD_=268435456; "
        "source /shared/megaset/venv/bin/activate; export OMP_NUM_THREADS=1; "
        f"/shared/megaset/venv/bin/python -m distributed.cli.dask_worker {SCHEDULER_PLACEHOLDER} ")
    assert "--nthreads 1 --memory-limit 4.00GiB" in arguments
    assert "--local-directory $_CONDOR_SCRATCH_DIR" in arguments
    assert "--resources" not in arguments
    # TLS by default: the certificates made at start travel with each job into its scratch directory.
    assert arguments.endswith(" --tls-ca-file $_CONDOR_SCRATCH_DIR/ca.crt --tls-cert $_CONDOR_SCRATCH_DIR/tls.crt "
                              "--tls-key $_CONDOR_SCRATCH_DIR/tls.key --protocol tls://'\"")
    assert "should_transfer_files = YES" in lines
    assert f"transfer_input_files = {MADE_AT_START}/ca.crt,{MADE_AT_START}/tls.crt,{MADE_AT_START}/tls.key" in lines


def test_htcondor_tls_files_and_transfer(tmp_path):
    files = generate(tmp_path / "certs")
    cfg = ClusterConfig(kind="htcondor", htcondor={"disk": "1 GiB"},
                        tls={"ca_file": files.ca, "cert_file": files.cert, "key_file": files.key})
    assert f"transfer_input_files = {files.ca},{files.cert},{files.key}" in htcondor_job_script(cfg).splitlines()
    plain = htcondor_job_script(ClusterConfig(kind="htcondor", htcondor={"disk": "1 GiB"}, tls={"enabled": False}))
    assert "--tls" not in plain and "transfer_input_files" not in plain and "--protocol" not in plain
    no_transfer = ClusterConfig(kind="htcondor", htcondor={"disk": "1 GiB",
                                                           "job_extra_directives": {"should_transfer_files": "NO"}})
    with pytest.raises(ConfigError, match=r"job_extra_directives\.should_transfer_files is 'NO'.*cluster\.tls"):
        htcondor_job_script(no_transfer)


def test_htcondor_job_script_object_store_runs_in_the_image():
    script = htcondor_job_script(load_config(DEPLOY / "htcondor" / "config-object-store.yaml").cluster)
    lines = script.splitlines()
    assert "MY.DaskWorkerCores = 2" in lines and f"MY.DaskWorkerMemory = {8 * 2**30}" in lines
    assert f"MY.DaskWorkerDisk = {20 * 2**30}" in lines
    assert "universe = container" in lines
    assert "container_image = docker://ghcr.io/megaset/megaset:0.1.0" in lines
    assert "transfer_executable = False" in lines and "should_transfer_files = YES" in lines
    # The object store's credentials, then the certificates of the cluster's TLS.
    assert f"transfer_input_files = $ENV(HOME)/.aws/credentials,{MADE_AT_START}/ca.crt," in script
    assert "export AWS_SHARED_CREDENTIALS_FILE=$_CONDOR_SCRATCH_DIR/credentials;" in script
    assert "/usr/local/bin/python -m distributed.cli.dask_worker" in script
    assert "AWS_SECRET_ACCESS_KEY" not in script


def test_htcondor_gpus_request_and_declare():
    script = htcondor_job_script(ClusterConfig(kind="htcondor", gpus_per_worker=2, htcondor={"disk": "1 GiB"}))
    assert "request_GPUs = 2" in script.splitlines()
    assert "--resources GPU=2" in script


def test_htcondor_without_disk_names_the_key():
    import dask

    with dask.config.set({"jobqueue.htcondor.disk": None}), pytest.raises(
            ConfigError, match=r"disk.*cluster\.htcondor.*jobqueue\.yaml"):
        htcondor_job_script(ClusterConfig(kind="htcondor"))


def test_htcondor_without_condor_submit_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = ClusterConfig(kind="htcondor", htcondor={"disk": "1 GiB"})
    with pytest.raises(ConfigError, match=r"condor_submit is not on PATH.*submit node"), open_client(cfg):
        pass


def test_htcondor_cluster_submits_the_rendered_script(tmp_path, monkeypatch):
    """The started HTCondorCluster's own job script is the rendered one, with its address."""
    # Only found on PATH, never run: no job is submitted before the cluster is scaled.
    stub = tmp_path / "condor_submit"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = load_config(DEPLOY / "htcondor" / "config-shared-fs.yaml").cluster
    cfg = cfg.model_copy(update={"dashboard": False})
    before = _listening([os.getpid()])
    with start_htcondor_cluster(cfg) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        # Worker jobs reach the scheduler's TLS port from elsewhere; its HTTP routes stay on loopback.
        port = int(cluster.scheduler_address.rpartition(":")[2])
        sockets = _listening([os.getpid()]) - before
        assert {p for _, address, p in sockets if address != "127.0.0.1"} == {port}, sockets
        folder = Path(cluster.megaset_tls_folder.name)
        assert cluster.job_script() == htcondor_job_script(cfg).replace(
            SCHEDULER_PLACEHOLDER, cluster.scheduler_address).replace(MADE_AT_START, str(folder))
        # The certificate made for this cluster: its key for its owner alone, gone with the cluster.
        assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        assert (folder / "tls.key").stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    del cluster
    import gc

    gc.collect()
    assert not folder.exists()


# ------------------------------------------------------------------ local clusters


def test_local_cluster_size(tmp_path):
    cfg = ClusterConfig(workers=2, threads_per_worker=1, memory_per_worker="1 GiB")
    with open_client(cfg) as client:
        size = cluster_size(client)
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert size == ClusterSize(workers=2, threads=2, memory=2 * 2**30, gpus=0)


def _listening(pids) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket those processes listen on."""
    import psutil

    out = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                out.add((pid, conn.laddr.ip, conn.laddr.port))
    return out


@pytest.mark.parametrize("dashboard", [False, True])
def test_local_cluster_listens_on_loopback_alone(dashboard):
    """Scheduler, its HTTP routes (dashboard or not), workers and nannies: no socket outside
    127.0.0.1, where whoever reaches the scheduler could run code on the workers."""
    import psutil

    before = _listening([os.getpid()])
    with open_client(ClusterConfig(workers=2, memory_per_worker="1 GiB", dashboard=dashboard)) as client:
        children = [p.pid for p in psutil.Process().children(recursive=True)]
        sockets = _listening([os.getpid(), *children]) - before
        workers = set(client.run(os.getpid).values())
        http = client.scheduler_info()["services"]["dashboard"]
        link = dashboard_link(client, ClusterConfig(dashboard=dashboard))
    # The dashboard's address as megaset prints it, none where its port serves only health and metrics.
    assert link == (f"http://127.0.0.1:{http}/status" if dashboard else None)
    # The scheduler's comm and HTTP server and the nannies here, each worker in its own process.
    assert {pid for pid, _, _ in sockets} >= {os.getpid(), *workers}
    assert any(port == http for pid, _, port in sockets if pid == os.getpid())
    assert {address for _, address, _ in sockets} == {"127.0.0.1"}, sockets


def test_local_cluster_host_is_configurable():
    before = _listening([os.getpid()])
    with open_client(ClusterConfig(workers=1, memory_per_worker="1 GiB", host="0.0.0.0")):
        sockets = _listening([os.getpid()]) - before
    assert "0.0.0.0" in {address for _, address, _ in sockets}


def test_local_gpus_without_devices_fail_fast():
    cfg = ClusterConfig(workers=2, gpus_per_worker=64)
    refused_within(cfg, 15, r"gpus_per_worker=64 with up to 2 local workers needs 128 CUDA "
                        r"devices, but \d+ are visible.*gpus_per_worker: 0")


@pytest.mark.gpu
def test_local_gpu_workers_declare_the_resource():
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 1:
        pytest.skip("needs a CUDA device")
    with open_client(ClusterConfig(workers=1, gpus_per_worker=1, memory_per_worker="2 GiB")) as client:
        assert cluster_size(client).gpus == 1
        assert client.submit(lambda: 1, resources={"GPU": 1}).result(timeout=60) == 1


# ------------------------------------------------------------------ an existing scheduler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The memory limit of each worker of an existing scheduler's cluster: after training, a worker
#: holds 600-750 MiB of libraries (torch, numba, matplotlib), and Dask pauses one at 80 % of 1 GiB.
WORKER_MEMORY = 2 * 2**30


class Scheduler:
    """A `dask scheduler` and `dask worker` processes on loopback, stopped on exit; with ``tls``,
    speaking tls:// alone with those certificates."""

    def __init__(self, tmp_path: Path, workers: list[list[str]], tls: TLSFiles | None = None):
        self.tmp_path = tmp_path
        self.worker_args = workers
        self.tls = tls
        self.procs: list[tuple[subprocess.Popen, Any]] = []

    def _spawn(self, args: list[str], name: str) -> None:
        log = (self.tmp_path / f"{name}.log").open("wb")
        self.procs.append((subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.tmp_path), log))

    def __enter__(self) -> str:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> str:
        from distributed import Client

        info = self.tmp_path / "scheduler.json"
        tls = ["--protocol", "tls", *self.tls.args()] if self.tls else []
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(info), *tls], "scheduler")
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline, (self.tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        for i, extra in enumerate(self.worker_args):
            self._spawn(["worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                         "--memory-limit", str(WORKER_MEMORY), "--no-dashboard", "--no-nanny", *tls[2:], *extra],
                        f"worker-{i}")
        with Client(address, timeout=30, security=self.tls.security() if self.tls else None) as client:
            client.wait_for_workers(len(self.worker_args), timeout=90)
        return address

    def __exit__(self, *exc: object) -> None:
        # Workers first: a worker whose scheduler is already gone waits for it before exiting.
        for proc, log in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    with Scheduler(tmp_path_factory.mktemp("dask"), [[], []]) as addr:
        yield addr


@pytest.mark.slow
def test_address_cluster_size_and_real_work(address):
    import dask.array as da

    cfg = ClusterConfig(kind="address", address=address)
    with open_client(cfg) as client:
        assert cluster_size(client) == ClusterSize(workers=2, threads=2, memory=2 * WORKER_MEMORY, gpus=0)
        x = da.arange(1_000_000, chunks=100_000, dtype="int64")
        assert (x * x).sum().compute() == sum(i * i for i in range(1_000_000))
        workers = sorted(client.scheduler_info()["workers"])
        pids = {w: client.submit(os.getpid, workers=[w], pure=False).result() for w in workers}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    # The scheduler outlives the client: kind address leaves it running.
    with open_client(cfg) as client:
        assert len(client.scheduler_info()["workers"]) == 2


@pytest.mark.slow
def test_address_gpus_requested_without_gpu_workers(address):
    cfg = ClusterConfig(kind="address", address=address, gpus_per_worker=1)
    refused_within(cfg, 10, rf"gpus_per_worker=1, but no worker of the scheduler at "
                        rf"{address} declares that many GPUs \(.*GPU=0.*--resources GPU=1")


@pytest.mark.slow
def test_address_gpu_workers(tmp_path):
    with Scheduler(tmp_path, [["--resources", "GPU=2"]]) as addr:
        with open_client(ClusterConfig(kind="address", address=addr, gpus_per_worker=2)) as client:
            assert cluster_size(client) == ClusterSize(workers=1, threads=1, memory=WORKER_MEMORY, gpus=2)
            assert client.submit(lambda: "placed", resources={"GPU": 2}).result(timeout=30) == "placed"
        with (pytest.raises(ConfigError, match=r"gpus_per_worker=3, but no worker.*GPU=2"),
              open_client(ClusterConfig(kind="address", address=addr, gpus_per_worker=3))):
            pass


@pytest.mark.slow
def test_ingest_mix_train_score_on_an_existing_scheduler(address, tmp_path):
    """The chain, end to end, with every task on the workers of the existing scheduler."""
    from distributed import get_task_stream

    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import generate, write_ntuple
    from megaset.storage.mix import mix
    from megaset.storage.store import open_store
    from megaset.storage.verify import verify
    from megaset.training.score import score
    from megaset.training.trainer import train

    signal = {"zmmjets": False, "ttbar": False, "c1n2_wz_800_50": True}
    for c, channel in enumerate(signal):
        write_ntuple(tmp_path / f"{channel}.root", generate(channel, 2000, seed=7 + c))
    cfg = Config.model_validate({
        "inputs": {"chunksize": 1000, "channels": {
            ch: {"files": [str(tmp_path / f"{ch}.root")], "signal": sig} for ch, sig in signal.items()}},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 256},
        "cluster": {"kind": "address", "address": address},
        "training": {"output": str(tmp_path / "models"), "epochs": 1, "batch_size": 128},
    })
    with open_client(cfg.cluster) as client, get_task_stream(client) as stream:
        ingested = ingest(cfg, client)
        mixed = mix(cfg, client)
        trained = train(cfg, client)
        scored = score(cfg, client)
    assert len({task["worker"] for task in stream.data}) == 2
    assert verify(cfg.store.url) == []
    for channel in signal:
        assert ingested.channels[channel]["n_read"] == 2000
        stored = sum(g["channels"].get(channel, 0) for g in mixed["groups"].values())
        assert stored == ingested.channels[channel]["n_selected"] > 0
    assert set(mixed["groups"]) == {"train", "val", "test", "signal/c1n2_wz_800_50"}
    assert trained["epochs"] == 1 and trained["world_size"] == 2
    store = open_store(cfg.store.url)
    assert scored["events_scored"] == sum(store.group(g).n_events for g in store.group_names())


@pytest.mark.slow
def test_tls_scheduler_admits_its_certificates_alone(tmp_path):
    """A tls:// scheduler and worker with a certificate made for them: a client with it runs a task;
    one without, or with another cluster's, is refused in one line naming the address and the key."""
    files = generate(tmp_path / "certs")
    with Scheduler(tmp_path, [[]], tls=files) as addr:
        assert addr.startswith("tls://127.0.0.1:")
        tls = {"ca_file": files.ca, "cert_file": files.cert, "key_file": files.key}
        with open_client(ClusterConfig(kind="address", address=addr, tls=tls)) as client:
            assert client.submit(lambda: "over tls", pure=False).result(timeout=30) == "over tls"
            assert all(w.startswith("tls://") for w in client.scheduler_info()["workers"])
        # A facility's way: the certificates in the dask configuration, none in cluster.tls.
        import dask

        with dask.config.set({"distributed.comm.tls.ca-file": files.ca, "distributed.comm.tls.client.cert": files.cert,
                              "distributed.comm.tls.client.key": files.key}), \
                open_client(ClusterConfig(kind="address", address=addr)) as client:
            assert client.submit(lambda: 1, pure=False).result(timeout=30) == 1
        plain = addr.replace("tls://", "tcp://")
        refused_within(ClusterConfig(kind="address", address=plain, connect_timeout=5), 8,
                       rf"^the Dask scheduler at cluster.address='{plain}' speaks TLS alone: write the address as "
                       r"tls://host:port and set cluster\.tls\.ca_file, cert_file and key_file")
        other = generate(tmp_path / "other")
        tls = {"ca_file": other.ca, "cert_file": other.cert, "key_file": other.key}
        refused_within(ClusterConfig(kind="address", address=addr, tls=tls, connect_timeout=5), 8,
                       rf"^the Dask scheduler at cluster.address='{addr}' refused the certificates of cluster\.tls "
                       rf"\(ca_file {other.ca}, ")


@pytest.mark.slow
def test_local_cluster_with_tls_runs_over_tls():
    cfg = ClusterConfig(workers=1, tls={"enabled": True})
    with open_client(cfg) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert all(w.startswith("tls://127.0.0.1:") for w in client.scheduler_info()["workers"])
        assert client.submit(lambda: 6 * 7, pure=False).result(timeout=30) == 42


def test_tls_config_needs_all_three_files_and_a_tls_address(tmp_path):
    files = generate(tmp_path / "certs")
    assert oct((tmp_path / "certs").stat().st_mode & 0o777) == "0o700"
    tls = {"ca_file": files.ca, "cert_file": files.cert, "key_file": files.key}
    # Certificates of a tls:// scheduler come from cluster.tls, else from the dask configuration.
    bare = ClusterConfig(kind="address", address="tls://127.0.0.1:1", connect_timeout=1)
    refused_within(bare, 3, r"^cluster\.address='tls://127\.0\.0\.1:1' is a TLS scheduler, but no certificates are "
                            r"given: set cluster\.tls\.ca_file, cert_file and key_file")
    with pytest.raises(ValueError, match=r"tls is set but address tcp://10\.0\.0\.1:8786 is not tls://"):
        ClusterConfig(kind="address", address="tcp://10.0.0.1:8786", tls=tls)
    with pytest.raises(ValueError, match=r"give ca_file, cert_file and key_file together: key_file missing"):
        ClusterConfig(kind="htcondor", tls={"ca_file": files.ca, "cert_file": files.cert})
    path = tmp_path / "megaset.yaml"
    path.write_text("cluster:\n  kind: address\n  address: tls://10.0.0.1:8786\n  tls: {enabled: false}\n")
    with pytest.raises(ConfigError, match=r"cluster: .*is a TLS scheduler: drop tls\.enabled: false"):
        load_config(path)


def test_unreadable_tls_file_names_its_key_and_path(tmp_path):
    files = generate(tmp_path / "certs")
    missing = tmp_path / "gone.key"
    cfg = ClusterConfig(kind="address", address="tls://127.0.0.1:1", connect_timeout=1,
                        tls={"ca_file": files.ca, "cert_file": files.cert, "key_file": str(missing)})
    refused_within(cfg, 3, rf"^cluster\.tls\.key_file: cannot read {missing}: No such file or directory; give the PEM")


def test_unreachable_address_fails_within_seconds():
    address = f"tcp://127.0.0.1:{free_port()}"
    cfg = ClusterConfig(kind="address", address=address, connect_timeout=2)
    refused_within(cfg, 6, rf"cannot reach the Dask scheduler at cluster.address='{address}' "
                        r"within 2 s.*scheduler is running")


def test_address_from_yaml_needs_an_address(tmp_path):
    path = tmp_path / "megaset.yaml"
    path.write_text("cluster:\n  kind: address\n")
    with pytest.raises(ConfigError, match=r"cluster: .*kind: address needs address"):
        load_config(path)
    path.write_text("cluster:\n  kind: slurm\n")
    with pytest.raises(ConfigError, match=r"cluster\.kind: Input should be 'local', 'kubernetes', 'htcondor' "
                                          r"or 'address' \(got 'slurm'\)"):
        load_config(path)
    assert isinstance(Config().cluster, ClusterConfig)


def test_local_workers_start_with_the_allocation_setting():
    cfg = ClusterConfig(kind="local", workers=1)
    with open_client(cfg) as client:
        seen = client.run(lambda: __import__("os").environ.get("MALLOC_MMAP_THRESHOLD_"))
    assert list(seen.values()) == [MALLOC_ENV["value"]]


def _rss_mib() -> int:
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))


def _leave_freed_heap() -> int:
    """Allocate 320 MiB in 16 KiB blocks and free seven in eight: the heap keeps the holes."""
    import builtins

    blocks = [bytes(16384) for _ in range(20000)]
    builtins._megaset_kept = blocks[1::8]
    del blocks
    return _rss_mib()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_hands_the_workers_freed_heap_back():
    with open_client(ClusterConfig(kind="local", workers=1)) as client:
        (held,) = client.run(_leave_freed_heap).values()
        release_memory(client)
        (after,) = client.run(_rss_mib).values()
    assert held - after > 150, (held, after)


# ------------------------------------------------------------------ pools


POOLS = {"cpu": {"workers": 2, "memory": "1 GiB"}, "gpu": {"workers": 1, "memory": "1 GiB", "gpus": 1}}


def test_pools_config_and_description():
    cfg = ClusterConfig(pools={"cpu": {"workers": 14}, "gpu": {"workers": 1, "threads": 4, "gpus": 1}})
    assert describe(cfg) == ("local cluster, pools: cpu 14 workers x 1 thread, 4 GiB each (ingest, mix); "
                             "gpu 1 workers x 4 threads, 4 GiB each, 1 GPU (training, scoring)")
    with pytest.raises(ValueError, match=r"pools sizes each pool itself: drop workers, gpus_per_worker"):
        ClusterConfig(workers=4, gpus_per_worker=1, pools={"cpu": {"workers": 2}})
    with pytest.raises(ValueError, match=r"drop adapt"):
        ClusterConfig(adapt={"minimum": 1, "maximum": 3}, pools={"cpu": {"workers": 2}})
    with pytest.raises(ValueError, match=r"pools is empty"):
        ClusterConfig(pools={})
    # A dumped configuration holds every key at its default: it loads back.
    assert ClusterConfig.model_validate(cfg.model_dump()) == cfg


def test_local_gpu_pools_without_devices_fail_fast():
    cfg = ClusterConfig(pools={"cpu": {"workers": 1}, "gpu": {"workers": 2, "gpus": 32}})
    refused_within(cfg, 15, r"gpu 2 x 32 needs 64 CUDA devices, but \d+ are visible.*GPU pools")


@pytest.mark.slow
def test_local_pools_start_workers_of_each_size():
    cfg = ClusterConfig(pools={"narrow": {"workers": 2, "memory": "1 GiB"},
                               "wide": {"workers": 1, "threads": 2, "memory": "2 GiB"}}, warm_workers=False)
    with open_client(cfg) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        seen = sorted((w["name"], w["nthreads"], w["memory_limit"], w["resources"]) for w in workers)
    assert seen == [("narrow-0", 1, 2**30, {"CPU": 1}), ("narrow-1", 1, 2**30, {"CPU": 1}),
                    ("wide-0", 2, 2**31, {"CPU": 2})]


@pytest.mark.slow
def test_existing_pools_need_workers_declaring_their_resources(address):
    cfg = ClusterConfig(kind="address", address=address, pools=POOLS, warm_workers=False)
    refused_within(cfg, 10, rf"cluster.pools.cpu runs ingest and mix, but no worker of the scheduler at "
                            rf"{address} declares the resource CPU; .*--resources CPU=1")


@pytest.mark.slow
def test_pools_place_ingest_and_mix_on_cpu_workers_and_ranks_on_gpu_workers(tmp_path):
    """Two CPU workers and one worker declaring a GPU (none exists here): ingest and mix run on the
    CPU workers alone; training ranks and scoring go to the GPU worker."""
    from distributed import get_task_stream

    from megaset.pipeline.simulate import generate, write_ntuple
    from megaset.stages import chain
    from megaset.storage.store import open_store
    from megaset.training.ddp import _rank_workers
    from megaset.training.score import scoring_device

    signal = {"zmmjets": False, "ttbar": False, "c1n2_wz_800_50": True}
    for c, channel in enumerate(signal):
        write_ntuple(tmp_path / f"{channel}.root", generate(channel, 2000, seed=7 + c))
    workers = [["--resources", "CPU=1"], ["--resources", "CPU=1"], ["--resources", "GPU=1"]]
    with Scheduler(tmp_path, workers) as addr:
        cfg = Config.model_validate({
            "inputs": {"chunksize": 500, "channels": {
                ch: {"files": [str(tmp_path / f"{ch}.root")], "signal": sig} for ch, sig in signal.items()}},
            "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 256},
            "cluster": {"kind": "address", "address": addr, "pools": POOLS, "warm_workers": False},
        })
        stages = {stage.name: stage for stage in chain(cfg)}
        with open_client(cfg.cluster) as client:
            declared = client.run_on_scheduler(
                lambda dask_scheduler: {a: dict(w.resources) for a, w in dask_scheduler.workers.items()})
            cpu = {a for a, r in declared.items() if r.get("CPU")}
            gpu = {a for a, r in declared.items() if r.get("GPU")}
            with get_task_stream(client) as stream:
                stages["ingest"].work(client, False, lambda *a, **k: None)
                stages["mix"].work(client, False, lambda *a, **k: None)
            ranks, on_gpus = _rank_workers(client, None, 30)
            device = scoring_device("auto", client)
    ran = {task["worker"] for task in stream.data}
    assert len(cpu) == 2 and len(gpu) == 1
    assert ran == cpu  # both CPU workers worked, the GPU worker took no ingest or mix task
    assert len(stream.data) > 6
    assert (ranks, on_gpus, device) == (sorted(gpu), True, "cuda")
    assert open_store(cfg.store.url).group("train").n_events > 0


def test_gpu_box_by_default():
    """A node's cores and GPUs, as megaset run finds them when the config leaves cluster: at its defaults."""
    from megaset.deploy.pools import gpu_box, stage_resources

    box = gpu_box(16, 1, 128 * 2**30)
    assert describe(box) == ("local cluster, pools: cpu 15 workers x 1 thread, 4 GiB each (ingest, mix); "
                             "gpu 1 workers x 1 thread, 4 GiB each, 1 GPU (training, scoring)")
    assert stage_resources(box, "ingest") == stage_resources(box, "mix") == {"CPU": 1}
    assert stage_resources(box, "train") is stage_resources(box, "score") is None
    big = gpu_box(64, 4, 512 * 2**30)
    assert (big.pools["cpu"].workers, big.pools["gpu"].workers, big.pools["gpu"].gpus) == (60, 4, 1)
    assert gpu_box(2, 1, 2**30).pools["cpu"].memory == "512.00 MiB"  # memory shared by 2 workers
    assert gpu_box(1, 2, 2**34).pools["cpu"].workers == 1
    assert gpu_box(16, 0, 2**37) is None  # no GPU: the default cluster as before


def test_machine_cluster_keeps_a_configured_or_gpu_less_cluster():
    from megaset.cli import _machine_cluster

    configured = Config.model_validate({"cluster": {"workers": 3}})
    assert _machine_cluster(configured) is configured
    import torch

    if not torch.cuda.is_available():
        assert _machine_cluster(Config()) == Config()
