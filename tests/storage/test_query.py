from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from megaset.config import Config
from megaset.errors import ConfigError, StoreKeyError
from megaset.pipeline.ingest import ingest
from megaset.pipeline.simulate import simulate
from megaset.storage.mix import mix
from megaset.storage.query import export, query, scan, sql_name
from megaset.storage.store import StoreGroup, open_store

SIGNAL = "signal/c1n2_wz_450_300"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store of simulated events in 128-event chunks, with a score column written chunk by chunk."""
    root = tmp_path_factory.mktemp("query")
    cfg = Config.model_validate({
        "simulate": {"output": str(root / "ntuples"), "events": 3000, "signal_events": 300,
                     "channels": ["zeejets", "zmmjets", "ttbar", "diboson", "c1n2_wz_450_300"]},
        "store": {"url": str(root / "store.zarr"), "chunk_len": 128},
    })
    simulate(cfg.simulate)
    ingest(cfg, None)
    mix(cfg, None)
    s = open_store(cfg.store.url)
    for name in ("test", SIGNAL):
        group = s.group(name)
        group.create_column("score/ae-test", np.float32)
        for chunks in group.column_chunks("score/ae-test"):
            values = group.read_chunks(chunks, ("met", "channel"))
            group.write_chunks("score/ae-test", chunks, values["met"] / 100 + values["channel"])
    return cfg.store.url


def _arrays(url: str, group: str) -> dict[str, np.ndarray]:
    g = open_store(url).group(group)
    names = ["met", "m_ll", "n_jets", "weight", "channel", "event_id", "rmm", "score/ae-test"]
    parts = [v for _, v in g.iter_chunks(names)]
    return {k: np.concatenate([p[k] for p in parts]) for k in names}


def test_filter_and_projection_equal_numpy(store):
    result = query(store, "SELECT file_index, entry, met, m_ll, score_ae_test, e_T_miss, m_T_ele_0 "
                          "FROM test WHERE met > 12 AND n_jets >= 1 ORDER BY file_index, entry")
    a = _arrays(store, "test")
    keep = (a["met"] > 12) & (a["n_jets"] >= 1)
    order = np.lexsort((a["event_id"][keep, 3], a["event_id"][keep, 2]))
    features = open_store(store).feature_names
    assert 0 < result.height == int(keep.sum()) < len(keep)
    assert result.columns == ["file_index", "entry", "met", "m_ll", "score_ae_test", "e_T_miss", "m_T_ele_0"]
    expected = {
        "file_index": a["event_id"][keep, 2], "entry": a["event_id"][keep, 3], "met": a["met"][keep],
        "m_ll": a["m_ll"][keep], "score_ae_test": a["score/ae-test"][keep],
        "e_T_miss": a["rmm"][keep, features.index("e_T_miss")],
        "m_T_ele_0": a["rmm"][keep, features.index("m_T_ele_0")],
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(result[name].to_numpy(), values[order], err_msg=name)
    # In the chekanov convention cell (0, 0) is MET itself.
    np.testing.assert_array_equal(result["e_T_miss"].to_numpy(), result["met"].to_numpy())
    assert result.schema["met"] == pl.Float32 and result.schema["entry"] == pl.Int64


def test_aggregations_grouped_by_channel_equal_numpy(store):
    result = query(store, "SELECT channel, channel_name, count(*) AS n, sum(weight) AS w, avg(met) AS mean_met, "
                          "max(score_ae_test) AS top FROM test GROUP BY channel, channel_name ORDER BY channel")
    a = _arrays(store, "test")
    names = {c["id"]: c["name"] for c in open_store(store).channels}
    ids = np.unique(a["channel"])
    assert result["channel"].to_list() == ids.tolist() and len(ids) >= 3
    assert result["channel_name"].cast(pl.String).to_list() == [names[int(c)] for c in ids]
    for row, c in zip(result.iter_rows(named=True), ids, strict=True):
        sel = a["channel"] == c
        assert row["n"] == int(sel.sum())
        assert row["w"] == pytest.approx(float(a["weight"][sel].astype(np.float64).sum()), rel=1e-5)
        assert row["mean_met"] == pytest.approx(float(a["met"][sel].astype(np.float64).mean()), rel=1e-5)
        assert row["top"] == pytest.approx(float(a["score/ae-test"][sel].max()))
    total = query(store, "SELECT count(*) AS n, sum(weight) AS w FROM test WHERE channel_name = 'ttbar'")
    sel = a["channel"] == next(i for i, n in names.items() if n == "ttbar")
    assert total["n"].item() == int(sel.sum()) > 0


def test_signal_groups_by_either_name(store):
    quoted = query(store, f'SELECT run, event, score_ae_test FROM "{SIGNAL}" ORDER BY file_index, entry')
    plain = query(store, f"SELECT run, event, score_ae_test FROM {sql_name(SIGNAL)} ORDER BY file_index, entry")
    assert quoted.equals(plain)
    assert quoted.height == open_store(store).group(SIGNAL).n_events > 0
    a = _arrays(store, SIGNAL)
    order = np.lexsort((a["event_id"][:, 3], a["event_id"][:, 2]))
    np.testing.assert_array_equal(quoted["event"].to_numpy(), a["event_id"][order, 1])


def test_only_the_columns_asked_for_are_read_run_by_run(store, monkeypatch):
    from megaset.storage import query as query_module

    reads = []
    original = StoreGroup.read_chunks

    def spy(self, indices, columns=("rmm", "weight")):
        reads.append((self.name, indices, tuple(sorted(columns))))
        return original(self, indices, columns)

    group = open_store(store).group("test")
    # Runs of one chunk of the met and score columns (8 bytes an event).
    monkeypatch.setattr(query_module, "_BATCH_BYTES", group.chunk_len * 8)
    runs = [range(i, i + 1) for i in range(group.n_chunks)]
    a = _arrays(store, "test")
    bounds = [group.chunk_slice(i) for i in range(group.n_chunks)]
    cut = min(float(a["score/ae-test"][b].max()) for b in bounds)  # no row of one run passes
    passing = [bool((a["score/ae-test"][b] > cut).any()) for b in bounds]
    assert 0 < sum(passing) < len(runs)

    monkeypatch.setattr(StoreGroup, "read_chunks", spy)
    result = query(store, f"SELECT met FROM test WHERE score_ae_test > {cut}")
    # The filter's column first, every run; the other column only for runs where rows pass.
    expected = []
    for r, passed in zip(runs, passing, strict=True):
        expected.append(("test", r, ("score/ae-test",)))
        if passed:
            expected.append(("test", r, ("met",)))
    assert reads == expected
    np.testing.assert_array_equal(np.sort(result["met"].to_numpy()), np.sort(a["met"][a["score/ae-test"] > cut]))

    reads.clear()
    limited = query(store, "SELECT e_T_miss FROM test LIMIT 5")
    # One run of the rmm rows, however wide: at least a chunk.
    assert limited.height == 5 and reads == [("test", range(1), ("rmm",))]


def test_unknown_columns_and_groups_are_refused_with_the_known_ones(store):
    with pytest.raises(StoreKeyError, match=r"group 'test' of .* has no column 'mett'; did you mean 'met'\?; "
                                            r"its columns are: channel, channel_name, run, event, file_index, entry, .*"
                                            r"score_ae_test, weight, yield_weight, and the 529 RMM cells by feature "
                                            r"name \(e_T_miss, "):
        query(store, "SELECT mett FROM test")
    with pytest.raises(StoreKeyError, match=r"has no column 'nope'.*m_ll"):
        query(store, "SELECT met FROM val WHERE nope > 1")
    with pytest.raises(StoreKeyError, match=r"no group 'tset'; its groups are: train, val, test, "
                                            r"signal_c1n2_wz_450_300 \(or \"signal/c1n2_wz_450_300\"\)"):
        query(store, "SELECT met FROM tset")


def test_queries_cannot_read_files_or_change_anything(store, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"table functions such as 'READ_CSV' are not available"):
        query(store, f"SELECT * FROM READ_CSV('{secret}')")
    with pytest.raises(ConfigError, match=r"only SELECT queries run on a store, got 'DROP'"):
        query(store, "DROP TABLE test")
    with pytest.raises(ConfigError, match=r"cannot run the query on .*"):
        query(store, "SELECT met FROM test; SELECT met FROM val")
    commented = query(store, "/* a comment */ SELECT count(*) AS n FROM val")
    assert commented["n"].item() == open_store(store).group("val").n_events


def test_export_streams_to_parquet_and_csv(store, tmp_path):
    sql = "SELECT channel, met, score_ae_test FROM test WHERE met > 12 ORDER BY score_ae_test"
    expected = query(store, sql)
    assert pl.read_parquet(export(store, sql, tmp_path / "out.parquet")).equals(expected)
    csv = pl.read_csv(export(store, sql, tmp_path / "out.csv"), schema=expected.schema)
    assert csv.equals(expected)
    with pytest.raises(ConfigError, match=r"out.json'.*\.parquet or \.csv"):
        export(store, sql, tmp_path / "out.json")
    assert scan(store, "test").filter(pl.col("met") > 12).select(pl.len()).collect().item() == expected.height


def test_cli_prints_the_table_and_writes_files(store, tmp_path):
    from typer.testing import CliRunner

    from megaset.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["query", store, "SELECT channel_name, count(*) AS n FROM test GROUP BY channel_name"])
    assert shown.exit_code == 0, shown.output
    assert "zmmjets" in shown.output and "4 rows" in " ".join(shown.output.split())
    written = runner.invoke(app, ["query", store, "SELECT met FROM test", "--output", str(tmp_path / "met.parquet")])
    assert written.exit_code == 0, written.output
    assert pl.read_parquet(tmp_path / "met.parquet").height == open_store(store).group("test").n_events


def test_yield_weight_sums_to_each_channels_whole_expected_yield_in_every_group(store):
    channels = open_store(store).channels
    totals = {c["name"]: sum(c["sum_weights"].values()) for c in channels}
    for group in ("train", "test", SIGNAL):
        table = sql_name(group)
        sums = query(store, f"SELECT channel_name, sum(weight) AS w, sum(yield_weight) AS y FROM {table} "
                            "GROUP BY channel_name")
        assert sums.height == (1 if group == SIGNAL else 4)
        for name, w, y in sums.iter_rows():
            assert y == pytest.approx(totals[name], rel=1e-6), (group, name)
            # The plain weight is the group's share: the test group holds about a fifth.
            if group == "test":
                assert 0.1 < w / y < 0.35
    # Event by event: the weight times the channel's total over its sum in the group.
    a = _arrays(store, "test")
    in_test = {c["id"]: c["sum_weights"]["test"] for c in channels if "test" in c["sum_weights"]}
    by_id = {c["id"]: totals[c["name"]] / in_test[c["id"]] for c in channels if c["id"] in in_test}
    expected = a["weight"].astype(np.float64) * np.array([by_id[int(c)] for c in a["channel"]])
    np.testing.assert_allclose(query(store, "SELECT yield_weight FROM test")["yield_weight"].to_numpy(), expected,
                               rtol=1e-12)
