"""Fault injection for the reliability tests.

* :func:`worker_killed_at`: the Dask worker process that reaches a chosen point of a task is
  killed with SIGKILL, by its pid, while it waits there (e.g. with a chunk's data written and
  its done mark not yet). :func:`paused_at` runs any action there instead (grow or shrink the
  cluster) and lets the worker carry on.
* :func:`confined` runs a command in a private mount namespace set up by :func:`small_disk`
  (a tmpfs that fills up: ENOSPC) or :func:`read_only` (EROFS); the test is skipped where
  the system does not allow that. :func:`unprivileged` runs a command without root's
  permission override (EACCES on read-only folders); :func:`snapshot` records a folder's files.
* :data:`CLUSTER_WITH_SECRETS`: credentials where a configuration should not carry them but
  might; :data:`SECRET` must appear in no copy of the configuration written down.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import WorkerPlugin

SECRET = "hunter2"
#: A cluster section carrying SECRET three ways (it does not change what a local run does).
CLUSTER_WITH_SECRETS = {
    "kubernetes": {"env": {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": "http://minio:9000"},
                   "secret": "megaset-s3"},
    "htcondor": {"job_script_prologue": [f"export AWS_SECRET_ACCESS_KEY={SECRET}", "export HOME=/scratch",
                                         "export AWS_SHARED_CREDENTIALS_FILE=/scratch/credentials"],
                 "job_extra_directives": {"environment": f'"API_TOKEN={SECRET} LANG=C"'}},
}

#: Seconds a worker waits at the chosen point for the action on it; it then carries on, and the test fails.
_WAIT_S = 60.0

#: Exit status of a ``MEGASET`` command that ends in an exception it does not handle (Python's is 1,
#: as for the errors megaset reports): its worker processes write their own logs and tracebacks to
#: the same stderr, more of them while a busy machine shuts the cluster down, so a traceback found
#: there does not say whose it is; the exit status does.
UNHANDLED = 70

#: The command line of the ``megaset`` CLI, for shell scripts (wide, so that rich does not wrap paths).
MEGASET = (f"COLUMNS=500 {shlex.quote(sys.executable)} -c 'import os, sys; from megaset.cli import main; "
           f"sys.excepthook = lambda *exc: (sys.__excepthook__(*exc), os._exit({UNHANDLED})); main()'")


def _claim(marker: str) -> bool:
    """Write this process's pid to ``marker`` unless another process did it first."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _released(marker: str) -> str:
    """The file whose appearance lets the worker waiting at ``marker`` carry on."""
    return f"{marker}.released"


class _WaitAt(WorkerPlugin):
    """Wraps ``target`` ("module:attribute.path") on every worker: the first call anywhere
    whose arguments satisfy ``when`` writes the worker's pid to ``marker`` and waits until
    it is released (or killed)."""

    def __init__(self, target: str, when: Callable[..., bool], marker: str):
        self.target, self.when, self.marker = target, when, marker

    def setup(self, worker) -> None:
        module, _, attribute = self.target.partition(":")
        owner = importlib.import_module(module)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)
        when, marker = self.when, self.marker

        def wait(args, kwargs) -> None:
            if when(*args, **kwargs) and _claim(marker):
                deadline = time.monotonic() + _WAIT_S
                while not os.path.exists(_released(marker)) and time.monotonic() < deadline:
                    time.sleep(0.02)

        if inspect.iscoroutinefunction(original):
            @functools.wraps(original)
            async def waiting(*args, **kwargs):
                wait(args, kwargs)
                return await original(*args, **kwargs)
        else:
            @functools.wraps(original)
            def waiting(*args, **kwargs):
                wait(args, kwargs)
                return original(*args, **kwargs)
        setattr(owner, name, waiting)


@contextlib.contextmanager
def paused_at(client, target: str, when: Callable[..., bool], marker: Path,
              action: Callable[[int], None]) -> Iterator[None]:
    """The worker that first calls ``target`` with arguments for which ``when(*args, **kwargs)``
    is true waits just before that call while ``action(its pid)`` runs here, then carries on
    (unless the action ended it). It happens once per ``marker``.

    ``target`` is ``"module:attribute.path"``, e.g. ``"megaset.storage.store:StoreGroup.write_chunks"``
    (a method's ``when`` receives ``self`` first). The wrapper stays installed on the workers
    present now and on those that join later. The block fails if no worker of the cluster
    reached the point, or if the action raised.
    """
    client.register_plugin(_WaitAt(target, when, str(marker)))
    done: dict[str, Any] = {}
    stop = threading.Event()

    def act() -> None:
        while not stop.is_set():
            try:
                pid = int(marker.read_text())
            except (FileNotFoundError, ValueError):  # not there, or its pid not written yet
                stop.wait(0.02)
                continue
            try:
                action(pid)
                done["pid"] = pid
            except Exception as err:  # noqa: BLE001 - reported by the block, in the test's thread
                done["error"] = err
            finally:
                Path(_released(str(marker))).touch()
            return

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if "error" in done:
        raise done["error"]
    assert "pid" in done, f"no worker reached {target} with the chosen arguments"


