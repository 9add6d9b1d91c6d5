"""The signal zoo against every model family and selection: AUC, E100 and E1000.

Simulates the demo's backgrounds with the zoo's signals, runs the thesis' 2-lepton selection
and, from the same configuration (``searches``), the soft-dilepton and the same-sign presets,
each with the default combination ``ae-svdd`` (its members ``ae-shallow`` and ``deep-svdd``
trained by the run), trains the other ``--models`` on each store and writes each store's
report, then prints one table: selection, model, signal, the signal's efficiency through the
selection, AUC, E100 and E1000 (marked where the cut keeps fewer than
``report.min_background_events`` background MC events), and the issue's targets per signal,
judged on the first of ``--models``.

    python benchmarks/zoo.py --events 1500000 --signal-events 5000   # E1000 measurable (>= 10 k test background)
    python benchmarks/zoo.py --events 200000 --signal-events 2000    # a quick look
    python benchmarks/zoo.py --models ae-svdd,ae-met-svdd,ae-svdd-min-p,ae-shallow,deep-svdd  # default, the others
    python benchmarks/zoo.py --signals held-out --no-supervised   # the held-out signals

``--signals`` picks the development zoo (the signals every choice of the zoo was made on) or the
held-out one (written after those choices, to judge them on signals that took no part).

A selection that keeps few background events (the same-sign one keeps a few hundred of 1.5 M)
leaves its working points unmeasurable: a search whose test group holds fewer than
``--min-background`` events is run again on its own, with a background simulated larger by the
factor that should bring it there (at most ``--max-background-scale``), into its own ntuple
folder, store, checkpoints and report (``<path>-larger``), so that a rerun skips what is done.
Simulating is cheap next to what follows, and the selection drops most events at ingest.
Besides the default combination ``ae-svdd`` (rank-mean), the zoo writes ``ae-svdd-min-p``, the
same members combined by min-p, and ``ae-met-svdd``, the MET block of ae-shallow's error
(``ae-shallow.met``) with deep-svdd by min-p, for comparison.

Beside the unsupervised scores, each store gets two *supervised* rows per signal: a gradient-boosted
classifier (scikit-learn's ``HistGradientBoostingClassifier``) trained on that signal against
the train group's background, on the RMM alone (``supervised``) and on the RMM with the
store's event columns (``supervised+aux``: MET, H_T, masses, multiplicities). The signal's
events are split in two halves: each classifier learns on one and is evaluated on the other
with the whole test background; the row is the mean of the two. By the Neyman-Pearson lemma the
likelihood ratio is the best score of given inputs, and a classifier that knows the signal
approximates it: these rows say what an anomaly score of the same inputs could reach, signal by
signal. They are a lower estimate of that optimum, not a bound: with few signal events to learn
from, the classifier can fall below an unsupervised score.

Two more reference rows per signal estimate the background's density alone, without networks:
the distance to the 5th nearest train event (``knn-density``) and a Gaussian mixture's negative
log-likelihood (``gmm-density``), in the leading principal components of the RMM. They say how
far out a signal lies by density, however it is estimated: a signal that no density ranks far
out sits inside the background's bulk, and only a score that knows more than the background can
find it there.

A selection's working points are fractions of the background it kept. To compare selections,
each row of the zoo's models also carries ``end_to_end``: the fraction of the signal found by
the selection and a cut on the score together at :data:`END_TO_END` of the simulated background.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

#: The selection meant for each signal (the targets count a signal under this one only).
MEANT_FOR = {"sleptons_200_180": "soft", "hpp_vbf_500": "ss", "four_tops": "ss",
             "higgsino_150_130": "soft", "same_sign_tops": "ss"}
# The same-sign search keeps Chekanov's RMM: after a same-sign selection the charge-aware one
# adds only the event's overall sign and splits its few training events over four lepton
# blocks (docs/pipeline.md, "Lepton charge").
SEARCHES = {"soft": {"selection": {"mode": "soft2lep"}},
            # a few per cent of the events pass: smaller chunks, so that every rank has some
            "ss": {"selection": {"mode": "ss2lep"}, "store": {"chunk_len": 512}}}


def _config(workdir: Path, events: int, signal_events: int, epochs: int, signals: str = "development"):
    from megaset.config import Config
    from megaset.pipeline._processes import HELD_OUT, ZOO
    from megaset.pipeline.simulate import CHANNELS

    channels = [name for name, spec in CHANNELS.items() if not spec.zoo] + list(
        ZOO if signals == "development" else HELD_OUT)
    return Config.model_validate({
        "simulate": {"output": str(workdir / "ntuples"), "events": events, "signal_events": signal_events,
                     "channels": channels},
        "store": {"url": str(workdir / "store.zarr"), "chunk_len": 4096},
        "training": {"output": str(workdir / "models"), "epochs": epochs, "batch_size": 1024,
                     "learning_rate": 3e-3},
        "report": {"output": str(workdir / "report"), "auc_replicas": 20},
        "scoring": {"combine": {"ae-svdd": {"models": ["ae-shallow", "deep-svdd"]},
                                "ae-svdd-min-p": {"models": ["ae-shallow", "deep-svdd"], "method": "min-p"},
                                "ae-met-svdd": {"models": ["ae-shallow.met", "deep-svdd"], "method": "min-p"}}},
        "searches": SEARCHES,
    })


def _background_scale(cfg, wanted: int, most: int) -> int:
    """The factor on the simulated background that should give ``cfg``'s test group ``wanted``
    events (10 % to spare; 1 where it has them; at most ``most``)."""
    from megaset.storage.store import open_store

    found = open_store(cfg.store.url).group("test").n_events
    return 1 if found >= wanted else min(most, math.ceil(1.1 * wanted / max(found, 1)))


def _larger(cfg, workdir: Path, name: str, events: int):
    """``cfg`` (one search) alone, on a background of ``events`` simulated into its own folder,
    with its own store, checkpoints and report (``<path>-larger``): a rerun of the zoo then
    finds both the search and its larger run current, instead of rebuilding each over the other."""
    from megaset.config import Config

    data = cfg.resolved()
    data["simulate"] = {**data["simulate"], "events": events, "output": str(workdir / f"ntuples-{name}")}
    data["searches"] = {"larger": {}}
    return Config.model_validate(data).search("larger")


def _families(cfg, client, models: list[str]) -> dict:
    """Train and score every model of ``models`` that the run did not score on ``cfg``'s store
    (it scores the default combination and its members); the report of all."""
    from megaset.reporting import write_report
    from megaset.storage.store import open_store
    from megaset.training.score import score
    from megaset.training.trainer import train

    scored = set(open_store(cfg.store.url).group("test").scored_models())
    for model in models:
        if model not in scored:
            other = cfg.replace(training={"model": model})
            train(other, client)
            score(other, client)
    return write_report(cfg.replace(report={"models": models}))


def _efficiency(store_url: str) -> dict[str, float]:
    """Per channel, the weighted fraction of its events the selection kept, and under
    ``"background"`` that of all background channels together (the simulated background, each
    sample after its generator filter): a selection's working points are fractions of what it
    kept, so this is what turns them into fractions of one common background."""
    from megaset.storage.store import open_store

    store = open_store(store_url)
    flow = store.attrs.get("cutflow") or {}
    kept = {name: steps[-1][2] / steps[0][2] for name, steps in flow.items() if steps and steps[0][2] > 0}
    background = [flow[c["name"]] for c in store.attrs["channels"] if not c["is_signal"] and flow.get(c["name"])]
    kept["background"] = sum(steps[-1][2] for steps in background) / sum(steps[0][2] for steps in background)
    return kept


def _signal_groups(store) -> list[str]:
    """The store's signal groups that hold events."""
    return [g for g in store.group_names() if g.startswith("signal/") and store.group(g).n_events]


