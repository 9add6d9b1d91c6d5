"""The combinations of scored models (rank-mean, min-p): checked against numpy on the tiny store."""

from __future__ import annotations

import numpy as np
import pytest

from megaset.config import Config
from megaset.errors import ConfigError
from megaset.storage.store import open_store
from megaset.training.combine import combine_scores

COMBINE = {"both": {"models": ["a", "b"]}, "ghost": {"models": ["a", "c"]},
           "tails": {"models": ["a", "b"], "method": "min-p"}}


def _write_scores(cfg, model: str, seed: int, fingerprint: str, blocks: tuple[str, ...] = ()) -> None:
    """A finished ``score/<model>`` (and ``score/<model>.<block>`` of ``blocks``) in every group:
    lognormal scores, the test group's last events far beyond every val score (the tail where
    the CDF is extrapolated)."""
    store = open_store(cfg.store.url)
    rng = np.random.default_rng(seed)
    for name in store.group_names():
        g = store.group(name)
        for column in [f"score/{model}.{block}" for block in blocks] + [f"score/{model}"]:
            g.create_column(column, np.float32, overwrite=True)
            values = rng.lognormal(0.0, 1.0, g.n_events).astype(np.float32)
            if name == "test":
                values[-5:] = 50.0 + 10.0 * np.arange(5)
            if name.startswith("signal/"):
                values[-1] = 1e4  # 1 - F underflows: the combination must stay finite
            g.write_chunks(column, range(g.n_chunks), values)
        g.set_column_attrs(f"score/{model}", {"stage": {"fingerprint": fingerprint}, "complete": True,
                                              "blocks": bool(blocks)})


@pytest.fixture(scope="module")
def scored(private_store):
    data = private_store.resolved()  # replace() would add these to the default combination
    cfg = Config.model_validate({**data, "scoring": {**data["scoring"], "combine": COMBINE}})
    _write_scores(cfg, "a", 1, "fa")
    _write_scores(cfg, "b", 2, "fb")
    return cfg


def _column(cfg, group: str, column: str) -> np.ndarray:
    g = open_store(cfg.store.url).group(group)
    return np.asarray(g.read_chunks(range(g.n_chunks), [column])[column], dtype=np.float64)


