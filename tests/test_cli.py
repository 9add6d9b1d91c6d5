from __future__ import annotations

import re
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


def test_version():
    from megaset import __version__

    result = megaset("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"megaset {__version__}\n"


def _commands(group, prefix=()):
    import typer

    from megaset.cli import app

    command = typer.main.get_command(app) if group is None else group
    for name, sub in command.commands.items():
        if hasattr(sub, "commands"):
            yield from _commands(sub, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.parametrize("mode", ["rich", None])  # a terminal's help, and the plain one of pipes and logs
def test_help_shows_no_value_type_beside_flags(mode, monkeypatch):
    from typer.testing import CliRunner

    from megaset.cli import app, study

    monkeypatch.setattr(app, "rich_markup_mode", mode)
    monkeypatch.setattr(study, "rich_markup_mode", mode)
    commands = list(_commands(None))
    assert ("study", "contamination") in commands and ("config",) in commands
    for command in [(), *commands]:
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "<bool>" not in result.output and "<int>" not in result.output.split("--verbose")[-1][:40], command
    result = CliRunner().invoke(app, ["--help"])
    for option in ("--version", "--verbose", "--quiet", "--config", "--set"):
        assert option in result.output


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_is_accepted_before_and_after_the_command(tmp_path):
    path = _write(tmp_path, "training: {epochs: 7}\n")
    before, after = megaset("-c", path, "config"), megaset("config", "--config", path)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout and "  epochs: 7\n" in before.stdout
    other = _write(tmp_path, "training: {epochs: 8}\n", "other.yaml")
    twice = megaset("-c", path, "config", "-c", other)
    assert twice.returncode == 2 and "--config given twice" in twice.stderr


def test_set_overrides_before_and_after_the_command(tmp_path):
    path = _write(tmp_path, "training: {epochs: 7}\n")
    result = megaset("--set", "training.epochs=5", "-c", path, "config", "--set", "training.batch_size=64",
                     "--set", "inputs.tree=123")
    assert result.returncode == 0, result.stderr
    assert "  epochs: 5\n" in result.stdout and "  batch_size: 64\n" in result.stdout
    assert "  tree: '123'\n" in result.stdout
    result = megaset("config", "--set", "training.learning_rat=0.1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: --set training.learning_rat=0.1: unknown key 'learning_rat' in training; did you mean "
        "'learning_rate'? (valid there: model, output, epochs, batch_size, learning_rate, seed, scaling, "
        "adversary, weighted, negative_weights, architecture, early_stopping, loader, ddp)")


def test_config_defaults_and_schema():
    import json

    from megaset.config import Config

    defaults = megaset("config", "--defaults")
    assert defaults.returncode == 0, defaults.stderr
    assert defaults.stdout.startswith("# Every key of the megaset configuration")
    assert Config.model_validate(yaml.safe_load(defaults.stdout)) == Config()
    schema = megaset("config", "--schema")
    assert schema.returncode == 0, schema.stderr
    assert json.loads(schema.stdout)["properties"]["training"]["$ref"] == "#/$defs/TrainingConfig"
    both = megaset("config", "--defaults", "--set", "training.epochs=3")
    assert both.returncode == 2 and "drop --set" in both.stderr


def test_verbose_and_quiet_set_the_log_level():
    assert "configuration: the defaults" in megaset("-v", "config").stderr
    assert megaset("config").stderr == ""
    result = megaset("-v", "-q", "config")
    assert result.returncode == 2 and "give -v or -q, not both" in result.stderr


def test_output_is_plain_when_not_a_terminal(tmp_path):
    import zarr

    deep = tmp_path.joinpath(*(["a-rather-long-folder-name"] * 6), "foreign.zarr")
    zarr.open_group(str(deep), mode="w").create_array("x", shape=(3,), dtype="i4")
    result = megaset("verify", str(deep))
    assert result.returncode == 1
    # One line, the path whole (rich would fold it at 80 columns), no colour codes.
    assert result.stderr == (f"error: {str(deep)!r} is a Zarr group but not a megaset store "
                             "(no schema_version attribute)\n")
    assert "\x1b[" not in result.stderr


def test_foreign_stores_are_one_clean_error(tmp_path):
    import zarr

    from megaset.storage.staging import init_staging

    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    other.attrs.update({"schema_version": 3, "complete": True})  # another tool's store
    init_staging(str(tmp_path / "staging.zarr"), ["ttbar"], {"schema_version": 2, "fingerprint": "f", "channels": []})
    fake = zarr.open_group(str(tmp_path / "fake.zarr"), mode="w")
    fake.attrs.update({"schema_version": 1, "complete": True, "mix": {}})
    expected = {
        "other.zarr": "is a Zarr group with a schema_version attribute but not a megaset store (no mix attribute)",
        "staging.zarr": "is a staging area written by `megaset ingest`, not a store: give the path of a store",
        "fake.zarr": "is marked complete but lacks the root attributes channels, groups, feature_names",
        "missing.zarr": "no megaset store at",
    }
    for name, message in expected.items():
        result = megaset("verify", str(tmp_path / name))
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


_RUN_EPOCHS = """
import sys
from megaset.cli import _progress, _session, _StageBars
from megaset.terminal import configure_logging
quiet = sys.argv[1:] == ["-q"]
_session.start(None, [], quiet=quiet)
configure_logging(_session.console, -1 if quiet else 0)
with _progress() as bar:  # what `megaset run` hands its stages
    stages = _StageBars(bar)
    stages("mix", 0, None, {})
    stages("mix", 4, 4, {})
    stages("train", 0, 2, {})
    for epoch in (1, 2):
        stages("train", epoch, 2, {"loss": 0.5 / epoch, "val_loss": 0.75 / epoch, "samples_per_s": 12345.6})
"""


def test_run_prints_one_line_per_epoch_where_no_bar_is_drawn_and_quiet_drops_them():
    def stderr(*args):
        out = subprocess.run([sys.executable, "-c", _RUN_EPOCHS, *args], capture_output=True, text=True,
                             timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        return out.stderr

    # stderr is a pipe: no bar, the epochs' lines alone.
    assert stderr() == ("train  epoch 1/2  loss 0.5  val 0.75  12,346 samples/s\n"
                        "train  epoch 2/2  loss 0.25  val 0.375  12,346 samples/s\n")
    assert stderr("-q") == ""


_DASK_NOISE = """
import logging, sys
from megaset.terminal import configure_logging, make_console
configure_logging(make_console(), int(sys.argv[1]))
from distributed import Client, LocalCluster
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
        Client(cluster) as client:
    client.run(lambda: logging.getLogger("distributed.worker").warning("noise from a worker process"))
    logging.getLogger("distributed.nanny").warning("Worker process still alive after 4.0 seconds, killing")
    logging.getLogger("megaset.run").info("train: done")
"""


@pytest.mark.slow
def test_dask_warnings_only_with_verbose():
    def stderr(verbosity):
        out = subprocess.run([sys.executable, "-c", _DASK_NOISE, str(verbosity)], capture_output=True, text=True,
                             timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        return out.stderr

    quiet, default, verbose = stderr(-1), stderr(0), stderr(1)
    assert "still alive" not in default and "noise from a worker process" not in default
    assert "train: done" in default and "train: done" not in quiet
    assert "Worker process still alive after 4.0 seconds, killing" in verbose
    assert "noise from a worker process" in verbose


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from megaset.config import Config
    from megaset.pipeline.ingest import ingest
    from megaset.pipeline.simulate import simulate
    from megaset.storage.mix import mix

    root = tmp_path_factory.mktemp("cli-store")
    data = {"simulate": {"output": str(root / "ntuples"), "events": 2000, "signal_events": 200,
                         "channels": ["zeejets", "ttbar", "c1n2_wz_450_300"]},
            "store": {"url": str(root / "store.zarr"), "chunk_len": 256}}
    cfg = Config.model_validate(data)
    simulate(cfg.simulate)
    ingest(cfg, None)
    mix(cfg, None)
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return cfg, str(path)


@pytest.mark.slow
def test_query_takes_the_store_from_the_config_or_first(small_store):
    cfg, path = small_store
    sql = "SELECT count(*) AS n FROM train"
    by_config, before, positional = (megaset("query", sql, "--config", path), megaset("-c", path, "query", sql),
                                     megaset("query", cfg.store.url, sql))
    assert by_config.returncode == 0, by_config.stderr
    assert by_config.stdout == before.stdout == positional.stdout
    assert by_config.stdout.split("\n")[3].strip("│ ").isdigit()  # one row, under the header and its rule
    result = megaset("query", "a", "b", "c")
    assert result.returncode == 2 and "give the SQL as one argument" in result.stderr


@pytest.mark.slow
def test_select_star_shows_a_readable_subset(small_store):
    from megaset.storage.store import open_store

    cfg, path = small_store
    result = megaset("-c", path, "query", "SELECT * FROM test", "--rows", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = [name.strip() for name in lines[1].strip("┃").split("┃")]
    assert len(header) == 16 and len(lines) == 3 + 3 + 1  # top rule, header, rule, 3 rows, bottom rule
    cells = set(open_store(cfg.store.url).feature_names)
    assert {"channel_name", "event", "met", "weight", "yield_weight"} <= set(header)
    assert header.index("weight") < len(header) and len(set(header) & cells) < 16
    assert "16 of 5" in result.stderr and "--output result.parquet" in result.stderr
    wide = megaset("-c", path, "query", "SELECT * FROM test", "--rows", "3", "--columns", "1000")
    assert "columns shown" not in wide.stderr and len(wide.stdout.splitlines()[1].split("┃")) > 500


@pytest.mark.slow
def test_simulate_ingest_mix_verify(tmp_path):
    cfg = {
        "simulate": {"output": str(tmp_path / "ntuples"), "events": 4000, "signal_events": 300,
                     "events_per_file": 2000, "channels": ["zeejets", "ttbar", "c1n2_wz_450_300"]},
        "store": {"url": str(tmp_path / "store.zarr")},
        "cluster": {"workers": 1, "dashboard": True},
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
    assert "connected to tcp://" in result.stderr
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/status$", result.stderr, re.MULTILINE), result.stderr
    assert (tmp_path / "store.staging.zarr" / "zarr.json").exists()

    result = megaset("-q", "mix", "-c", str(path))  # the results, without the progress messages
    assert result.returncode == 0, result.stderr
    assert "connected to" not in result.stderr and "dashboard" not in result.stderr and "MB written" in result.stderr
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
    from megaset.config import ClusterConfig
    from megaset.deploy.cluster import dashboard_link

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
    # The default combination is the headline, first in the table, its members after it.
    assert tail.index("ae-svdd") < tail.index("ae-shallow") < tail.index("deep-svdd")
    # The closing table: what each stage did, how long it took, what it made; the default
    # combination's member deep-svdd trained and scored as stages of their own.
    rows = _table_rows(result.output, "stages")
    stages = ["simulate", "ingest", "mix", "train", "score", "train deep-svdd", "score deep-svdd", "combine ae-svdd",
              "report"]
    assert list(rows) == stages
    assert {row[0] for row in rows.values()} == {"done"} and all(row[1].endswith(" s") for row in rows.values())
    assert rows["simulate"][2] == "3 files" and rows["train"][2] == rows["train deep-svdd"][2] == "1 epoch"
    assert rows["report"][2] == "3 models, 1 signal"
    # CliRunner's output is no terminal: each epoch of each model trained is a line of its own.
    epoch = r"^(train|train deep-svdd)  epoch (\d)/1  loss \S+  val \S+  [\d,]+ samples/s$"
    assert re.findall(epoch, result.output, re.MULTILINE) == [("train", "1"), ("train deep-svdd", "1")]
    mixed = int(rows["mix"][2].split(" events")[0].replace(",", ""))
    assert rows["mix"][2].endswith(" chunks")
    assert all(rows[s][2].startswith(f"{mixed:,} events, ") for s in ("score", "score deep-svdd", "combine ae-svdd"))
    assert "connected to" in result.output
    link = dashboard_link(cluster_client, ClusterConfig(kind="address", address=cluster_client.scheduler.address))
    assert f"dashboard: {link}" in result.output if link else "dashboard" not in result.output

    again = CliRunner().invoke(app, ["-q", "run", "-c", str(path)])
    assert again.exit_code == 0, again.output
    assert "stages" not in again.output and "connected to" not in again.output and "finished" in again.output
    assert "(Farina et al. Table I)" in again.output
    rows = _table_rows(CliRunner().invoke(app, ["run", "-c", str(path)]).output, "stages")
    assert {name: row[0] for name, row in rows.items()} == dict.fromkeys(rows, "skipped")
    assert list(rows) == stages


@pytest.mark.slow
def test_train_prints_one_line_per_epoch_unless_quiet(small_store, tmp_path, cluster_client):
    from typer.testing import CliRunner

    from megaset.cli import app

    _, path = small_store

    def train(*options: str, output: str) -> str:
        args = [*options, "train", "-c", path, "--set", f"training.output={tmp_path / output}",
                "--set", "training.epochs=2", "--set", "training.batch_size=256",
                "--set", "cluster.kind=address", "--set", f"cluster.address={cluster_client.scheduler.address}"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + "".join(traceback.format_exception(*result.exc_info))
        return result.output

    shown, quiet = train(output="shown"), train("-q", output="quiet")
    epoch = r"^epoch (\d)/2  loss \S+  val \S+  [\d,]+ samples/s( \*)?$"
    assert [number for number, _ in re.findall(epoch, shown, re.MULTILINE)] == ["1", "2"]
    assert re.findall(epoch, quiet, re.MULTILINE) == [] and "ae-shallow: 2 epochs" in quiet


def _table_rows(output: str, title: str) -> dict[str, list[str]]:
    """The rows of the table printed under ``title``, by their first cell."""
    lines = output.splitlines()
    start = lines.index(title)
    rows = {}
    for line in lines[start + 4:]:  # the title, the top rule, the header, the rule under it
        if not line.startswith("│"):
            break
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_printed_auc_table_names_the_signals_it_leaves_out():
    from rich.console import Console

    from megaset.cli import _auc_table

    row = {"signal": "kept", "model": "ae-shallow", "auc": 0.9, "auc_error": 0.01,
           **{f"e{k}": 0.5 for k in (10, 100, 1000)}, **{f"e{k}_error": 0.1 for k in (10, 100, 1000)}}
    console = Console(record=True, width=200)
    console.print(_auc_table({"auc_table": [row], "signals_without_events": ["ss-only"]}, "ss2lep"))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "ss2lep: anomaly detection" in text and "kept" in text
    assert "- signal ss-only: no selected event with a positive weight in the store: not in the table" in text
