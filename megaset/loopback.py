"""Storage servers on loopback, serving a local folder the way remote inputs are served: what
the tests of remote inputs and stores and ``benchmarks/ingest.py --remote`` read through. Not
used by the pipeline itself; it lives in the package so that both can import it.

- :func:`xrootd_server`: Debian's ``xrootd`` (package ``xrootd-server``) with a minimal
  configuration: no authentication, adler32 checksums, its HTTP plug-in on a second port (the
  way EOS and dCache serve https), every file operation traced to a log so that tests can count
  the opens.
- :func:`http_server`: Python's ``http.server``, as a user would start it; it ignores byte-range
  requests. Counts the GET requests per path.
- :func:`s3_server`: moto's S3-compatible server, with the environment pointing at it.
"""

from __future__ import annotations

import functools
import http.server
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HTTPServer", "XRootDServer", "http_server", "s3_server", "xrootd_server"]

XROOTD_MISSING = (
    "the XRootD server is not installed (no `xrootd` on PATH): apt-get install xrootd-server "
    "(.ci/run installs it on CI, where these tests must run)"
)

_XROOTD_CONFIG = """\
xrd.port {port}
xrd.protocol XrdHttp:{http_port} libXrdHttp.so
all.export /
oss.localroot {data}
all.adminpath {admin}
all.pidpath {admin}
xrootd.chksum adler32
xrootd.trace fs
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, process: subprocess.Popen, log: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"xrootd exited with status {process.returncode}:\n{log.read_text()[-2000:]}"
            raise RuntimeError(msg)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
        else:
            return
    msg = f"xrootd did not listen on port {port} within {seconds:g} s:\n{log.read_text()[-2000:]}"
    raise RuntimeError(msg)


@dataclass(frozen=True)
class XRootDServer:
    """A running server: ``data`` is the folder it serves, ``url`` and ``http_url`` the
    addresses of that folder's root (append a path starting with ``/``)."""

    data: Path
    url: str
    http_url: str
    log: Path

    def opens(self, path: str) -> int:
        """How many times the file at ``path`` (under ``data``, e.g. ``/a/x.root``) was opened."""
        opened = (f" open r {path}", f" open rt {path}")
        return sum(1 for line in self.log.read_text().splitlines() if line.endswith(opened))


@contextmanager
def xrootd_server() -> Iterator[XRootDServer]:
    """Start ``xrootd`` on two free loopback ports, serving an empty folder; stop it after.

    xrootd refuses to run as root: as root it runs as ``nobody`` (``-R``), so its folder lives
    in the system's temporary folder, readable by everyone, rather than under pytest's private
    one.
    """
    binary = shutil.which("xrootd")
    if binary is None:
        raise FileNotFoundError(XROOTD_MISSING)
    top = Path(tempfile.mkdtemp(prefix="megaset-xrootd-"))
    data, admin, log = top / "data", top / "admin", top / "xrootd.log"
    data.mkdir()
    admin.mkdir()
    port, http_port = _free_port(), _free_port()
    config = top / "xrootd.cfg"
    config.write_text(_XROOTD_CONFIG.format(port=port, http_port=http_port, data=data, admin=admin))
    run_as = []
    if os.geteuid() == 0:
        top.chmod(0o755)
        data.chmod(0o755)
        shutil.chown(admin, "nobody")
        run_as = ["-R", "nobody"]
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(config), "-n", "megaset", *run_as],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=top)
    try:
        _wait_for(port, process, log)
        _wait_for(http_port, process, log)
        yield XRootDServer(data, f"root://127.0.0.1:{port}/", f"http://127.0.0.1:{http_port}", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(top, ignore_errors=True)


class _Handler(http.server.SimpleHTTPRequestHandler):
    gets: Counter[str]

    def do_GET(self):  # the name http.server dispatches to
        self.gets[self.path] += 1
        super().do_GET()

    def log_message(self, format, *args):  # http.server's signature
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client closing an answer it does not want to read (the range probe)


@dataclass(frozen=True)
class HTTPServer:
    """``url``: the address of the served folder's root; ``gets``: GET requests per path."""

    url: str
    gets: Counter[str]


@contextmanager
def http_server(folder: Path) -> Iterator[HTTPServer]:
    """Serve ``folder`` with ``http.server`` on a free loopback port, in a thread."""
    gets: Counter[str] = Counter()
    handler = type("Handler", (_Handler,), {"gets": gets})
    server = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HTTPServer(f"http://127.0.0.1:{server.server_address[1]}", gets)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """An empty bucket on a loopback S3 server, with the environment pointing at it; yields
    ``s3://<bucket>``. s3fs / botocore find the server through ``AWS_ENDPOINT_URL`` and the
    credential variables, which Dask worker processes started afterwards inherit, as on a
    cluster whose workers get the object store's secrets as environment."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "megaset",
           "AWS_SECRET_ACCESS_KEY": "megaset", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        s3fs.S3FileSystem().mkdir(bucket)
        yield f"s3://{bucket}"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
