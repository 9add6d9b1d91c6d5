"""Exclusive locks on what a command writes: the staging area, the store, a model or report folder.

Two commands writing one store at once would interleave their chunks (a store of event ids
written twice, that both call finished). Each writer therefore holds the lock of every output
it writes, from before its cluster starts until it ends; a second writer refuses at once, in
one line naming the holder (host, pid, start time, command). Readers (query, verify, status, a
report of a finished store) take no lock.

The lock of an output at ``<url>`` is ``<url>.lock``, beside it, so that rebuilding the output
(which removes it) keeps its lock. It records its holder as JSON.

- **Local filesystem**: ``fcntl.flock`` on the lock file. The kernel releases the lock when its
  process ends, however it ends, so a lock left by a process that died (killed, out of memory,
  a node rebooted) is simply taken by the next writer, which says whose it was. NFS v4 carries
  these locks between hosts.
- **Object store** (``s3://``): the lock object is created with a conditional write (S3
  ``If-None-Match: *``): of two writers starting together, exactly one creates it. Its holder
  rewrites it every third of its lease (``store.lock_lease_s``) with ``If-Match`` on the ETag
  it wrote last (the heartbeat). A lock is taken over when its lease ran out (no heartbeat for
  a whole lease, judged by the object's last-modified time, so clocks must agree to a fraction
  of the lease, as NTP keeps them) or when its holder is a process of this host that no longer
  runs; the takeover is itself an ``If-Match`` write, so of two writers taking over one lock,
  one wins. A holder whose heartbeat finds its lock taken over (it was stalled past its lease)
  says so at once and its command fails when it ends: its output must be checked.
- **Other object stores**, and S3-compatible servers that do not implement conditional writes:
  the lock object is written plainly and read back. Two writers starting within the same
  second can then both pass; the log says so once per command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from megaset.errors import OutputLockedError, StoreError
from megaset.storage.backend import is_local, reach, writing

__all__ = ["locked", "lock_url", "holder"]

log = logging.getLogger("megaset.storage.lock")

#: The locks this process holds, by lock URL, with how many callers hold each: a command that
#: locks its outputs and then calls a stage function that locks them again does not refuse itself.
_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def lock_url(url: str) -> str:
    """The lock of the output at ``url``: ``<url>.lock``, beside it (a local one as an absolute path)."""
    target = url.rstrip("/") + ".lock"
    return os.path.abspath(target.removeprefix("file://")) if is_local(target) else target


@dataclass
class _Held:
    release: Any
    count: int = 1


@contextlib.contextmanager
def locked(url: str, *, key: str, what: str = "output", command: str | None = None, lease_s: float = 60.0,
           timeout_s: float = 5.0) -> Iterator[None]:
    """Hold the exclusive lock of the output at ``url`` (a ``what``, set by the config ``key``)
    while the block runs.

    Raises :class:`~megaset.errors.OutputLockedError` at once, naming the holder and the fix,
    when another process holds it; an unreachable object store, or a place where the lock
    cannot be written (read-only, full, no permission), raises
    :class:`~megaset.errors.StoreError` within about ``timeout_s``. ``command`` is what the
    holder record says is writing (default: this process's command line).
    """
    target = lock_url(url)
    with _HELD_GUARD:
        if target in _HELD:
            _HELD[target].count += 1
            entry = _HELD[target]
        else:
            entry = None
    if entry is None:
        command = command or shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                  "command": command,
                  "token": uuid.uuid4().hex}
        if is_local(target):
            with writing(url, command, what=what, key=key):
                release = _LocalLock(target, url, key).acquire(record)
        else:
            reach(url, key=key, timeout_s=timeout_s)
            release = _ObjectLock(target, url, key, lease_s).acquire(record)
        with _HELD_GUARD:
            _HELD[target] = entry = _Held(release)
    try:
        yield
    finally:
        with _HELD_GUARD:
            entry.count -= 1
            last = entry.count == 0
            if last:
                del _HELD[target]
        if last:
            entry.release()


def holder(url: str) -> dict[str, Any] | None:
    """The record of whoever holds (or last held, without releasing) the lock of ``url``."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(lock_url(url))
    try:
        return json.loads(fs.cat_file(path) or b"null")
    except (FileNotFoundError, ValueError):
        return None


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process (its record is not readable)"
    return (f"`{record.get('command')}` (pid {record.get('pid')} on host {record.get('host')}, "
            f"since {record.get('started')})")


def _refusal(url: str, key: str, record: dict[str, Any] | None, lock: str) -> OutputLockedError:
    msg = (
        f"{key} {url!r} is being written by {_describe(record)}: wait for it to end, or stop it and rerun "
        f"(its finished work is kept); a lock left by a process that died is taken over by itself, so remove "
        f"{lock} only if that holder is surely gone"
    )
    return OutputLockedError(msg)


@dataclass
class _LocalLock:
    path: str
    url: str
    key: str

    def acquire(self, record: dict[str, Any]) -> Any:
        import fcntl

        path = self.path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _refusal(self.url, self.key, _read_settled(path), path) from None
            except OSError as err:
                os.close(fd)
                msg = (f"the filesystem of {self.key} {self.url!r} refuses file locks ({err.strerror}); "
                       f"set {self.key} to a local or NFS v4 location")
                raise StoreError(msg) from err
            # The holder before may have released (removed the file) between our open and our lock:
            # then this lock is on a file nobody else sees, and we start again.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = os.read(fd, 1 << 16)
        if left.strip():
            log.info("%s %r: taking over the lock of %s, which ended without releasing it", self.key, self.url,
                     _describe(_parse(left)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)

        def release() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still locked: the next writer finds no file, or its own
            os.close(fd)

        return release


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _read_settled(path: str) -> dict[str, Any] | None:
    """The holder's record; a holder that has just locked may not have written it yet."""
    for _ in range(20):
        try:
            with open(path, "rb") as f:
                record = _parse(f.read())
        except FileNotFoundError:
            record = None
        if record is not None:
            return record
        time.sleep(0.05)
    return None


def _precondition_failed(err: BaseException) -> bool:
    """Whether a write failed on its ``If-None-Match`` / ``If-Match`` condition (HTTP 412)."""
    if isinstance(err, FileExistsError):
        return True
    text = f"{err} {err.__cause__ or ''}"
    return "PreconditionFailed" in text or "pre-conditions you specified" in text


def _unsupported(err: BaseException) -> bool:
    """Whether the server does not implement conditional writes (HTTP 501 NotImplemented)."""
    text = f"{type(err).__name__} {err} {err.__cause__ or ''}"
    return isinstance(err, NotImplementedError) or "NotImplemented" in text or "not implemented" in text.lower()


@dataclass
class _ObjectLock:
    path: str
    url: str
    key: str
    lease_s: float
    _etag: str | None = None
    _lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def acquire(self, record: dict[str, Any]) -> Any:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(self.path)
        self.fs, self.fspath = fs, path
        data = json.dumps({**record, "lease_s": self.lease_s}).encode()
        self._conditional = fs.protocol in ("s3", "s3a") or "s3" in fs.protocol
        for _ in range(3):
            try:
                self._etag = self._write(data, create=True)
            except OSError as err:
                if not _precondition_failed(err):
                    raise
            else:
                break
            current, etag, age = self._read()
            if current is None:
                continue  # released since: create it again
            if not self._stale(current, age):
                raise _refusal(self.url, self.key, current, self.path)
            log.info("%s %r: taking over the lock of %s, %s", self.key, self.url, _describe(current),
                     "whose process is gone" if self._gone(current) else
                     f"whose lease ran out ({age:.0f} s without a heartbeat)")
            try:
                self._etag = self._write(data, match=etag)
            except (OSError, FileNotFoundError) as err:
                if not (_precondition_failed(err) or isinstance(err, FileNotFoundError)):
                    raise
                continue  # another writer took it over first, or its holder released it: look again
            break
        else:
            raise _refusal(self.url, self.key, self._read()[0], self.path)
        if _parse(fs.cat_file(path)) != {**record, "lease_s": self.lease_s}:
            raise _refusal(self.url, self.key, self._read()[0], self.path)
        beat = threading.Thread(target=self._heartbeat, args=(data,), daemon=True, name=f"lock {self.path}")
        beat.start()

        def release() -> None:
            self._stop.set()
            beat.join()
            if self._lost.is_set():
                msg = (f"the lock of {self.key} {self.url!r} was taken over while this command ran (it made no "
                       f"progress for {self.lease_s:g} s, store.lock_lease_s): another writer may have written "
                       "there too; run `megaset verify` and rerun the command if it fails")
                raise StoreError(msg)
            current = self._read()[0]
            if current is not None and current.get("token") == record["token"]:
                self.fs.rm_file(self.fspath)

        return release

    def _write(self, data: bytes, *, create: bool = False, match: str | None = None) -> str | None:
        """Write the lock object, on a condition where the store takes one; its new ETag."""
        if self._conditional:
            try:
                out = self.fs.pipe_file(self.fspath, data, **({"mode": "create"} if create else {"IfMatch": match}))
            except OSError as err:
                if not _unsupported(err):
                    raise
                log.warning("the object store of %s %r does not implement conditional writes: its lock is written "
                            "and read back, which two writers starting within a second can both pass",
                            self.key, self.url)
                self._conditional = False
            else:
                return (out or {}).get("ETag") if isinstance(out, dict) else None
        if create and self.fs.exists(self.fspath):
            raise FileExistsError(self.fspath)
        self.fs.pipe_file(self.fspath, data)
        return None

    def _read(self) -> tuple[dict[str, Any] | None, str | None, float]:
        """The lock's record, its ETag and its age in seconds (since its last heartbeat)."""
        try:
            info = self.fs.info(self.fspath)
            data = self.fs.cat_file(self.fspath)
        except FileNotFoundError:
            return None, None, 0.0
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
        if isinstance(modified, dt.datetime):
            age = (dt.datetime.now(dt.UTC) - modified).total_seconds()
        elif isinstance(modified, int | float):
            age = time.time() - modified
        else:
            age = 0.0
        return _parse(data), info.get("ETag"), age

    def _gone(self, record: dict[str, Any]) -> bool:
        """Whether the holder is a process of this host that no longer runs."""
        if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
            return False
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # it runs, as another user
        return False

    def _stale(self, record: dict[str, Any], age: float) -> bool:
        return self._gone(record) or age > float(record.get("lease_s") or self.lease_s)

    def _renew(self, data: bytes) -> OSError | None:
        """Rewrite the lock (on the ETag written last); the error of a failed write."""
        try:
            self._etag = self._write(data, match=self._etag) if self._etag else self._write(data)
        except OSError as err:
            return err
        return None

    def _heartbeat(self, data: bytes) -> None:
        while not self._stop.wait(self.lease_s / 3):
            err = self._renew(data)
            if err is None:
                continue
            if _precondition_failed(err) or isinstance(err, FileNotFoundError):
                log.error("the lock of %s %r was taken over by %s: this command's output is no longer its own",
                          self.key, self.url, _describe(self._read()[0]))
                self._lost.set()
                return
            log.warning("the heartbeat of the lock of %s %r failed (%s); trying again", self.key, self.url, err)
