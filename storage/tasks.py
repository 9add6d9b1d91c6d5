"""One task per store chunk: the map that the mix and the scoring (and any later chunk-wise
stage) run their chunks through.

Each chunk is written whole by its own task, so tasks need no locks and a task retried after
its worker died rewrites its own chunk with the same bytes. Without a client the chunks run
one after the other in this process.

A cluster that can never run the tasks is not waited on for ever: Dask pauses a worker whose
process memory passes ``distributed.worker.memory.pause`` of its limit (80 %), and a worker
without a nanny (``dask worker --no-nanny``) whose memory is held by its libraries (torch,
numba, a finished training) stays paused. When every worker that could run the tasks has been
paused for ``_PAUSED_S``, after their freed heap was handed back once, the map stops with an
error naming them and their memory.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from megaset.errors import StoreError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["map_chunks"]

T = TypeVar("T")
R = TypeVar("R")


def map_chunks(
    client: Client | None,
    fn: Callable[..., R],
    items: Sequence[T],
    *,
    names: Sequence[str],
    stage: str,
    retries: int,
    progress: Callable[[int], None] | None = None,
    sizes: Sequence[int] | None = None,
    resources: dict[str, float] | None = None,
    **kwargs: Any,
) -> list[R]:
    """``fn(item, **kwargs)`` for every item, as Dask tasks; the results in completion order.

    Parameters
    ----------
    client
        A Dask client; ``None`` runs the items here, in order.
    fn, items, kwargs
        The task function, one item per task, and keyword arguments shared by every task.
    names
        One name per item (e.g. ``"test-3"``): part of the task key, and of the message when
        a task's worker dies on every try.
    stage
        The command that runs the stage (``"megaset mix"``): the message names it.
    retries
        Dask retries of a task whose worker died.
    progress
        Called with the number of items finished so far, after each one; with ``sizes``,
        with the sum of the finished items' sizes.
    sizes
        One size per item (e.g. the chunks of a run of chunks), for ``progress``.
    resources
        Dask resources every task holds while it runs (``{"GPU": 1}``: only workers declaring
        a GPU run them, one task per declared GPU at a time); ignored without a client.

    Raises
    ------
    StoreError
        When the workers of one item die on every try (naming the item and the stage), or
        when every worker able to run the items stays paused for memory (naming them); the
        chunks finished so far are kept for a rerun.
    """
    advance = progress or (lambda n: None)
    size = list(sizes) if sizes is not None else [1] * len(items)
    done = 0
    if client is None:
        results = []
        for item, n in zip(items, size, strict=True):
            results.append(fn(item, **kwargs))
            done += n
            advance(done)
        return results
    from distributed import KilledWorker, as_completed

    paused = _Paused(client, resources, stage)
    # A fresh token per run: a rerun must not pick up results the scheduler still holds.
    token = uuid.uuid4().hex[:12]
    prefix = stage.split()[-1]
    keys = [f"{prefix}-{name.replace('/', ':')}-{token}" for name in names]
    futures = client.map(fn, items, key=keys, retries=retries, pure=False, resources=resources, **kwargs)
    where = dict(zip(keys, names, strict=True))
    size_of = dict(zip(keys, size, strict=True))
    results = []
    try:
        # The results come with the completions, in batches: a result fetched future by future
        # costs a round trip each, on a driver that shares the cores with the workers. They are
        # fetched on this client's loop: as_completed defaults to the default client's, and where a
        # process holds two clients, the other loop's thread would write on this client's sockets.
        completed = as_completed(futures, loop=client.loop, with_results=True, raise_errors=False)
        while not completed.is_empty():
            if not completed.has_ready():
                paused.check()
                time.sleep(_POLL_S)
                continue
            for future, result in completed.next_batch(block=False):
                try:
                    results.append(future.result() if future.status == "error" else result)
                except KilledWorker as err:
                    msg = (
                        f"{stage}: the workers running chunk {where[future.key]} died {retries + 1} times "
                        f"({err}); look at the worker logs (memory?), then rerun `{stage}`: finished chunks are kept"
                    )
                    raise StoreError(msg) from None
                future.release()
                done += size_of[future.key]
                advance(done)
    finally:
        client.cancel(futures)
    return results


#: Seconds between looks at the results while none is ready, and between asking the scheduler
#: whether the workers are paused.
_POLL_S = 0.1
_CHECK_S = 2.0
#: Seconds every worker able to run the tasks may stay paused before the map stops.
_PAUSED_S = 60.0


class _Paused:
    """Watches, while a map waits, whether every worker able to run its tasks is paused."""

    def __init__(self, client: Client, resources: dict[str, float] | None, stage: str):
        self.client, self.resources, self.stage = client, resources, stage
        self.since: float | None = None
        self.next_look = time.monotonic() + _CHECK_S

    def check(self) -> None:
        """Raise :class:`StoreError` once the workers declaring the map's resources (every worker,
        without) have all been paused for ``_PAUSED_S``."""
        now = time.monotonic()
        if now < self.next_look:
            return
        self.next_look = now + _CHECK_S
        needed = self.resources or {}

        def able(dask_scheduler: Any) -> list[tuple[str, str, int, int]]:  # defined here: sent by value
            return [(ws.address, ws.status.name, ws.memory.process, ws.memory_limit or 0)
                    for ws in dask_scheduler.workers.values()
                    if all(ws.resources.get(name, 0) >= amount for name, amount in needed.items())]

        try:
            workers = self.client.run_on_scheduler(able)
        except Exception:  # noqa: BLE001  # a scheduler that runs no function of its clients: wait as before
            self.next_look = float("inf")
            return
        if not workers or any(status != "paused" for _, status, _, _ in workers):
            self.since = None  # no worker yet (an adaptive cluster grows), or one can run tasks
            return
        if self.since is None:
            from megaset.deploy.cluster import release_memory

            # Freed heap that glibc keeps counts as process memory: handed back, it may resume them.
            self.since = now
            release_memory(self.client)
            return
        if now - self.since < _PAUSED_S:
            return
        from dask.utils import format_bytes

        found = "; ".join(f"{address} at {format_bytes(memory)} of its {format_bytes(limit)} limit"
                          for address, _, memory, limit in workers)
        msg = (
            f"{self.stage}: every worker able to run its tasks has been paused by Dask for memory for "
            f"{now - self.since:.0f} s ({found}), so no chunk can start; give the workers more memory "
            "(cluster.memory_per_worker, or `dask worker --memory-limit`: a worker that has trained a model "
            f"holds 0.6 to 0.75 GiB), then rerun `{self.stage}`: finished chunks are kept"
        )
        raise StoreError(msg)
