"""Locks on outputs, with real processes holding them: a local file lock and a lock object on
the loopback S3 server. A holder is a separate Python process that takes the lock, says so and
waits for its stdin to close; it is killed to leave a lock behind, or stopped (SIGSTOP) so that
its heartbeat stops while it still runs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from megaset.errors import OutputLockedError, StoreError
from megaset.storage.lock import holder, lock_url, locked

HOLDER = """
import sys
from megaset.storage.lock import locked
with locked(sys.argv[1], key="store.url", command="megaset run -c holder.yaml", lease_s=float(sys.argv[2])):
    print("held", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""


def _hold(url: str, lease_s: float = 60.0) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(lease_s)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "held\n", process.stderr.read() if process.stderr else ""
    return process


def _kill(process: subprocess.Popen) -> None:
    process.kill()
    process.communicate()


def _refusal(url: str, pid: int) -> str:
    return (f"store.url {url!r} is being written by `megaset run -c holder.yaml` (pid {pid} on host "
            f"{socket.gethostname()}, since ")


def test_a_second_writer_refuses_at_once_naming_the_holder(tmp_path):
    url = str(tmp_path / "store.zarr")
    process = _hold(url)
    try:
        with pytest.raises(OutputLockedError) as caught, locked(url, key="store.url"):
            pytest.fail("a second writer got the lock")
        message = str(caught.value)
        assert message.startswith(_refusal(url, process.pid)) and "\n" not in message
        assert f"remove {url}.lock only if that holder is surely gone" in message
        assert holder(url)["pid"] == process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    assert not os.path.exists(lock_url(url))  # released: the lock file is gone
    with locked(url, key="store.url"):
        assert holder(url)["pid"] == os.getpid()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    url = str(tmp_path / "store.zarr")
    process = _hold(url)
    _kill(process)
    assert holder(url)["pid"] == process.pid  # its record is still there
    with caplog.at_level(logging.INFO, logger="megaset.storage.lock"), locked(url, key="store.url"):
        assert holder(url)["pid"] == os.getpid()
    assert f"taking over the lock of `megaset run -c holder.yaml` (pid {process.pid} " in caplog.text
    assert "which ended without releasing it" in caplog.text


def test_one_process_may_lock_what_it_already_holds(tmp_path):
    url = str(tmp_path / "store.zarr")
    with locked(url, key="store.url"), locked(url, key="store.url"):
        pass
    with locked(url, key="store.url"):  # released after the outer block, not the inner one
        pass
    assert not os.path.exists(lock_url(url))


def test_readers_need_no_lock(mixed_store):
    from megaset.stages import status
    from megaset.storage.query import query
    from megaset.storage.store import open_store
    from megaset.storage.verify import verify

    cfg, _, summary = mixed_store
    process = _hold(cfg.store.url)
    try:
        assert verify(cfg.store.url) == []
        assert query(cfg.store.url, "SELECT count(*) AS n FROM test")["n"][0] == summary["groups"]["test"]["n_events"]
        assert open_store(cfg.store.url).group_names()
        assert "mix" in [s.name for s in status(cfg)]
    finally:
        _kill(process)


@pytest.fixture(scope="module")
def s3_bucket():
    from megaset.loopback import s3_server

    with s3_server("megaset-locks") as url:
        yield url


def test_s3_lock_refuses_a_second_holder_and_is_taken_over_from_a_dead_one(s3_bucket, caplog):
    url = f"{s3_bucket}/refuse/store.zarr"
    process = _hold(url)
    try:
        with pytest.raises(OutputLockedError) as caught, locked(url, key="store.url"):
            pytest.fail("a second writer got the lock object")
        assert str(caught.value).startswith(_refusal(url, process.pid))
    finally:
        _kill(process)
    with caplog.at_level(logging.INFO, logger="megaset.storage.lock"), locked(url, key="store.url"):
        assert holder(url)["pid"] == os.getpid()
    assert f"store.url '{url}': taking over the lock of" in caplog.text
    assert f"(pid {process.pid} on host {socket.gethostname()}" in caplog.text
    assert "whose process is gone" in caplog.text
    assert holder(url) is None  # released: the lock object is deleted


@pytest.mark.slow
def test_s3_lock_expires_by_its_lease_and_its_old_holder_fails(s3_bucket, caplog):
    """A holder that stops renewing (stopped, not dead: its pid still runs) loses the lock after
    its lease; when it runs again, its heartbeat finds the lock taken and its command fails."""
    url = f"{s3_bucket}/lease/store.zarr"
    # Long enough that the holder, stopped up to a heartbeat (lease / 3) after its last renewal,
    # is still within its lease when judged by a last-modified time of whole seconds on a busy
    # machine (1.5 s failed there).
    lease = 4.0
    process = _hold(url, lease)
    try:
        process.send_signal(signal.SIGSTOP)
        with pytest.raises(OutputLockedError), locked(url, key="store.url", lease_s=lease):  # still within its lease
            pass
        time.sleep(2 * lease + 1)  # the lease runs out (the server's clock has whole seconds)
        with caplog.at_level(logging.INFO, logger="megaset.storage.lock"), locked(url, key="store.url", lease_s=lease):
            assert "whose lease ran out" in caplog.text
            process.send_signal(signal.SIGCONT)
            time.sleep(lease)  # its next heartbeat finds the lock taken over
            assert holder(url)["pid"] == os.getpid()
            _, err = process.communicate(timeout=60)
    finally:
        process.send_signal(signal.SIGCONT)
        if process.poll() is None:
            _kill(process)
    assert process.returncode == 1
    assert f"the lock of store.url '{url}' was taken over by `" in err
    assert f"StoreError: the lock of store.url '{url}' was taken over while this command ran" in err


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server, server.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_env(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "megaset", "AWS_SECRET_ACCESS_KEY": "megaset",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_an_unreachable_object_store_is_one_line_naming_the_endpoint(s3_env):
    from megaset.storage.backend import reach

    endpoint = f"http://127.0.0.1:{_free_port()}"
    s3_env.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StoreError) as caught:
        reach("s3://bucket/store.zarr", key="store.url", timeout_s=2)
    assert str(caught.value).startswith(
        f"store.url 's3://bucket/store.zarr': cannot reach the object store at {endpoint}: nothing answers there")

    server, port = _silent_port()
    with server:
        s3_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=r"at http://127\.0\.0\.1:\d+: no answer within 1 s: .*raise "
                                             r"store\.connect_timeout_s"):
            reach("s3://bucket/store.zarr", key="store.staging_url", timeout_s=1)
        assert time.monotonic() - t0 < 15  # the old path retried for half a minute; the bound is 1 s + 2


@pytest.mark.slow
def test_stage_commands_on_an_unreachable_store_say_so_in_one_line(s3_env, tmp_path):
    endpoint = f"http://127.0.0.1:{_free_port()}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    url = "s3://bucket/runs/store.zarr"
    for command in (["mix"], ["verify"], ["status"], ["query", "SELECT met FROM test"], ["run"]):
        out = subprocess.run([sys.executable, "-c", "from megaset.cli import main; main()", *command,
                              "--set", f"store.url={url}", "--set", "store.connect_timeout_s=2"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
        assert out.returncode == 1, (command, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, (command, out.stderr)
        assert out.stderr.startswith("error: store.") and f"cannot reach the object store at {endpoint}" in out.stderr