#: The end-to-end working point: this fraction of the simulated background, selection and score together.
END_TO_END = 1e-4


def _end_to_end(store_url: str, models: list[str], kept: dict[str, float]) -> dict[tuple[str, str], float]:
    """Per (model, signal) of the store's scores, the fraction of the signal's simulated events
    that the selection and a cut on the score keep together at :data:`END_TO_END` of the
    simulated background (``kept``: :func:`_efficiency`), so that selections can be compared.
    A selection that keeps less background than that is taken whole, below the working point."""
    from megaset.report.metrics import roc_curve, signal_efficiency
    from megaset.storage.store import open_store

    store = open_store(store_url)
    within = min(1.0, END_TO_END / kept["background"])

    def read(name: str) -> tuple[dict, np.ndarray]:
        group = store.group(name)
        cols = group.read_chunks(range(group.n_chunks), [f"score/{m}" for m in models] + ["weight", "channel"])
        return cols, store.yield_weight(name, cols["weight"], cols["channel"])

    test, w_test = read("test")
    found = {}
    for group in _signal_groups(store):
        signal = group.removeprefix("signal/")
        cols, w = read(group)
        if signal not in kept or not (w > 0).any():
            continue
        for model in models:
            fpr, tpr, _ = roc_curve(test[f"score/{model}"], cols[f"score/{model}"], w_test, w)
            found[model, signal] = kept[signal] * signal_efficiency(fpr, tpr, within)
    return found


