"""``kind: htcondor``: dask-jobqueue worker jobs built from the config, and their start.

The driver (``megaset run`` on a submit node) runs the Dask scheduler itself and submits
one HTCondor job per worker. Keys of ``cluster.htcondor`` left null fall back to the site's
dask configuration (``jobqueue.yaml``, ``htcondor:`` section; see deploy/htcondor/); size and
GPUs always come from the ``cluster`` section, so that the megaset config alone decides them.
:func:`htcondor_job_script` renders the submit description without a pool.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from megaset.config import ClusterConfig
from megaset.deploy.pools import add_pools, pool_sections, resources_arg
from megaset.deploy.tls import SECRET_KEYS, TLSFiles, configured_files, generate, tls_enabled
from megaset.deploy.worker_env import WORKER_MALLOC_ENV
from megaset.errors import ConfigError
from megaset.extras import require

__all__ = ["htcondor_job_script", "start_htcondor_cluster"]

#: What dask-jobqueue writes in place of the scheduler address before a scheduler exists.
SCHEDULER_PLACEHOLDER = "tcp://<insert-scheduler-address-here>:8786"
#: Where the rendered job script shows the certificates a started cluster makes for itself.
MADE_AT_START = "<certificates-made-at-start>"
#: The certificates as a worker job sees them: HTCondor transfers them into its scratch directory.
IN_SCRATCH = TLSFiles(*(f"$_CONDOR_SCRATCH_DIR/{name}" for name in SECRET_KEYS))


def _site(key: str, default: Any) -> Any:
    import dask

    value = dask.config.get(f"jobqueue.htcondor.{key}", default=None)
    return default if value is None else value


def _job_kwargs(cfg: ClusterConfig, tls: TLSFiles | None = None) -> dict[str, Any]:
    """Keyword arguments of ``HTCondorJob`` (and of ``HTCondorCluster``) for one worker job; with
    ``tls``, the certificate files on the submit node that travel with each job."""
    condor = cfg.htcondor
    directives = {**_site("job-extra-directives", {}), **condor.job_extra_directives}
    worker_args = list(_site("worker-extra-args", []))
    if cfg.gpus_per_worker:
        directives["request_GPUs"] = cfg.gpus_per_worker
    worker_args += resources_arg(cfg)
    if tls is not None:
        _transfer(directives, tls)
        worker_args += IN_SCRATCH.args()
    kwargs: dict[str, Any] = {
        "cores": cfg.threads_per_worker,
        "memory": cfg.memory_per_worker,
        # One worker process per job: a job's cores are that worker's threads.
        "processes": 1,
        "job_extra_directives": directives,
        "worker_extra_args": worker_args,
    }
    optional = {
        "disk": condor.disk,
        "python": condor.python,
        # The worker allocation setting first (see deploy/cluster.py), then the site's or the config's.
        "job_script_prologue": [
            *(f"export {k}={v}" for k, v in WORKER_MALLOC_ENV.items()),
            *(condor.job_script_prologue if condor.job_script_prologue is not None
              else _site("job-script-prologue", [])),
        ],
        "log_directory": condor.log_directory,
        "local_directory": condor.local_directory,
        "interface": condor.interface,
    }
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    if tls is not None:
        kwargs["protocol"] = "tls://"
    return kwargs


def _transfer(directives: dict[str, Any], tls: TLSFiles) -> None:
    """Send the certificate files with each worker job (into its scratch directory: a shared
    filesystem is not needed, nor are the files left readable on it)."""
    wanted = directives.get("should_transfer_files", "YES")
    if str(wanted).upper() != "YES":
        msg = (f"cluster.htcondor.job_extra_directives.should_transfer_files is {wanted!r}, but with cluster.tls "
               "the certificates travel with each worker job: set it to 'YES' (or drop it), or set "
               "cluster.tls.enabled: false")
        raise ConfigError(msg)
    directives["should_transfer_files"] = "YES"
    files = ",".join((tls.ca, tls.cert, tls.key))
    earlier = directives.get("transfer_input_files")
    directives["transfer_input_files"] = f"{earlier},{files}" if earlier else files


def _job(cfg: ClusterConfig) -> Any:
    require("htcondor")
    from dask_jobqueue.htcondor import HTCondorJob

    made = TLSFiles(*(f"{MADE_AT_START}/{name}" for name in SECRET_KEYS))
    tls = (configured_files(cfg) or made) if tls_enabled(cfg) else None
    try:
        return HTCondorJob(SCHEDULER_PLACEHOLDER, name="dummy-name", **_job_kwargs(cfg, tls))
    except ValueError as err:
        msg = (
            f"cannot build the HTCondor worker job: {err}; set it in the cluster.htcondor section "
            "of the megaset config (e.g. disk: '10 GiB') or in the htcondor: section of "
            "jobqueue.yaml (deploy/htcondor/jobqueue.yaml)"
        )
        raise ConfigError(msg) from None


def htcondor_job_script(cfg: ClusterConfig) -> str:
    """The submit description of one worker job, as ``HTCondorCluster.job_script()`` renders it;
    with ``cluster.pools``, one per pool, each after a comment line naming it.

    The scheduler address is dask-jobqueue's placeholder until a cluster is started.

    Raises
    ------
    ConfigError
        If a required value (disk) is neither in the config nor in jobqueue.yaml.
    """
    if not cfg.pools:
        return _job(cfg).job_script()
    return "\n".join(f"# pool {name}: {pool.workers} jobs\n{_job(pool).job_script()}"
                     for name, pool in pool_sections(cfg).items())


def _scheduler_options(cfg: ClusterConfig) -> dict[str, Any]:
    options = dict(_site("scheduler-options", {}))
    if cfg.dashboard:
        options.setdefault("dashboard_address", ":8787")
    else:
        options["dashboard"] = False
        # The scheduler serves its health and info routes even then, on port 8787 of every interface
        # unless told otherwise: worker jobs never use them, so they stay on loopback.
        options["dashboard_address"] = "127.0.0.1:0"
    return options


def start_htcondor_cluster(cfg: ClusterConfig) -> Any:
    """An ``HTCondorCluster`` whose scheduler runs in this process; no job submitted yet.

    With TLS (the default) its scheduler listens at ``tls://``; the certificates are those of
    ``cluster.tls``, or made for this cluster in a folder of the driver's alone, removed with it.

    Raises
    ------
    ConfigError
        If ``condor_submit`` is not on PATH (not a submit node) or the job cannot be built.
    MissingExtraError
        If the ``htcondor`` extra is not installed.
    """
    require("htcondor")
    if shutil.which("condor_submit") is None:
        msg = (
            "cluster.kind is 'htcondor' but condor_submit is not on PATH: run the driver on an "
            "HTCondor submit node (deploy/htcondor/driver.sub), or choose another cluster.kind"
        )
        raise ConfigError(msg)
    from dask_jobqueue import HTCondorCluster
    from dask_jobqueue.htcondor import HTCondorJob

    class ScratchTLSJob(HTCondorJob):
        """A worker job given its certificates' paths in its scratch directory by _job_kwargs, not
        those of the submit node that dask-jobqueue would write from the cluster's ``security``."""

        def __init__(self, *args: Any, security: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    class Cluster(HTCondorCluster):
        job_cls = ScratchTLSJob
        # The certificates made for the cluster go with it (condor_submit reads them at each submission).
        megaset_tls_folder: tempfile.TemporaryDirectory[str] | None = None

    first = next(iter(pool_sections(cfg).values()))
    for pool in pool_sections(cfg).values():
        _job(pool)  # a config error reads better here than from inside the cluster's start
    tls, folder = (configured_files(cfg) if tls_enabled(cfg) else None), None
    if tls_enabled(cfg) and tls is None:
        folder = tempfile.TemporaryDirectory(prefix="megaset-tls-")
        tls = generate(folder.name)
    cluster = Cluster(scheduler_options=_scheduler_options(cfg), security=tls.security() if tls else None,
                      **_job_kwargs(first, tls))
    cluster.megaset_tls_folder = folder
    if cfg.pools:
        # One job description per pool, under the one scheduler.
        add_pools(cluster, cfg, lambda pool: _job_kwargs(pool, tls))
    return cluster
