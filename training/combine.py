"""``score --combine``: one score from several scored models, ``score/<name>`` beside theirs.

``scoring.combine: {ae-svdd: {models: [ae-shallow, deep-svdd]}}`` writes, for every event of the
store, one number from the members' background p-values ``p_m = 1 - F_m(s_m)``, ``F_m`` the
background CDF of model m's score on the **val** group, by the combination's ``method``:

    rank-mean:  combined = -log10(mean_m p_m)                      (:func:`rank_mean`)
    min-p:      combined = -log10(1 - (1 - min_m p_m)^M)           (:func:`min_p`)

The rank mean rewards events that every member finds unusual; but one member's extreme tail is
averaged with the others' ordinary values, so a signal that only one member sees far out (at
background efficiency 1e-3) is diluted. min-p keeps the order of the most anomalous member
(that of the largest rank) and, through Šidák's correction for M members, stays a background
p-value: uniform on background when the members are independent, conservative (never smaller
than the true tail probability) when they are positively correlated, as models scoring the same
events are; the simpler Bonferroni bound ``M min p`` would be more conservative still.

A member may be one block of a model's error: ``ae-shallow.met`` combines ``score/ae-shallow.met``,
which scoring writes with ``scoring.blocks`` for every model that reconstructs the RMM. A signal
that differs from the background in one block (MET and the transverse masses, for charginos
decaying to invisible neutralinos) is diluted in the error summed over all cells; the block's
own p-value is not.

Why ranks: the members' scores live on unrelated scales (a mean squared error, a squared
distance, a negative log-likelihood); their background CDFs put them on one scale, the
fraction of background below, so that each member counts the same. Why the val group: the
test group and the signals are what the report evaluates the combination on, so the CDFs must
not be estimated from them (the test background would otherwise be ranked against itself);
the val group is background the models did not train on, as the test group is.

Each CDF is a quantile table of the member's val scores (at most ``points`` points, every
event of a smaller val group; Hazen plotting positions ``(i + 1/2) / n``), kept in the
column's attributes so that a reader can map scores of new events the same way; between its
points F is linear in the score. Beyond the largest val score, where tight working points sit,
a flat F would make every further event tie: there ``log(1 - F)`` goes on linearly in the score
with the slope of the table's last step of non-zero width, so the order of the member's raw
tail is kept. Below the smallest val score F stays at its first point (the low tail selects
nothing). The written value ``-log10(p)`` is positive, so the report's log10 axis spreads its background
tail over decades; it is computed from the members' ``log(1 - F)``, finite however far beyond
the val group an event is.

The column is written chunk by chunk through :func:`megaset.storage.tasks.map_chunks` like the
other scores; its attributes carry the stage record (fingerprinted on the members' score
fingerprints and the combination's settings) and ``complete``, so ``report``, ``query``,
``verify`` and ``run`` treat it as any other model.

>>> combine_scores(cfg, client, "ae-svdd")["column"]     # doctest: +SKIP
'score/ae-svdd'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.config import CombineConfig, Config
from megaset.errors import ConfigError
from megaset.storage.scores import score_column
from megaset.storage.tasks import map_chunks

if TYPE_CHECKING:
    from distributed import Client

    from megaset.storage.store import Store, StoreGroup

__all__ = ["combine_scores", "combine_record", "quantile_table", "log_survival", "rank_mean", "min_p",
           "METHODS"]

#: The group whose background the CDFs are estimated on.
_CDF_GROUP = "val"


def quantile_table(scores: np.ndarray, points: int) -> dict[str, list[float]]:
    """``{"score": [...], "cdf": [...]}``: the CDF of ``scores`` at ``min(points, n)`` points,
    the Hazen plotting positions ``(i + 1/2) / n`` from the first to the last event.

    >>> quantile_table(np.array([3.0, 1.0, 2.0]), 10)
    {'score': [1.0, 2.0, 3.0], 'cdf': [0.16666666666666666, 0.5, 0.8333333333333334]}
    """
    values = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(values)
    positions = (np.arange(n) + 0.5) / n
    cdf = positions if n <= points else np.linspace(positions[0], positions[-1], points)
    return {"score": np.interp(cdf, positions, values).tolist(), "cdf": cdf.tolist()}


def log_survival(scores: np.ndarray, table: Mapping[str, Sequence[float]]) -> np.ndarray:
    """log(1 - F(score)) from a :func:`quantile_table`: F linear between its points, flat below
    the first; above the last, log(1 - F) linear in the score (slope of the last step of non-zero
    width). In logs, so that a score far beyond the val group keeps a finite, ordered value."""
    xs, fs = np.asarray(table["score"]), np.asarray(table["cdf"])
    s = np.asarray(scores, dtype=np.float64)
    out = np.log1p(-np.interp(s, xs, fs))
    steps = np.nonzero(np.diff(xs) > 0)[0]
    above = s > xs[-1]
    if steps.size and above.any():
        k = steps[-1]
        slope = (np.log1p(-fs[k + 1]) - np.log1p(-fs[k])) / (xs[k + 1] - xs[k])
        out[above] = np.log1p(-fs[-1]) + slope * (s[above] - xs[-1])
    return out


def rank_mean(log_survivals: Sequence[np.ndarray]) -> np.ndarray:
    """``-log10(1 - mean F)`` from the members' ``log(1 - F)``, through a log-sum-exp: where every
    member is far in its tail, ``1 - F`` underflows but its logarithm does not."""
    from scipy.special import logsumexp

    return -(logsumexp(np.stack(log_survivals), axis=0) - np.log(len(log_survivals))) / np.log(10.0)


def min_p(log_survivals: Sequence[np.ndarray]) -> np.ndarray:
    """``-log10(1 - (1 - min p)^M)`` from the members' ``log p = log(1 - F)``: the most anomalous
    member's p-value, Šidák-corrected for the M members. Where ``min p < e^-30`` the corrected
    value is ``M min p`` to far better than float precision, taken in logs so that it never
    underflows."""
    logs = np.stack(log_survivals)
    smallest, m = logs.min(axis=0), len(log_survivals)
    with np.errstate(divide="ignore"):  # p = 1 exactly: log1p(-1); its corrected value is 1 all the same
        exact = np.log(-np.expm1(m * np.log1p(-np.exp(smallest))))
    return -np.where(smallest < -30.0, smallest + np.log(m), exact) / np.log(10.0)


#: Each ``scoring.combine.<name>.method``: the function of the members' ``log(1 - F)`` it writes,
#: the words the report and the command name it with, and what the written value is (an axis).
METHODS: dict[str, tuple[Callable[[Sequence[np.ndarray]], np.ndarray], str, str]] = {
    "rank-mean": (rank_mean, "the rank mean", "-log10 mean background p-value (rank-mean)"),
    "min-p": (min_p, "the smallest background p-value (Šidák-corrected)", "-log10 background p-value (min-p)"),
}


def _combine_run(task: tuple[StoreGroup, range], *, name: str, members: list[str], method: str,
                 tables: dict[str, dict[str, list[float]]]) -> tuple[int, int]:
    """Write the combination of the chunks of one run; ``(events written, chunks already done)``."""
    group, indices = task
    column = score_column(name)
    combined = METHODS[method][0]
    todo = [chunks for chunks in group.column_chunks(column, indices) if not group.chunk_written(column, chunks[0])]
    events = 0
    for chunks in todo:
        values = group.read_chunks(chunks, [score_column(m) for m in members])
        done = combined([log_survival(values[score_column(m)], tables[m]) for m in members])
        group.write_chunks(column, chunks, done)
        events += len(done)
    return events, len(indices) - sum(map(len, todo))


def _setting(cfg: Config, name: str) -> CombineConfig:
    if name not in cfg.scoring.combine:
        known = ", ".join(sorted(cfg.scoring.combine)) or "none"
        msg = (f"no combination {name!r} under scoring.combine (configured: {known}); add "
               f"scoring.combine.{name}: {{models: [ae-shallow, deep-svdd]}} to the configuration")
        raise ConfigError(msg)
    setting = cfg.scoring.combine[name]
    if name in setting.models or len(set(setting.models)) != len(setting.models):
        msg = (f"scoring.combine.{name}.models {setting.models} must name distinct models other than {name!r} "
               "itself (its column is score/<name>)")
        raise ConfigError(msg)
    return setting


def _member_fingerprints(store: Store, name: str, models: list[str]) -> dict[str, str | None]:
    """Each member's score fingerprint (a block's, ``model.block``, is its model's); refuse a
    member not scored (or not finished) in every group, or a block its model did not write."""
    from megaset.storage.scores import split_score_name
    from megaset.training.score import scored_record

    out = {}
    for member in models:
        model, block = split_score_name(member)
        found, done = scored_record(store, model)
        if not done:
            what = "has no column" if found is None else "has an unfinished or mixed column"
            msg = (f"scoring.combine.{name}: model {model!r} {what} {score_column(model)} in store {store.url!r}; "
                   f"score it first: `megaset train --set training.model={model}` then "
                   f"`megaset score --model {model}`")
            raise ConfigError(msg)
        if block is not None:
            # Scoring writes every block or none, and says which in the total's attributes.
            total = score_column(model)
            lacking = [g for g in store.group_names() if not store.group(g).column_attrs(total).get("blocks")]
            if lacking:
                msg = (f"scoring.combine.{name}: member {member!r} is the {block} block of {model!r}, whose scores "
                       f"in store {store.url!r} hold no block errors (group {lacking[0]!r}); blocks are written "
                       f"with scoring.blocks: true by models that reconstruct the RMM: score {model} again with "
                       f"it, or combine the total, {model!r}")
                raise ConfigError(msg)
        out[member] = found.get("fingerprint") if found else None
    return out


def combine_record(cfg: Config, name: str, upstream: Mapping[str, str | None]) -> dict[str, Any]:
    """The stage record (:mod:`megaset.provenance`) of combination ``name`` over members whose
    score fingerprints are ``upstream`` (by model)."""
    from megaset.provenance import make_record

    setting = cfg.scoring.combine[name].model_dump(mode="json")
    return make_record("combine", {"scoring": {"combine": {name: setting}}}, upstream=upstream)


def combine_scores(cfg: Config, client: Client | None, name: str, *,
                   progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``score/<name>``, the combination ``scoring.combine.<name>`` of scored models.

    Parameters
    ----------
    cfg
        The configuration: ``store.url``, ``scoring.combine.<name>``, ``scoring.retries``.
    client
        A Dask client: one task per run of chunks. ``None``: here, one group after the other.
    name
        The combination, a key of ``scoring.combine``.
    progress
        Called as ``progress(done, total)`` in chunks.
    overwrite
        Write every chunk again even where the column holds this very combination.

    Returns
    -------
    dict
        ``model`` (the name), ``column``, ``models``, ``method``, ``groups`` (per group: ``events``,
        ``chunks``), ``chunks``, ``resumed``, ``events_scored``, ``seconds``.

    Raises
    ------
    ConfigError
        No such combination; a member not scored in every group of the store (named, with the
        commands that score it); a val group without events.
    """
    from megaset.storage.backend import writing
    from megaset.storage.store import open_store
    from megaset.training.score import chunk_runs, run_name

    t0 = time.perf_counter()
    setting = _setting(cfg, name)
    store = open_store(cfg.store.url)
    upstream = _member_fingerprints(store, name, setting.models)
    val = store.group(_CDF_GROUP)
    if val.n_events == 0:
        msg = f"scoring.combine.{name}: the val group of {store.url!r} has no events to rank the scores on"
        raise ConfigError(msg)
    tables = {m: quantile_table(val.read_chunks(range(val.n_chunks), [score_column(m)])[score_column(m)],
                                setting.points) for m in setting.models}
    entry: dict[str, Any] = {"combine": setting.model_dump(mode="json"), "tables": tables,
             "stage": combine_record(cfg, name, upstream), "config": cfg.resolved(), "complete": False}
    groups = [store.group(g) for g in store.group_names()]
    n_chunks = sum(g.n_chunks for g in groups)
    advance = (lambda n: progress(n, n_chunks)) if progress else (lambda n: None)
    column = score_column(name)
    with writing(store.url, "megaset score --combine"):
        for g in groups:
            old = g.column_attrs(column) if g.has_column(column) else {}
            same = old.get("stage", {}).get("fingerprint") == entry["stage"]["fingerprint"]
            g.create_column(column, np.float32, overwrite=overwrite or not same)
            g.set_column_attrs(column, entry)
        tasks = chunk_runs(groups, client, column)
        advance(0)
        results = map_chunks(client, _combine_run, tasks, names=[run_name(g, run) for g, run in tasks],
                             stage="megaset score --combine", retries=cfg.scoring.retries, progress=advance,
                             sizes=[len(run) for _, run in tasks], name=name, members=setting.models,
                             method=setting.method, tables=tables)
        for g in groups:
            g.set_column_attrs(column, {**entry, "complete": True})
    return {
        "model": name,
        "column": column,
        "models": list(setting.models),
        "method": setting.method,
        "groups": {g.name: {"events": g.n_events, "chunks": g.n_chunks} for g in groups},
        "chunks": n_chunks,
        "resumed": sum(done for _, done in results),
        "events_scored": sum(n for n, _ in results),
        "seconds": time.perf_counter() - t0,
    }