#: The event columns of ``supervised+aux`` beside the RMM, those the store has.
AUX = ("met", "ht", "m_ll", "m_lll", "n_jets", "n_light_jets", "n_b_jets", "n_electrons", "n_muons", "n_photons")


def _inputs(store, name: str, aux: bool) -> tuple[np.ndarray, np.ndarray]:
    """Group ``name``'s rows (RMM, then the :data:`AUX` columns it has when ``aux``) and their
    expected-yield weights."""
    group = store.group(name)
    extra = [c for c in AUX if aux and group.has_column(c)]
    cols = group.read_chunks(range(group.n_chunks), [store.feature_column, "weight", "channel", *extra])
    n = len(cols["weight"])
    rows = np.column_stack([cols[store.feature_column].reshape(n, -1), *(cols[c] for c in extra)])
    return rows.astype(np.float32), store.yield_weight(name, cols["weight"], cols["channel"])


def _balanced(w_background: np.ndarray, w_signal: np.ndarray) -> np.ndarray:
    """Training weights: negative ones at zero, each class summing to half the events."""
    n = len(w_background) + len(w_signal)
    return np.concatenate([np.clip(w, 0, None) * (n / 2 / np.clip(w, 0, None).sum()) for w in (w_background, w_signal)])


def _scored(name: str, kind: str, model: str, scores: np.ndarray, weight: np.ndarray):
    """A report sample of ``scores`` as ``model``'s (its MET and mass left at zero: unused)."""
    from megaset.report.samples import Sample

    zero = np.zeros(len(weight))
    return Sample(name, kind, weight, zero, zero, {model: scores})


