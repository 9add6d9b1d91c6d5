"""Launching DDP ranks: as tasks on the workers of a Dask cluster, or under ``torchrun``.

Both paths run the same function on every rank after ``torch.distributed`` is initialised
(gloo on CPU, nccl on GPU, with the configured process-group timeout).

Dask: one rank per worker, submitted with ``client.submit(..., workers=[address], pure=False)``;
rank 0's worker host is ``MASTER_ADDR`` and a port found free on that worker is
``MASTER_PORT``. Each rank task sets ``LOCAL_RANK``, as torchrun does, to the rank's index among
the ranks on its host (:func:`local_ranks`), so that the ranks of a local cluster on a box of
several GPUs each take their own GPU (:func:`rank_device`) instead of all taking the first.
When the cluster declares GPUs (Dask resources ``{"GPU": n}``), only GPU workers take ranks
and each rank holds ``{"GPU": 1}``. The driver watches the futures and the workers: a rank
that fails or whose worker disappears fails the whole job with a
:class:`~megaset.errors.TrainingError` naming the rank and the worker, without waiting for the
others. A rank whose worker stays paused by Dask for memory never starts (its peers would wait
out the process-group timeout): after the same grace period as the store's maps
(:class:`~megaset.storage.tasks.PausedWorkers`) the job stops naming those workers. Rank 0's
per-epoch reports reach the driver through a ``distributed.Queue``.

torchrun::

    torchrun --nproc-per-node 2 -m megaset.training --config config.yaml [--resume]

(:mod:`megaset.training.__main__`) reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` (``env://``).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from megaset.errors import ConfigError, TrainingError
from megaset.storage.tasks import MORE_MEMORY, PausedWorkers, Watched

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["process_group", "choose_backend", "run_on_dask", "worker_resources", "local_ranks", "local_rank",
           "rank_device"]

#: Seconds between two looks of the driver at the ranks' futures and workers.
_POLL_S = 0.25
#: After a first failure, seconds given to the scheduler to notice a dead worker, so that the
#: error names the rank that died rather than the peer that lost its connection to it.
_GRACE_S = 2.0


def choose_backend(backend: str, gpus: bool) -> str:
    """``auto`` -> ``nccl`` when the ranks have GPUs, else ``gloo``.

    >>> choose_backend("auto", gpus=False)
    'gloo'
    """
    if backend == "auto":
        return "nccl" if gpus else "gloo"
    return backend


def local_ranks(workers: Sequence[str]) -> list[int]:
    """Each rank's index among the ranks on the same host, for ranks on ``workers`` (one per
    worker address, rank order): the ``LOCAL_RANK`` that torchrun would give them.

    >>> local_ranks(["tcp://10.0.0.1:4001", "tcp://10.0.0.2:4001", "tcp://10.0.0.1:4002"])
    [0, 0, 1]
    """
    from distributed.comm import get_address_host

    seen: collections.Counter[str] = collections.Counter()
    out = []
    for address in workers:
        host = get_address_host(address)
        out.append(seen[host])
        seen[host] += 1
    return out


def local_rank() -> int:
    """This rank's ``LOCAL_RANK`` (set by torchrun, or by :func:`run_on_dask` on each rank); 0 without."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(on_gpu: bool, local: int, n_gpus: int) -> str:
    """The device of the rank of local index ``local`` on a host with ``n_gpus`` visible GPUs.

    Ranks on one host share its GPUs in turn; a worker that sees only its own GPU (one per
    pod or slot, ``CUDA_VISIBLE_DEVICES`` set for it) takes that one.

    >>> [rank_device(True, k, 2) for k in range(3)], rank_device(True, 1, 1), rank_device(False, 1, 2)
    (['cuda:0', 'cuda:1', 'cuda:0'], 'cuda:0', 'cpu')
    """
    return f"cuda:{local % n_gpus}" if on_gpu and n_gpus else "cpu"


