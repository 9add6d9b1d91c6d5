from __future__ import annotations

import subprocess
import sys
import traceback

import pytest
import yaml


def megaset(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from megaset.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300, check=False,
    )


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from typer.testing import CliRunner; from megaset.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in ('torch', 'coffea', 'zarr', 'numba', 'distributed') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_config_is_one_clear_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("store: {chunk_lenn: 3}\n")
    result = megaset("ingest", "--config", str(path))
    assert result.returncode == 1
    assert "store.chunk_lenn: unknown key; did you mean 'chunk_len'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_simulate_ingest_mix_verify(tmp_path):
    cfg = {
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 4000, "signal_events": 300,
                     "events_per_file": 2000, "channels": ["zeejets", "ttbar", "c1n2_wz_450_300"]},
        "store": {"url": str(tmp_path / "store.zarr")},
        "cluster": {"workers": 1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = megaset("simulate", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and "events/s" in result.stderr
    written = sorted(p.name for p in (tmp_path / "ntuples").iterdir() if p.is_dir())
    assert written == ["c1n2_wz_450_300", "ttbar", "zeejets"]

    result = megaset("ingest", "-c", str(path))
    assert result.returncode == 0, result.stderr
    for channel in ("zeejets", "ttbar", "c1n2_wz_450_300"):
        assert channel in result.stderr
    assert "events read from" in result.stderr and "selected" in result.stderr
    assert (tmp_path / "store.staging.zarr" / "zarr.json").exists()

    result = megaset("mix", "-c", str(path))
    assert result.returncode == 0, result.stderr
    for group in ("train", "val", "test", "signal/c1n2_wz_450_300"):
        assert group in result.stderr
    result = megaset("verify", str(tmp_path / "store.zarr"))
    assert result.returncode == 0, result.stderr
    assert "every invariant holds" in result.stderr

    import zarr

    weights = zarr.open_array(str(tmp_path / "store.zarr" / "test" / "weight"), mode="r+")
    weights[0] = float("nan")
    result = megaset("verify", str(tmp_path / "store.zarr"))
    assert result.returncode == 1
    assert "FAIL" in result.stderr and "test" in result.stderr


@pytest.mark.slow
def test_run_ends_by_printing_the_auc_table(tmp_path, cluster_client):
    from typer.testing import CliRunner

    from megaset.cli import app

    cfg = {
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 6000, "signal_events": 500,
                     "channels": ["zmmjets", "ttbar", "c1n2_wz_800_50"]},
        "store": {"url": str(tmp_path / "store.zarr"), "chunk_len": 256},
        "training": {"output": str(tmp_path / "models"), "epochs": 1, "batch_size": 256},
        "report": {"output": str(tmp_path / "report"), "auc_replicas": 20},
        "cluster": {"kind": "address", "address": cluster_client.scheduler.address},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = CliRunner().invoke(app, ["run", "-c", str(path)])
    assert result.exit_code == 0, result.output + "".join(traceback.format_exception(*result.exc_info))
    output = "".join(result.output.split())  # rich wraps and folds long lines
    tail = output[output.index("finished"):]
    assert "(Farinaetal.TableI)" in tail and all(column in tail for column in ("AUC", "E10", "E100"))
    assert "c1n2_wz_800_50" in tail and "ae-shallow" in tail and "±" in tail