def _survival(val: np.ndarray, s: np.ndarray) -> np.ndarray:
    """1 - F, F the Hazen CDF of ``val`` at ``s``, by counting; beyond the last val event, 1 - F
    falls geometrically in the score at the rate of the last two val events."""
    v = np.sort(val)
    n = len(v)
    below = np.searchsorted(v, s, side="right")  # val events at or below s
    lo, hi = v[np.maximum(below - 1, 0)], v[np.minimum(below, n - 1)]
    frac = np.where(hi > lo, (s - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    f = np.where(below == 0, 0.5 / n, (below - 0.5 + np.clip(frac, 0, 1)) / n)
    rate = np.log(1.5 / 0.5) / (v[-1] - v[-2])
    return np.where(s > v[-1], 0.5 / n * np.exp(-rate * (s - v[-1])), 1 - np.minimum(f, 1 - 0.5 / n))


def _rank(val: np.ndarray, s: np.ndarray) -> np.ndarray:
    return 1 - _survival(val, s)


def test_the_combined_column_is_the_rank_mean_of_numpy(scored):
    summary = combine_scores(scored, None, "both")
    assert summary["column"] == "score/both" and summary["resumed"] == 0
    store = open_store(scored.store.url)
    underflows = 0
    for group in store.group_names():
        ranks = [_rank(_column(scored, "val", f"score/{m}"), _column(scored, group, f"score/{m}")) for m in "ab"]
        with np.errstate(divide="ignore"):
            expected = -np.log10(1 - np.mean(ranks, axis=0))
        found = _column(scored, group, "score/both")
        finite = np.isfinite(expected)
        np.testing.assert_allclose(found[finite], expected[finite], rtol=2e-6)
        assert np.all(np.isfinite(found)) and np.all(found[~finite] > found[finite].max() + 100)
        underflows += int(np.count_nonzero(~finite))
    assert underflows == 1, "the signal group's last event is beyond float64's 1 - F"
    test = _column(scored, "test", "score/both")
    assert np.all(np.diff(test[-5:]) > 0), "the tail beyond the last val event keeps its order"
    attrs = store.group("test").column_attrs("score/both")
    assert attrs["complete"] and attrs["stage"]["basis"]["upstream"] == {"a": "fa", "b": "fb"}
    assert len(attrs["tables"]["a"]["score"]) == store.group("val").n_events
    assert "both" in store.group("test").scored_models()


def _assert_min_p(cfg, name: str, members: list[str]) -> None:
    """``score/<name>`` is 1 - (1 - min_m p_m)^2 of its two ``members``, p_m = 1 - F_m, in every group."""
    for group in open_store(cfg.store.url).group_names():
        p = np.min([_survival(_column(cfg, "val", f"score/{m}"), _column(cfg, group, f"score/{m}"))
                    for m in members], axis=0)
        with np.errstate(divide="ignore"):
            expected = np.where(p < 1e-12, -np.log10(2 * p), -np.log10(1 - (1 - p) ** 2))  # (1 - p)^2 rounds to 1
        found = _column(cfg, group, f"score/{name}")
        finite = np.isfinite(expected)
        np.testing.assert_allclose(found[finite], expected[finite], rtol=2e-6)
        assert np.all(np.isfinite(found)) and np.all(found[~finite] > found[finite].max() + 100)


def test_min_p_is_the_smallest_p_value_of_numpy_sidak_corrected(scored):
    """min-p: 1 - (1 - min_m p_m)^M with p_m = 1 - F_m, an independent numpy computation."""
    summary = combine_scores(scored, None, "tails")
    assert summary["method"] == "min-p"
    _assert_min_p(scored, "tails", ["a", "b"])
    # calibrated: the val background, ranked on its own tables, is uniform in the corrected p
    val = 10.0 ** -_column(scored, "val", "score/tails")
    assert abs(np.mean(val < 0.1) - 0.1) < 0.03 and abs(np.mean(val < 0.5) - 0.5) < 0.05


def test_a_block_of_a_model_is_a_member_and_a_model_without_blocks_is_refused(scored):
    """``model.block`` combines the block's own column, fingerprinted as its model's scores."""
    _write_scores(scored, "e", 4, "fe", blocks=("met", "mass"))
    cfg = scored.replace(scoring={"combine": {"e-met": {"models": ["e.met", "e"], "method": "min-p"},
                                              "a-met": {"models": ["a.met", "b"]}}})
    combine_scores(cfg, None, "e-met")
    _assert_min_p(cfg, "e-met", ["e.met", "e"])
    attrs = open_store(cfg.store.url).group("test").column_attrs("score/e-met")
    assert attrs["stage"]["basis"]["upstream"] == {"e.met": "fe", "e": "fe"}
    assert set(attrs["tables"]) == {"e.met", "e"}
    with pytest.raises(ConfigError, match=r"member 'a.met' is the met block of 'a', whose scores in store .* hold "
                                          r"no block errors \(group 'train'\)"):
        combine_scores(cfg, None, "a-met")


def test_a_rerun_with_the_same_members_writes_nothing_and_a_new_member_rewrites(scored):
    combine_scores(scored, None, "both")
    again = combine_scores(scored, None, "both")
    assert again["events_scored"] == 0 and again["resumed"] == again["chunks"]
    _write_scores(scored, "b", 3, "fb2")
    redone = combine_scores(scored, None, "both")
    assert redone["resumed"] == 0
    upstream = open_store(scored.store.url).group("val").column_attrs("score/both")["stage"]["basis"]["upstream"]
    assert upstream["b"] == "fb2"


def test_a_coarse_table_keeps_the_val_quantiles(scored):
    cfg = scored.replace(scoring={"combine": {"both": {"models": ["a", "b"], "points": 11}}})
    combine_scores(cfg, None, "both")
    table = open_store(cfg.store.url).group("val").column_attrs("score/both")["tables"]["a"]
    val = _column(cfg, "val", "score/a")
    n = len(val)
    cdf = np.linspace(0.5 / n, 1 - 0.5 / n, 11)
    np.testing.assert_allclose(table["cdf"], cdf)
    np.testing.assert_allclose(table["score"], np.quantile(val, (cdf * n - 0.5) / (n - 1)), rtol=1e-6)


def test_a_member_not_scored_is_refused_by_name(scored):
    with pytest.raises(ConfigError, match=r"model 'c' has no column score/c .*megaset score --model c"):
        combine_scores(scored, None, "ghost")
    with pytest.raises(ConfigError, match=r"no combination 'nope' under scoring.combine "
                                          r"\(configured: both, ghost, tails\)"):
        combine_scores(scored, None, "nope")
    bad = scored.replace(scoring={"combine": {"a": {"models": ["a", "b"]}}})
    with pytest.raises(ConfigError, match=r"scoring.combine.a.models"):
        combine_scores(bad, None, "a")


def test_the_cluster_writes_the_same_column_as_this_process(scored, cluster_client):
    here = combine_scores(scored, None, "both", overwrite=True)
    expected = {g: _column(scored, g, "score/both") for g in here["groups"]}
    there = combine_scores(scored, cluster_client, "both", overwrite=True)
    assert there["resumed"] == 0 and there["events_scored"] == sum(g["events"] for g in there["groups"].values())
    for group, values in expected.items():
        np.testing.assert_array_equal(_column(scored, group, "score/both"), values)


@pytest.mark.slow
def test_the_command_writes_the_combination_and_names_a_missing_member(scored, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from megaset.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(scored.resolved(), sort_keys=False))
    result = CliRunner().invoke(app, ["score", "--combine", "both", "-c", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "score/both" in result.output and "rank mean of a, b" in result.output
    result = CliRunner().invoke(app, ["score", "--combine", "ghost", "-c", str(path)], env={"COLUMNS": "300"})
    assert isinstance(result.exception, ConfigError) and "model 'c' has no column score/c" in str(result.exception)
