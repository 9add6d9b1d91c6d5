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
error naming them and their memory. :class:`PausedWorkers` is that watch, for any driver
waiting on tasks (the DDP ranks too).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from megaset.errors import StoreError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["map_chunks", "PausedWorkers", "MORE_MEMORY"]

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

    paused = PausedWorkers(client, _able(resources))
    # A fresh token per run: a rerun must not pick up results the scheduler still holds.
    token = uuid.uuid4().hex[:12]
    prefix = stage.split()[-1]
    # One Dask task group for the whole map (its name is the key up to the first '-'): the
    # scheduler then queues the tasks and starts them in the order given, as workers free up.
    # With a group per store group ("score-train-0..15" and "score-val-0..15" are two), the
    # smaller groups' tasks went to the workers at once, and a worker that finished early
    # waited while the other still held a queue of them.
    keys = [f"{prefix}-{name.replace('/', ':').replace('-', ':')}-{token}" for name in names]
    # The shared arguments travel bound to the function: Dask makes a keyword argument of more than
    # 100 kB (a combination's quantile tables) a data node keyed by the argument's name alone, which
    # its scheduler fails on (an unprioritised task) and which a second map would collide with.
    futures = client.map(functools.partial(fn, **kwargs), items, key=keys, retries=retries, pure=False,
                         resources=resources)
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
                if (found := paused.check()) is not None:
                    msg = (f"{stage}: every worker able to run its tasks has been {found}, so no chunk can start; "
                           f"{MORE_MEMORY}, then rerun `{stage}`: finished chunks are kept")
                    raise StoreError(msg)
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


#: Seconds between looks at the results while none is ready. A look asks a local queue, not the
#: scheduler; at 0.1 s the driver noticed the first and the last results up to 0.1 s late (a map
#: of eight 50 ms tasks on 2 workers: 0.30 s, against 0.25 s at 0.01 s).
_POLL_S = 0.01
#: Seconds between asking the scheduler whether the workers are paused.
_CHECK_S = 2.0
#: Seconds every worker able to run the tasks may stay paused before the map stops.
_PAUSED_S = 60.0


#: The fix for workers paused for memory, for the messages of every stage that waits on them.
MORE_MEMORY = ("give the workers more memory (cluster.memory_per_worker, or `dask worker --memory-limit`: "
               "a worker that has trained a model holds 0.6 to 0.75 GiB)")

#: What the scheduler says of a watched worker: address, status name, process memory, memory limit.
Watched = Callable[[Any], list[tuple[str, str, int, int]]]


def _able(resources: dict[str, float] | None) -> Watched:
    """The workers declaring ``resources`` (every worker, without), as the scheduler sees them."""
    needed = resources or {}

    def able(dask_scheduler: Any) -> list[tuple[str, str, int, int]]:  # defined here: sent by value
        return [(ws.address, ws.status.name, ws.memory.process, ws.memory_limit or 0)
                for ws in dask_scheduler.workers.values()
                if all(ws.resources.get(name, 0) >= amount for name, amount in needed.items())]

    return able


class PausedWorkers:
    """Watches, while a driver waits on tasks, whether the workers they need are all paused for memory.

    ``watched`` runs on the scheduler (define it inside a function: it is then sent by value, and
    the scheduler needs no megaset) and says which workers the waiting tasks need.
    """

    def __init__(self, client: Client, watched: Watched):
        self.client, self.watched = client, watched
        self.since: float | None = None
        self.next_look = time.monotonic() + _CHECK_S

    def check(self) -> str | None:
        """Once the watched workers have all been paused for ``_PAUSED_S``: ``"paused by Dask for
        memory for 61 s (<address> at <memory> of its <limit> limit; ...)"``; else ``None``."""
        now = time.monotonic()
        if now < self.next_look:
            return None
        self.next_look = now + _CHECK_S
        try:
            workers = self.client.run_on_scheduler(self.watched)
        except Exception:  # noqa: BLE001  # a scheduler that runs no function of its clients: wait as before
            self.next_look = float("inf")
            return None
        if not workers or any(status != "paused" for _, status, _, _ in workers):
            self.since = None  # no worker yet (an adaptive cluster grows), or one can run tasks
            return None
        if self.since is None:
            from megaset.deploy.cluster import release_memory

            # Freed heap that glibc keeps counts as process memory: handed back, it may resume them.
            self.since = now
            release_memory(self.client)
            return None
        if now - self.since < _PAUSED_S:
            return None
        from dask.utils import format_bytes

        found = "; ".join(f"{address} at {format_bytes(memory)} of its {format_bytes(limit)} limit"
                          for address, _, memory, limit in workers)
        return f"paused by Dask for memory for {now - self.since:.0f} s ({found})"
