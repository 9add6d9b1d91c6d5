"""Worker warm-up: numba's cache filled by ``python -m megaset.warmup`` and loaded, not compiled
again, by a fresh process of another user that cannot write it (a read-only image); the worker
plugin that loads it on every worker of a cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

READER = """
import json, os
from megaset.warmup import kernel_stats, warm_kernels
warm_kernels()
print(json.dumps({"cache": os.environ["NUMBA_CACHE_DIR"], "stats": kernel_stats()}))
"""


def _as_other_user() -> list[str]:
    """A prefix running a command as ``nobody`` when this is root (root writes anywhere), else none:
    then the cache is made read-only by its mode."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no way to make the cache read-only")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.slow
def test_kernels_load_from_a_read_only_cache_filled_at_build_time():
    # Not pytest's tmp_path: its parent is private to the user, and the reader is another user.
    work = Path(tempfile.mkdtemp(prefix="megaset-warmup-test-"))
    try:
        work.chmod(0o755)
        cache = work / "numba-cache"
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "HOME": str(work)}
        built = subprocess.run([sys.executable, "-m", "megaset.warmup"], env=env, capture_output=True, text=True,
                               cwd=work, check=True)
        assert f"numba cache: {cache}" in built.stdout
        index = sorted(p.name for p in cache.rglob("*.nbi"))
        for kernel in ("rmm._fill", "_select_kernels._running_sums", "_select_kernels._leading_masses",
                       "_select_kernels._kept_objects", "jet_features._all_jets"):
            assert any(name.startswith(kernel) for name in index), (kernel, index)

        before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
        prefix = _as_other_user()
        if not prefix:
            for path in [cache, *cache.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
        reader = subprocess.run([*prefix, sys.executable, "-c", READER], env=env, capture_output=True, text=True,
                                cwd=work, check=True)
        out = json.loads(reader.stdout.splitlines()[-1])
        assert out["cache"] != str(cache)  # numba was pointed at a writable copy
        loaded = {name: s for name, s in out["stats"].items() if s["signatures"]}
        assert {"rmm._fill", "select.running_sums", "select.leading_masses", "select.kept_objects"} <= set(loaded)
        for name, stats in loaded.items():
            assert stats["cache_misses"] == 0, (name, stats)
            assert stats["cache_hits"] == len(stats["signatures"]), (name, stats)
        assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before  # the shipped cache untouched
        shutil.rmtree(out["cache"], ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_every_worker_is_warm_before_its_first_task():
    from distributed import get_worker

    from megaset.config import ClusterConfig
    from megaset.deploy.cluster import open_client

    def loaded() -> dict:
        import sys

        from megaset.warmup import kernel_stats

        return {"modules": sorted(m for m in ("uproot", "coffea.processor", "zarr", "torch") if m in sys.modules),
                "kernels": {n: len(s["signatures"]) for n, s in kernel_stats().items()},
                "name": get_worker().name}

    with open_client(ClusterConfig(kind="local", workers=2)) as client:
        seen = client.gather(client.map(lambda i: loaded(), range(2), pure=False))
    for worker in seen:
        assert worker["modules"] == ["coffea.processor", "torch", "uproot", "zarr"]
        assert worker["kernels"]["rmm._fill"] == 1
        assert worker["kernels"]["select.running_sums"] == 2  # float32 and float64 inputs
