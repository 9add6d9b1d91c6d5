"""``kind: htcondor``: dask-jobqueue worker jobs built from the config, and their start.

The driver (``megaset run`` on a submit node) runs the Dask scheduler itself and submits
one HTCondor job per worker. Keys of ``cluster.htcondor`` left null fall back to the site's
dask configuration (``jobqueue.yaml``, ``htcondor:`` section; see deploy/htcondor/); size and
GPUs always come from the ``cluster`` section, so that the megaset config alone decides them.
:func:`htcondor_job_script` renders the submit description without a pool.
"""

from __future__ import annotations

import shutil
from typing import Any

from megaset.config import ClusterConfig
from megaset.deploy.pools import pool_sections, resources_arg
from megaset.deploy.worker_env import WORKER_MALLOC_ENV
from megaset.errors import ConfigError
from megaset.extras import require

__all__ = ["htcondor_job_script", "start_htcondor_cluster"]

#: What dask-jobqueue writes in place of the scheduler address before a scheduler exists.
SCHEDULER_PLACEHOLDER = "tcp://<insert-scheduler-address-here>:8786"


def _site(key: str, default: Any) -> Any:
    import dask

    value = dask.config.get(f"jobqueue.htcondor.{key}", default=None)
    return default if value is None else value


def _job_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    """Keyword arguments of ``HTCondorJob`` (and of ``HTCondorCluster``) for one worker job."""
    condor = cfg.htcondor
    directives = {**_site("job-extra-directives", {}), **condor.job_extra_directives}
    worker_args = list(_site("worker-extra-args", []))
    if cfg.gpus_per_worker:
        directives["request_GPUs"] = cfg.gpus_per_worker
    worker_args += resources_arg(cfg)
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
    return kwargs


def _job(cfg: ClusterConfig) -> Any:
    require("htcondor")
    from dask_jobqueue.htcondor import HTCondorJob

    try:
        return HTCondorJob(SCHEDULER_PLACEHOLDER, name="dummy-name", **_job_kwargs(cfg))
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
    return options


def start_htcondor_cluster(cfg: ClusterConfig) -> Any:
    """An ``HTCondorCluster`` whose scheduler runs in this process; no job submitted yet.

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

    first = next(iter(pool_sections(cfg).values()))
    for pool in pool_sections(cfg).values():
        _job(pool)  # a config error reads better here than from inside the cluster's start
    cluster = HTCondorCluster(scheduler_options=_scheduler_options(cfg), **_job_kwargs(first))
    if cfg.pools:
        from megaset.deploy.cluster import add_pools

        # One job description per pool, under the one scheduler.
        add_pools(cluster, cfg, _job_kwargs)
    return cluster
