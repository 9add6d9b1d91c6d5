"""How the long stages say how far they are, without drawing anything themselves.

A stage takes a ``progress`` callable and calls it as ``progress(done, total)`` in its own unit
(chunks, epochs, steps, models), ``done`` never decreasing and ending at ``total`` when the work
is complete; ``megaset run`` adds the stage's name and, for training, the epoch's figures
(:data:`StageProgress`). The command line draws them (``megaset.cli``); a library user may pass
any callable, or none.

>>> step = steps(lambda done, total: print(f"{done}/{total}"), 2)
0/2
>>> step(); step()
1/2
2/2
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Progress", "StageProgress", "steps"]

#: ``progress(done, total)``: ``done`` of ``total`` units of one piece of work.
Progress = Callable[[int, int], None]

#: ``progress(stage, done, total, info)`` of ``megaset run``: ``total`` is ``None`` while unknown
#: (a simulation counts events as it goes), ``info`` holds training's ``loss``, ``val_loss`` and
#: ``samples_per_s`` of the last epoch, and is empty otherwise.
StageProgress = Callable[[str, int, "int | None", Mapping[str, Any]], None]


def steps(progress: Progress | None, total: int) -> Callable[[], None]:
    """A counter of ``total`` steps: reports ``(0, total)`` at once, then ``(k, total)`` at its
    ``k``-th call. Without ``progress``, a counter that reports nothing."""
    if progress is None:
        return lambda: None
    done = 0
    progress(0, total)

    def step() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    return step