@contextlib.contextmanager
def process_group(
    backend: str, *, rank: int, world_size: int, init_method: str, timeout_s: float
) -> Iterator[None]:
    """``torch.distributed`` initialised for the duration of the block, then torn down."""
    import torch.distributed as dist

    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rank_task(
    rank: int, local: int, world_size: int, master: str, backend: str, timeout_s: float, queue: str | None,
    fn: Callable[..., Any], args: tuple, kwargs: dict,
) -> Any:
    """Runs on a Dask worker: one rank, holding the worker's threads for torch, with
    ``LOCAL_RANK`` set to its index ``local`` among the ranks on its host."""
    import torch
    from distributed import Queue, get_worker

    torch.set_num_threads(max(1, get_worker().state.nthreads))
    channel = Queue(queue) if rank == 0 and queue is not None else None
    report = channel.put if channel is not None else None
    before = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = str(local)
    try:
        with process_group(backend, rank=rank, world_size=world_size, init_method=master, timeout_s=timeout_s):
            return fn(*args, report=report, **kwargs)
    finally:
        # The worker outlives the rank: leave its environment as it was.
        if before is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = before
        if channel is not None:
            channel.close()


def _worker_resources(dask_scheduler: Any) -> dict[str, dict[str, float]]:
    """Runs on the scheduler: every worker's address and declared resources."""
    return {addr: dict(ws.resources) for addr, ws in dask_scheduler.workers.items()}


def worker_resources(client: Client) -> dict[str, dict[str, float]]:
    """Every worker's address and the resources it declares (``{"GPU": 1}``), asked of the scheduler."""
    # Asked of the scheduler directly: Client.scheduler_info() returns a cache that the
    # client's periodic refresh can overwrite with a copy listing no workers at all.
    return client.run_on_scheduler(_worker_resources)


def _rank_workers(client: Client, world_size: int | None, wait_s: float) -> tuple[list[str], bool]:
    """Worker addresses that take the ranks (GPU workers if any are declared), and whether GPU."""
    # Adaptive clusters start workers on demand; too few after the wait is reported below. Only
    # with too few: the wait counts running workers, and a paused one is reported by the watch.
    if world_size and len(worker_resources(client)) < world_size:
        with contextlib.suppress(TimeoutError):
            client.wait_for_workers(world_size, timeout=wait_s)
    workers = worker_resources(client)
    gpu = sorted(a for a, resources in workers.items() if resources.get("GPU", 0) >= 1)
    candidates = gpu or sorted(workers)
    n = world_size or len(candidates)
    if n > len(candidates):
        kind = "GPU workers" if gpu else "workers"
        msg = (
            f"training.ddp.world_size={n} ranks, but the cluster has {len(candidates)} {kind}: one "
            "rank runs per worker; lower world_size or add workers (cluster.workers)"
        )
        raise ConfigError(msg)
    return candidates[:n], bool(gpu)