def _supervised(store_url: str, aux: bool, min_events: int, replicas: int) -> list[dict]:
    """The anomaly-table rows of a classifier trained on each signal (module docstring), as model
    ``supervised`` or ``supervised+aux``: the mean over the two halves of the signal's events."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from megaset.report.anomaly import anomaly_table
    from megaset.storage.store import open_store

    store = open_store(store_url)
    model = "supervised+aux" if aux else "supervised"
    x_train, w_train = _inputs(store, "train", aux)
    x_test, w_test = _inputs(store, "test", aux)
    rows = []
    for group in _signal_groups(store):
        x, w = _inputs(store, group, aux)
        if np.count_nonzero(w > 0) < 4:
            continue
        name = group.removeprefix("signal/")
        # The cells no event of either sample fills carry nothing and would only cost time.
        used = np.ptp(x_train, axis=0) + np.ptp(x, axis=0) > 0
        train, test, x = x_train[:, used], x_test[:, used], x[:, used]
        halves = []
        for half in (0, 1):
            held = np.arange(len(w)) % 2 == half
            clf = HistGradientBoostingClassifier(max_iter=500, early_stopping=True, random_state=half)
            clf.fit(np.vstack([train, x[~held]]), np.r_[np.zeros(len(w_train)), np.ones(np.count_nonzero(~held))],
                    sample_weight=_balanced(w_train, w[~held]))
            table, _ = anomaly_table(model, [_scored(name, "background", model, clf.decision_function(test), w_test)],
                                     [_scored(name, "signal", model, clf.decision_function(x[held]), w[held])],
                                     replicas=replicas, min_background_events=min_events)
            halves += table
        if len(halves) == 2:
            rows.append({key: (np.mean([h[key] for h in halves]) if isinstance(value, float) else
                               all(h[key] for h in halves) if isinstance(value, bool) else value)
                         for key, value in halves[0].items() if key != "best_si"})
    return rows


#: Reference densities of the background alone (module docstring): k-NN distance, Gaussian mixture.
DENSITIES = ("knn-density", "gmm-density")
#: Fewer train events than this are too few for 40 mixture components in 10 dimensions.
DENSITY_MIN_TRAIN = 2000


def _density(store_url: str, min_events: int, replicas: int) -> list[dict]:
    """The anomaly-table rows of two density estimates of the background, fitted on the train
    group, as models :data:`DENSITIES`: the distance to the 5th nearest train event and the
    negative log-likelihood of a 40-component Gaussian mixture, both in the first 10 whitened
    principal components of ``arcsinh(RMM)``.

    The train events are resampled by their yield weights first (negative ones at zero), so that
    both estimate the background as the selection's physics mixture has it, as the weighted
    training of the networks does. None below :data:`DENSITY_MIN_TRAIN` train events."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import NearestNeighbors
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from megaset.report.anomaly import anomaly_table
    from megaset.storage.store import open_store

    store = open_store(store_url)
    if store.group("train").n_events < DENSITY_MIN_TRAIN:
        return []
    x_train, w_train = _inputs(store, "train", False)
    x_test, w_test = _inputs(store, "test", False)
    signals = {g.removeprefix("signal/"): _inputs(store, g, False) for g in _signal_groups(store)}
    # arcsinh: logarithmic over the cells' orders of magnitude, odd and finite at the few
    # slightly negative cells.
    project = make_pipeline(FunctionTransformer(np.arcsinh), StandardScaler(),
                            PCA(10, whiten=True, random_state=0)).fit(x_train)
    p = np.clip(w_train, 0, None)
    bank = project.transform(x_train)[np.random.default_rng(0).choice(len(p), len(p), p=p / p.sum())]
    knn = NearestNeighbors(n_neighbors=5).fit(bank)
    gmm = GaussianMixture(40, covariance_type="full", reg_covar=1e-3, random_state=0).fit(bank)
    scorers = {"knn-density": lambda z: knn.kneighbors(z)[0][:, -1], "gmm-density": lambda z: -gmm.score_samples(z)}
    test = project.transform(x_test)
    rows = []
    for model, scorer in scorers.items():
        table, _ = anomaly_table(
            model, [_scored("background", "background", model, scorer(test), w_test)],
            [_scored(name, "signal", model, scorer(project.transform(x)), w) for name, (x, w) in signals.items()],
            replicas=replicas, min_background_events=min_events)
        rows += [{key: value for key, value in row.items() if key != "best_si"} for row in table]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_500_000, help="background events simulated")
    parser.add_argument("--signal-events", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--models", default="ae-svdd,ae-shallow,deep-svdd,ae-deep,vae-shallow,pca",
                        help="the first is the one the targets are judged on: the default search's combination")
    parser.add_argument("--signals", choices=("development", "held-out"), default="development",
                        help="the zoo's signals: those its choices were made on, or those held out to judge them")
    parser.add_argument("--supervised", action=argparse.BooleanOptionalAction, default=True,
                        help="the supervised reference rows (5-18 min per store and kind on 2 cores)")
    parser.add_argument("--workdir", default="zoo-work")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-background", type=int, default=2000,
                        help="test background events a selection should keep; fewer: rerun it on a larger background")
    parser.add_argument("--max-background-scale", type=int, default=20,
                        help="the most a selection's background is scaled up by (x --events)")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from megaset.run import run
    from megaset.storage.store import open_store

    workdir = Path(args.workdir)
    models = args.models.split(",")
    cfg = _config(workdir, args.events, args.signal_events, args.epochs, args.signals)
    rows = []
    with (LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster,
          Client(cluster) as client):
        run(cfg, client, log=print)
        searches = {"2lep": cfg, **{s: cfg.search(s) for s in SEARCHES}}
        for name, derived in list(searches.items()):
            scale = _background_scale(derived, args.min_background, args.max_background_scale)
            if scale > 1:
                searches[name] = _larger(derived, workdir, name, scale * args.events)
                print(f"{name}: fewer than {args.min_background} test background events: again on {scale} x "
                      f"{args.events:,} background events")
                run(searches[name], client, log=lambda line, name=name: print(f"[{name}, larger] {line}"))
        for name, derived in searches.items():
            report = _families(derived, client, models)
            report["auc_table"] += [row for aux in (False, True) if args.supervised for row in _supervised(
                derived.store.url, aux, derived.report.min_background_events, derived.report.auc_replicas)]
            densities = _density(derived.store.url, derived.report.min_background_events,
                                 derived.report.auc_replicas)
            if not densities:
                print(f"{name}: fewer than {DENSITY_MIN_TRAIN} train events: no reference densities")
            report["auc_table"] += densities
            kept = _efficiency(derived.store.url)
            found = _end_to_end(derived.store.url, models, kept)
            background = open_store(derived.store.url).group("test").n_events
            rows += [{"selection": name, "kept": kept.get(r["signal"]), "background_kept": kept["background"],
                      "test_background": background, "end_to_end": found.get((r["model"], r["signal"])), **r}
                     for r in report["auc_table"]]
            print(f"{name}: {background:,} test background events, {derived.simulate.events:,} simulated; "
                  f"the selection keeps {kept['background']:.2e} of the simulated background")
            for signal in report.get("signals_without_events") or []:
                print(f"{name}: signal {signal}: no selected event with a positive weight: not in the table")
    (workdir / "zoo.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"{'selection':<9} {'model':<14} {'signal':<22} {'kept':>6} {'AUC':>6} {'E100':>6} {'E1000':>7}")
    for r in rows:
        mark = "" if r["e1000_enough"] else "*"
        print(f"{r['selection']:<9} {r['model']:<14} {r['signal']:<22} {r['kept'] or 0:6.3f} {r['auc']:6.3f} "
              f"{r['e100']:6.3f} {r['e1000']:6.3f}{mark}")
    print("* E1000 on too few background MC events")
    # The targets on the default, then on the reference rows (module docstring); on the held-out
    # zoo, its signals alone (the thesis' charginos, simulated in every run, are development ones).
    from megaset.pipeline._processes import HELD_OUT

    judged = [r for r in rows if args.signals == "development" or r["signal"] in HELD_OUT]
    for model in (models[0], *(("supervised", "supervised+aux") if args.supervised else ()), *DENSITIES):
        meant = [r for r in judged if r["model"] == model and r["selection"] == MEANT_FOR.get(r["signal"], "2lep")]
        if not meant:
            continue
        print(f"targets ({model}, each signal under its selection): median E100 "
              f"{np.median([r['e100'] for r in meant]):.3f} (>= 0.80), AUC >= 0.95 for "
              f"{sum(r['auc'] >= 0.95 for r in meant)} of {len(meant)}")
    # Selections compared at one end-to-end working point, on the default.
    print(f"{models[0]}: fraction of each signal found at {END_TO_END:g} of the simulated background, per selection")
    for signal in dict.fromkeys(r["signal"] for r in judged):
        found = {r["selection"]: r["end_to_end"] for r in judged if r["model"] == models[0] and r["signal"] == signal}
        print(f"  {signal:<22} " + "  ".join(f"{name} {value:.3f}" for name, value in found.items()))


if __name__ == "__main__":
    main()
