"""One task per store chunk: the map that the mix and the scoring (and any later chunk-wise
stage) run their chunks through.

Each chunk is written whole by its own task, so tasks need no locks and a task retried after
its worker died rewrites its own chunk with the same bytes. Without a client the chunks run
one after the other in this process.
"""

from __future__ import annotations

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
        When the workers of one item die on every try (naming the item and the stage); the
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
        for future, result in completed:
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
