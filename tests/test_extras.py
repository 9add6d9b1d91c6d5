"""Optional dependencies: a feature whose extra is not installed says which one to install.

The modules are made missing the way Python itself knows: a ``None`` entry in ``sys.modules``
makes every import of that name fail with ``ModuleNotFoundError``, as on a machine without it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from megaset.errors import MissingExtraError
from megaset.extras import EXTRAS, missing_extra, require, require_for_url

PYPROJECT = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())

CASES = [(extra, module) for extra, (_, modules) in EXTRAS.items() for module in modules]


def _blocked(*modules: str) -> str:
    """Python code that makes ``modules`` missing, then runs the command line."""
    return f"import sys; sys.modules.update(dict.fromkeys({list(modules)!r})); from megaset.cli import main; main()"


def _megaset_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _blocked(*modules), *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_every_extra_is_declared_and_the_test_extra_installs_them_all():
    declared = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    assert f"megaset[{','.join(EXTRAS)}]" in declared["test"]


@pytest.mark.parametrize(("extra", "module"), CASES)
def test_a_missing_module_names_its_extra(monkeypatch, extra, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"pip install 'megaset\[{extra}\]' \({module} is not installed\)$"):
        require(extra)


@pytest.mark.parametrize(("url", "extra", "module"), [
    ("s3://bucket/store.zarr", "s3", "s3fs"),
    ("simplecache::s3://bucket/x.root", "s3", "s3fs"),
    ("root://eos.cern.ch//eos/x.root", "xrootd", "fsspec_xrootd"),
])
def test_a_url_names_the_extra_its_scheme_needs(monkeypatch, url, extra, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as info:
        require_for_url(url)
    assert str(info.value) == f"{url}: {EXTRAS[extra][0]}: pip install 'megaset[{extra}]' ({module} is not installed)"


def test_local_and_http_urls_need_no_extra(monkeypatch):
    for module in ("s3fs", "fsspec_xrootd"):
        monkeypatch.setitem(sys.modules, module, None)
    for url in ("data/x.root", "file:///data/x.root", "https://host/x.root"):
        require_for_url(url)


def test_an_import_error_raised_inside_a_library_is_recognised(monkeypatch):
    """fsspec's "Install s3fs to access S3" names no module; the import it was raised from does."""
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    try:
        try:
            importlib.import_module("dask_jobqueue")
        except ImportError as inner:
            msg = "Install dask-jobqueue"
            raise ImportError(msg) from inner
    except ImportError as err:
        found = missing_extra(err)
    assert found is not None
    assert str(found).endswith("pip install 'megaset[htcondor]' (dask_jobqueue is not installed)")
    assert missing_extra(ImportError("cannot import name 'x' from 'numpy'", name="numpy")) is None
    assert missing_extra(ValueError("s3fs")) is None


@pytest.mark.slow
def test_command_line_says_which_extra_for_a_store_on_s3(tmp_path):
    config = tmp_path / "s3.yaml"
    config.write_text("store: {url: s3://megaset-test/store.zarr}\n")
    result = _megaset_without(("s3fs",), "run", "--dry-run", "-c", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: s3://megaset-test/store.staging.zarr: s3:// stores and inputs need the S3 client: "
        "pip install 'megaset[s3]' (s3fs is not installed)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "extra", "module"), [
    ("kubernetes", "kubernetes", "dask_kubernetes"), ("htcondor", "htcondor", "dask_jobqueue")])
def test_command_line_says_which_extra_for_a_cluster(tmp_path, kind, extra, module):
    config = tmp_path / "c.yaml"
    config.write_text(f"cluster: {{kind: {kind}}}\nstore: {{url: {tmp_path / 'store.zarr'}}}\n")
    result = _megaset_without((module,), "-q", "ingest", "-c", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {EXTRAS[extra][0]}: pip install 'megaset[{extra}]' ({module} is not installed)"
    ]