def run_on_dask(
    client: Client,
    fn: Callable[..., Any],
    *args: Any,
    world_size: int | None = None,
    backend: str = "auto",
    timeout_s: float = 300.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, report=..., **kwargs)`` as DDP ranks on the workers of a Dask cluster.

    Parameters
    ----------
    client
        Connected to the cluster; ``fn`` and its arguments must pickle.
    fn
        Called on every rank once ``torch.distributed`` is initialised; ``report`` is a
        callable on rank 0 (sending a dict to ``progress``), ``None`` on the others.
    world_size
        Ranks; ``None``: one per worker (per GPU worker when GPUs are declared).
    backend
        ``auto``, ``gloo`` or ``nccl``.
    timeout_s
        Process-group timeout: a rank blocked on a dead peer fails after this long at most.
    progress
        Receives rank 0's reports in the calling process.

    Returns
    -------
    list
        What ``fn`` returned on each rank, rank 0 first.

    Raises
    ------
    TrainingError
        As soon as a rank fails or its worker disappears, naming them; the other ranks'
        tasks are cancelled.
    """
    from distributed import Queue
    from distributed.comm import get_address_host

    workers, gpus = _rank_workers(client, world_size, timeout_s)
    backend = choose_backend(backend, gpus)
    # Run outside the task queue: a worker paused for memory still answers, and is reported below.
    port = client.run(_free_port, workers=[workers[0]])[workers[0]]
    master = f"tcp://{get_address_host(workers[0])}:{port}"
    queue_name = f"megaset-train-{uuid.uuid4().hex}" if progress is not None else None
    queue = Queue(queue_name, client=client) if queue_name else None
    resources = {"GPU": 1} if gpus else None
    futures = [
        client.submit(
            _rank_task, rank, local, len(workers), master, backend, timeout_s, queue_name, fn, args, kwargs,
            workers=[addr], allow_other_workers=False, resources=resources, pure=False,
            key=f"megaset-rank-{rank}-{uuid.uuid4().hex[:8]}",
        )
        for rank, (addr, local) in enumerate(zip(workers, local_ranks(workers), strict=True))
    ]
    try:
        paused = PausedWorkers(client, _unstarted({f.key: a for f, a in zip(futures, workers, strict=True)}))
        _watch(client, futures, workers, queue, progress, paused)
        return client.gather(futures)
    finally:
        client.cancel(futures)
        if queue is not None:
            queue.close()


def _drain(queue: Any, progress: Callable[[dict[str, Any]], None] | None, wait: float) -> None:
    time.sleep(wait)
    # Polled with qsize: a get with a timeout logs every expiry as an error on the scheduler.
    if queue is not None and queue.qsize():
        for entry in queue.get(batch=True):
            progress(entry)


def _unstarted(ranks: dict[str, str]) -> Watched:
    """The workers of the ranks (task key -> worker address) not yet running, as the scheduler sees them."""

    def unstarted(dask_scheduler: Any) -> list[tuple[str, str, int, int]]:  # defined here: sent by value
        found = []
        for key, address in ranks.items():
            ts, ws = dask_scheduler.tasks.get(key), dask_scheduler.workers.get(address)
            # A running rank's worker may pause later: it finishes its rank all the same.
            if ts is None or ws is None or ts.state in ("memory", "erred") or ts in ws.executing:
                continue
            found.append((ws.address, ws.status.name, ws.memory.process, ws.memory_limit or 0))
        return found

    return unstarted


def _watch(client: Client, futures: list, workers: list[str], queue: Any, progress: Any,
           paused: PausedWorkers) -> None:
    """Return when every rank has finished; raise as soon as one fails or its worker is gone, or
    when the workers of the ranks not started stay paused for memory."""
    failed_at = None
    while True:
        _drain(queue, progress, _POLL_S)
        done = all(f.status == "finished" for f in futures)
        alive = set(worker_resources(client))
        dead = [r for r, a in enumerate(workers) if a not in alive and futures[r].status != "finished"]
        errors = [r for r, f in enumerate(futures) if f.status in ("error", "cancelled")]
        if done:
            if queue is not None:
                _drain(queue, progress, 0.1)
            return
        if (dead or errors) and failed_at is None:
            failed_at = time.monotonic()
        # A peer of a dead rank usually errors first (connection reset); give the scheduler a
        # moment to see the death so that the message names the rank that died.
        if failed_at is not None and (dead or time.monotonic() - failed_at > _GRACE_S):
            raise TrainingError(_failure_message(futures, workers, dead, errors))
        if (found := paused.check()) is not None:
            msg = (f"distributed training cannot start: the workers of the ranks not started have been {found}, "
                   f"so those ranks never start; {MORE_MEMORY}, then rerun the training")
            raise TrainingError(msg)


def _failure_message(futures: list, workers: list[str], dead: list[int], errors: list[int]) -> str:
    lines = [f"distributed training failed ({len(workers)} ranks):"]
    lines.extend(f"  rank {r}: its worker {workers[r]} died or left the cluster" for r in dead)
    for r in errors:
        if r in dead:
            continue
        if futures[r].status == "cancelled":
            lines.append(f"  rank {r} on worker {workers[r]}: its task was cancelled")
            continue
        exc = futures[r].exception()
        lines.append(f"  rank {r} on worker {workers[r]}: {type(exc).__name__}: {exc}")
    lines.append(
        "the other ranks were cancelled; look at the worker logs, then rerun with resume=True "
        "to continue from the last checkpoint"
    )
    return "\n".join(lines)