@contextlib.contextmanager
def worker_killed_at(client, target: str, when: Callable[..., bool], marker: Path) -> Iterator[None]:
    """Kill (SIGKILL, by pid) the worker that first calls ``target`` with arguments for which
    ``when(*args, **kwargs)`` is true, while it waits just before that call (:func:`paused_at`).

    Use a fresh cluster: the wrapper stays installed. The block fails if no worker of the
    cluster was killed.
    """
    # Only the workers carry the wrapper: the pid waiting there is a worker's, present or joined since.
    with paused_at(client, target, when, marker, lambda pid: os.kill(pid, signal.SIGKILL)):
        yield


@contextlib.contextmanager
def paused_worker(timeout_s: float = 60.0) -> Iterator[Any]:
    """A client of a one-worker local cluster whose worker Dask has paused for memory, as one
    whose memory its libraries hold would stay: past 5 % of 200 MiB from its start (its
    interpreter alone), never spilled, terminated or restarted. Yields once the scheduler sees
    it paused: its first memory reading comes a moment after it starts, and a task sent before
    then would run."""
    import dask
    from distributed import Client, LocalCluster

    memory = {"distributed.worker.memory.pause": 0.05, "distributed.worker.memory.terminate": False,
              "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    with dask.config.set(memory), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="200 MiB",
                         dashboard_address=None) as cluster, Client(cluster) as client:
        deadline = time.monotonic() + timeout_s
        while client.run_on_scheduler(lambda dask_scheduler: [ws.status.name for ws in
                                                              dask_scheduler.workers.values()]) != ["paused"]:
            assert time.monotonic() < deadline, "the worker was not paused for memory"
            time.sleep(0.1)
        yield client


def small_disk(mountpoint: Path, copies: dict[Path, str], room_kib: int) -> list[str]:
    """Shell lines for :func:`confined`: a tmpfs on ``mountpoint`` holding copies of ``copies``
    (source -> name there), then filled up to ``room_kib`` KiB of free space."""
    disk = shlex.quote(str(mountpoint))
    # tmpfs stores files in 4 KiB pages; the margin is filled up again below.
    need = sum(-(-f.stat().st_size // 4096) * 4 for source in copies for f in source.rglob("*") if f.is_file())
    lines = [f"mount -t tmpfs -o size={need + room_kib + 1024}k tmpfs {disk}"]
    lines += [f"cp -a {shlex.quote(str(source))} {disk}/{shlex.quote(name)}" for source, name in copies.items()]
    free = f"$(df -k --output=avail {disk} | tail -n 1)"
    lines.append(f"dd if=/dev/zero of={disk}/.filler bs=1k count=$(({free} - {room_kib})) 2>/dev/null")
    return lines


def read_only(folder: Path) -> list[str]:
    """Shell lines for :func:`confined`: ``folder`` remounted read-only (writes fail with EROFS)."""
    path = shlex.quote(str(folder))
    return [f"mount --bind {path} {path}", f"mount -o remount,bind,ro {path}"]


def confined(setup: list[str], command: str, keep: tuple[Path, Path] | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``command`` after the ``setup`` shell lines as root of a new user and mount
    namespace, whose mounts are its own and vanish with it; then copy ``keep[0]`` (what the
    command left on those mounts) to ``keep[1]``. Returns the command's exit status and
    output; a failed setup exits with status 90. Skips the test where such namespaces are
    not allowed."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", folder],
                                   capture_output=True, text=True, check=False)
        except FileNotFoundError as err:
            pytest.skip(f"no unshare command here: {err}")
    if probe.returncode:
        pytest.skip(f"cannot mount in a private namespace here (unshare -rm): {probe.stderr.strip()}")
    lines = [f"( set -e; {'; '.join(setup)} ) || exit 90", command, "status=$?"]
    if keep is not None:
        lines.append(f"cp -a {shlex.quote(str(keep[0]))} {shlex.quote(str(keep[1]))}")
    lines.append("exit $status")
    return subprocess.run(["unshare", "-rm", "sh", "-c", "\n".join(lines)], capture_output=True, text=True,
                          check=False, timeout=timeout)


def unprivileged() -> list[str]:
    """Prefix of a command that runs without the power to write into read-only folders: as
    root, in a user namespace where root's files are not its own to override."""
    if os.geteuid() != 0:
        return []
    try:
        probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        pytest.skip(f"running as root and no unshare command here: {err}")
    if probe.returncode:
        pytest.skip(f"running as root and cannot drop root's permissions here (unshare -U): {probe.stderr.strip()}")
    return ["unshare", "-U"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(result: subprocess.CompletedProcess, url: Path, cause: str, fix: str, command: str) -> None:
    """``result`` is a ``megaset`` command that stopped with one clear message: the store
    ``url``, the ``cause`` and the ``fix``, how to resume, and no traceback of its own (its
    worker processes may log theirs on the same stderr: see :data:`UNHANDLED`)."""
    assert result.returncode != UNHANDLED, f"the command raised an exception it did not handle:\n{result.stderr}"
    assert result.returncode == 1, result.stderr
    assert f"error: cannot write to store '{url}': {cause}" in result.stderr, result.stderr
    assert fix in result.stderr and f"then rerun `{command}`: finished chunks are kept" in result.stderr


class _Stop(Exception):  # noqa: N818 - a signal to stop, not an error
    pass


def mix_stopped_after(cfg, chunks: int) -> None:
    """Run the mix of ``cfg`` in this process and interrupt it once ``chunks`` chunks are done."""
    from megaset.storage.mix import mix

    def stop(done: int, total: int) -> None:
        if done == chunks:
            raise _Stop

    with pytest.raises(_Stop):
        mix(cfg, None, progress=stop)
