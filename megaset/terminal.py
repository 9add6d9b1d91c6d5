"""How the command line talks to its user: the consoles and the log levels of ``-v`` / ``-q``.

Output that is not a terminal (a pipe, a file, a CI log) is plain: no colour, no markup
highlighting, and no wrapping, so that a long store path or a table row stays on one line that
``grep`` finds whole (rich would fold it at 80 columns otherwise).

megaset's own messages go through :mod:`logging` (the ``megaset`` logger): ``-q`` keeps the
warnings and errors, the default adds the progress lines, ``-v`` the debug ones. Dask's own
messages (``distributed.*``, such as the nanny's "Worker process still alive after 4.0 seconds,
killing" when a cluster shuts down) are errors only by default, warnings from ``-v`` and info
from ``-vv``, in this process and in the worker processes it starts.
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console

__all__ = ["make_console", "configure_logging", "LOGGER"]

#: The logger of megaset's progress messages.
LOGGER = "megaset"

# Wide enough never to wrap a line: rich sizes tables to their content, not to the width.
_PLAIN_WIDTH = 100_000


def make_console(*, stderr: bool = True) -> Console:
    """A console on stderr (messages) or stdout (results): rich on a terminal, plain elsewhere."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_PLAIN_WIDTH, soft_wrap=True, no_color=True, highlight=False,
                   color_system=None, emoji=False)


class _ConsoleHandler(logging.Handler):
    """Prints records on a console, so that they appear above its live progress bars."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            self.console.print(text, markup=False, highlight=False)
        except Exception:  # noqa: BLE001  # logging's contract: a failing handler reports, never raises
            self.handleError(record)


def _dask_level(verbosity: int) -> int:
    return {0: logging.ERROR, 1: logging.WARNING}.get(min(verbosity, 2), logging.INFO)


def configure_logging(console: Console, verbosity: int) -> None:
    """Route megaset's messages to ``console`` and set the levels of ``verbosity``.

    ``verbosity`` is -1 for ``-q``, 0 by default, and the number of ``-v`` given.
    """
    megaset = logging.getLogger(LOGGER)
    megaset.handlers[:] = [_ConsoleHandler(console)]
    megaset.propagate = False
    megaset.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    dask_level = _dask_level(max(verbosity, 0))
    # Read by dask's configuration when distributed is first imported, here and in every worker
    # process a local cluster spawns (they inherit the environment); the loggers themselves
    # for a distributed already imported.
    os.environ["DASK_LOGGING__DISTRIBUTED"] = logging.getLevelName(dask_level).lower()
    logging.getLogger("distributed").setLevel(dask_level)
