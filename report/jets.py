"""The report of a jet store: Farina et al.'s tables and figures, grapa's pairwise matrices.

For every scored model, the background being the ``test`` group (QCD unless configured):

* Table I: E10 and E100 (signal efficiency at 90 % and 99 % background rejection) and the AUC
  per signal, next to Farina et al.'s published values for tops and 400 GeV gluinos
  (``roc.png`` holds the ROC curves);
* the error distributions of every sample (``errors.png``);
* the pairwise matrix of the scores: the AUC of each sample as the anomaly against each other
  sample, drawn as grapa draws it (blue: a perfect separation, white: none, red: the reverse),
  with the number of the 56 off-diagonal cells above 0.6 (``separation_<model>.png``); and, when
  the pairwise study ran (``pairwise.json`` in the report folder), the same with a model trained
  on each sample in turn (``pairwise_<model>.png``);
* mass sculpting (Farina et al. fig. 10): the background jet-mass distribution before and after
  cuts on the score keeping 10 % and 1 % of it, the Jensen-Shannon divergence of each from the
  uncut one, and the mean jet mass in bins of the score (``mass_<model>.png``,
  ``mass_profile.png``); for every model also trained with the adversary (``<model>-adv``),
  the two side by side: the divergences and the mean AUC over the signals without and with
  decorrelation (what the flatter mass costs in sensitivity);
* latent-space clustering for models whose latent representation was exported: k-means
  (scikit-learn) with one cluster per sample on the test background and the signals, its
  adjusted Rand index against the true samples, and a 2-D projection (``latent_<model>.png``);
* the contamination study, when it ran (``contamination.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megaset.config import Config
from megaset.report import metrics, plots
from megaset.report.markdown import skipped_files, skipped_section, table, without_events_notes
from megaset.report.samples import Sample
from megaset.report.style import Style

__all__ = ["jet_report", "FARINA_TABLE_I", "farina_published", "separated_cells", "mass_sculpting", "decorrelation",
           "PAIRWISE_FILE"]

#: Farina et al., Table I: E10 / E100 for top and 400 GeV gluino jets (CNN and dense: k = 6,
#: mean of five trainings on 100 k QCD jets).
FARINA_TABLE_I = {
    "pca": {"top": (0.51, 0.04), "gluino": (0.98, 0.36)},
    "jet-dense": {"top": (0.66, 0.13), "gluino": (0.90, 0.39)},
    "jet-cnn": {"top": (0.70, 0.19), "gluino": (0.77, 0.23)},
}


def farina_published(model: str, signal: str) -> tuple[float, float] | None:
    """Farina et al.'s E10 / E100 for the row of ``model`` and ``signal``, or None where they
    published none. Their Table I has no decorrelated models: a ``<model>-adv`` row gets none,
    not the value of the plain model, which would read as the figure to compare it with.

    >>> farina_published("jet-cnn", "top"), farina_published("jet-cnn-adv", "top")
    ((0.7, 0.19), None)
    """
    return FARINA_TABLE_I.get(model, {}).get(signal)


#: Where the pairwise study leaves its matrices, in the report folder.
PAIRWISE_FILE = "pairwise.json"
_SEPARATED = 0.6
_TINY = 1e-12


def separated_cells(matrix: np.ndarray, threshold: float = _SEPARATED) -> int:
    """Off-diagonal cells whose AUC exceeds ``threshold`` (grapa's count of separated pairs).

    >>> separated_cells(np.array([[0.5, 0.9], [0.1, 0.5]]))
    1
    """
    off = ~np.eye(len(matrix), dtype=bool)
    return int(np.count_nonzero(np.nan_to_num(matrix[off], nan=0.0) > threshold))


def _js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits) of two histograms."""
    p, q = p / max(p.sum(), _TINY), q / max(q.sum(), _TINY)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        keep = a > 0
        return float(np.sum(a[keep] * np.log2(a[keep] / m[keep])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def mass_sculpting(scores: np.ndarray, mass: np.ndarray, weight: np.ndarray, edges: np.ndarray,
                   keep: Sequence[float] = (0.1, 0.01)) -> dict[str, Any]:
    """The background mass histogram before and after score cuts keeping the fractions ``keep``
    of the weight, and each one's Jensen-Shannon divergence from the uncut one.

    >>> out = mass_sculpting(np.arange(100.0), np.arange(100.0), np.ones(100), np.linspace(0, 100, 11), keep=[0.1])
    >>> out["js"]["0.1"] > 0.5
    True
    """
    before = np.histogram(mass, bins=edges, weights=weight)[0]
    out = {"edges": edges.tolist(), "before": before.tolist(), "after": {}, "js": {}, "cuts": {}}
    for f in keep:
        cut = metrics.weighted_quantile(scores, weight, 1.0 - f)
        inside = scores >= cut
        after = np.histogram(mass[inside], bins=edges, weights=weight[inside])[0]
        out["after"][f"{f:g}"], out["cuts"][f"{f:g}"] = after.tolist(), float(cut)
        out["js"][f"{f:g}"] = _js(before.astype(float), after.astype(float))
    return out


def decorrelation(sculpting: dict[str, dict[str, Any]], auc_table: Sequence[dict[str, Any]],
                  suffix: str = "-adv") -> dict[str, dict[str, Any]]:
    """Every model scored with and without the adversary (``<model>`` and ``<model>-adv``):
    the Jensen-Shannon divergences of :func:`mass_sculpting` and the mean AUC over the signals,
    without (``js``, ``auc``) and with (``js_adv``, ``auc_adv``) decorrelation.

    >>> sc = {"m": {"js": {"0.1": 0.3}}, "m-adv": {"js": {"0.1": 0.1}}}
    >>> rows = [{"model": "m", "auc": 0.8}, {"model": "m-adv", "auc": 0.7}]
    >>> decorrelation(sc, rows)["m"]["js_adv"], decorrelation(sc, rows)["m"]["auc_adv"]
    ({'0.1': 0.1}, 0.7)
    """
    def mean_auc(model: str) -> float | None:
        values = [r["auc"] for r in auc_table if r["model"] == model]
        return float(np.mean(values)) if values else None

    return {m: {"js": sculpting[m]["js"], "js_adv": sculpting[m + suffix]["js"], "auc": mean_auc(m),
                "auc_adv": mean_auc(m + suffix)}
            for m in sculpting if not m.endswith(suffix) and m + suffix in sculpting}


def _pooled(samples: Sequence[Sample], model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    background = [s for s in samples if s.kind == "background"]
    return (np.concatenate([s.scores[model] for s in background]), np.concatenate([s.mass for s in background]),
            np.concatenate([s.weight for s in background]))


def _latent(store: Any, model: str, samples: Sequence[Sample], out: Path, max_per_sample: int = 2000,
            seed: int = 0) -> dict[str, Any] | None:
    """k-means on the exported latent space of ``model``; None when it exported none."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    column = f"latent/{model}"
    parts, labels = [], []
    rng = np.random.default_rng(seed)
    for name in store.group_names():
        if name != "test" and not name.startswith("signal/"):
            continue
        group = store.group(name)
        if not group.has_column(column):
            return None
        values = np.concatenate([v[column] for _, v in group.iter_chunks((column,))]) if group.n_chunks else None
        if values is None or not len(values):
            continue
        values = values[rng.permutation(len(values))[:max_per_sample]]
        parts.append(values)
        labels += [name.removeprefix("signal/").replace("test", "background")] * len(values)
    x = np.concatenate(parts).astype(np.float64)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    names = list(dict.fromkeys(labels))
    truth = np.array([names.index(n) for n in labels])
    # One thread: at this size (up to 2000 jets per sample) the OpenMP pool costs more than the
    # clustering, and on two busy cores it took ten times as long (1.4 s against 0.15 s).
    with threadpool_limits(1):
        clusters = KMeans(n_clusters=len(names), n_init=4, random_state=seed).fit_predict(x)
    xy = PCA(n_components=2, random_state=seed).fit_transform(x) if x.shape[1] > 2 else x
    path = _scatter(out / f"latent_{model}.png", xy, truth, clusters, names, title=f"latent space of {model}")
    return {"model": model, "k": len(names), "adjusted_rand_index": float(adjusted_rand_score(truth, clusters)),
            "plot": str(path)}


@plots._styled
def _scatter(fig, xy: np.ndarray, truth: np.ndarray, clusters: np.ndarray, names: Sequence[str], *, title: str,
             style: Style) -> None:
    fig.set_size_inches(12.0, 5.0)
    for ax, labels, what in zip(fig.subplots(1, 2), (truth, clusters), ("true sample", "k-means cluster"),
                                strict=True):
        for k in np.unique(labels):
            sel = labels == k
            # Rasterised points: a PDF of thousands of vector markers takes seconds to write and to open.
            ax.scatter(xy[sel, 0], xy[sel, 1], s=3, alpha=0.5, rasterized=True,
                       label=names[k] if what == "true sample" else f"cluster {k}")
        ax.set(xlabel="latent PC 1", ylabel="latent PC 2")
        ax.legend(fontsize=7, markerscale=3, title=f"{title}: {what}", title_fontsize=8)
        style.label_axes(ax)


@plots._styled
def _mass_panels(fig, sections: dict[str, dict[str, Any]], *, style: Style) -> None:
    axes = plots._grid(fig, len(sections), ncols=min(len(sections), 3))
    for ax, (model, sc) in zip(axes, sections.items(), strict=True):
        edges = np.asarray(sc["edges"])
        centres = 0.5 * (edges[1:] + edges[:-1])
        for label, hist in [("no cut", sc["before"]), *((f"keep {k} (JS {sc['js'][k]:.3f})", h)
                                                       for k, h in sc["after"].items())]:
            hist = np.asarray(hist, dtype=float)
            ax.step(centres, hist / max(hist.sum(), _TINY), where="mid", label=label)
        ax.set(xlabel="jet mass [GeV]", ylabel="fraction")
        ax.legend(fontsize=8, title=f"background jet mass, cuts on {model}", title_fontsize=8)
        style.label_axes(ax)


def _farina_rows(rows: Sequence[dict]) -> list[list[Any]]:
    out = []
    for r in rows:
        if r["signal"] not in ("top", "gluino"):
            continue
        published = farina_published(r["model"], r["signal"])
        out.append([r["model"], r["signal"], r["e10"], r["e100"], r["auc"],
                    f"{published[0]:.2f} / {published[1]:.2f}" if published else "-"])
    return out


def _decorrelated_note(models: Sequence[str]) -> list[str]:
    adv = [m for m in models if m.endswith("-adv")]
    if not adv:
        return []
    return [f"Farina et al.'s Table I holds no mass-decorrelated model: {', '.join(adv)} (trained with the "
            "adversary) have no published value beside them.", ""]


def jet_report(cfg: Config, store: Any, samples: list[Sample], models: Sequence[str], out: Path) -> dict[str, Any]:
    """Every table and figure of a jet store (see the module docstring); writes ``report.md``
    and ``report.json`` into ``out`` and returns what the JSON holds."""
    from megaset.report.anomaly import anomaly_table, signals_without_events

    rc = cfg.report
    background = [s for s in samples if s.kind == "background"]
    signals = [s for s in samples if s.kind == "signal"]
    names = [s.name for s in samples]
    result: dict[str, Any] = {"store": store.url, "kind": "jets", "models": list(models), "samples": names,
                              "auc_table": [], "separation": {}, "pairwise": {}, "sculpting": {}, "latent": {},
                              "plots": {}, "skipped": skipped_files(store.attrs),
                              "signals_without_events": signals_without_events(signals)}
    rocs: dict[str, dict] = {}
    panels, profiles = [], {}
    all_mass = np.concatenate([s.mass for s in samples])
    mass_edges = np.linspace(0.0, float(np.quantile(all_mass, 0.995)) if len(all_mass) else 1.0, rc.bins + 1)
    for model in models:
        rows, model_rocs = (anomaly_table(model, background, signals, replicas=rc.auc_replicas,
                                          min_background_events=rc.min_background_events)
                            if signals else ([], {}))
        result["auc_table"] += rows
        for name, curve in model_rocs.items():
            rocs.setdefault(name, {})[model] = curve
        x = {s.name: np.log10(np.clip(s.scores[model], _TINY, None)) for s in samples}
        filled = [v for v in x.values() if len(v)]  # a signal the selection kept no jet of has no range
        edges = np.linspace(min(v.min() for v in filled), max(v.max() for v in filled) + 1e-9, rc.bins + 1)
        panels.append(plots.Panel(model, f"log10 score ({model})", edges,
                                  [plots.Component(s.name, x[s.name], s.weight) for s in background],
                                  [plots.Component(s.name, x[s.name], s.weight) for s in signals]))
        matrix = metrics.separation_matrix([s.scores[model] for s in samples], [s.weight for s in samples])
        path = plots.heatmap(out / f"separation_{model}.png", names, matrix, title=f"pairwise AUC, trained on "
                             f"{background[0].name if background else 'background'} ({model})")
        result["separation"][model] = {"auc": matrix.tolist(), "separated": separated_cells(matrix), "plot": str(path)}
        scores, mass, weight = _pooled(samples, model)
        result["sculpting"][model] = mass_sculpting(scores, mass, weight, mass_edges)
        q = np.quantile(scores, np.linspace(0, 1, 11))
        profiles[model] = metrics.binned_mean(np.searchsorted(q[1:-1], scores), mass, weight, np.arange(-0.5, 10.5))
        latent = _latent(store, model, samples, out)
        if latent is not None:
            result["latent"][model] = latent
    result["decorrelation"] = decorrelation(result["sculpting"], result["auc_table"])
    result["plots"]["errors"] = str(plots.stacked_panels(out / "errors.png", panels))
    if rocs:
        result["plots"]["roc"] = str(plots.roc_curves(out / "roc.png", rocs))
    result["plots"]["mass"] = str(_mass_panels(out / "mass_sculpting.png", result["sculpting"]))
    result["plots"]["mass_profile"] = str(plots.curves(
        out / "mass_profile.png", np.arange(10) * 10 + 5, profiles, xlabel="background score percentile",
        ylabel="mean jet mass [GeV]", title="jet mass against the score (Farina et al. fig. 10)"))
    pairwise = out / PAIRWISE_FILE
    if pairwise.is_file():
        study = json.loads(pairwise.read_text())
        for model, matrix in study["auc"].items():
            m = np.array(matrix, dtype=float)
            path = plots.heatmap(out / f"pairwise_{model}.png", study["samples"], m,
                                 title=f"pairwise AUC, trained on each sample ({model})")
            result["pairwise"][model] = {"auc": matrix, "separated": separated_cells(m), "plot": str(path)}
    contamination = out / "contamination.json"
    if contamination.is_file():
        result["contamination"] = json.loads(contamination.read_text())
    result["json"] = str(out / "report.json")
    result["markdown"] = str(_markdown(out / "report.md", result))
    return result


def _markdown(path: Path, r: dict[str, Any]) -> Path:
    n_cells = len(r["samples"]) * (len(r["samples"]) - 1)
    lines = [f"# Jet anomaly detection: {r['store']}", "",
             "## Table I analogue (E10 / E100: signal efficiency at 90 % / 99 % background rejection)", "",
             table(["model", "signal", "E10", "E100", "AUC", "Farina et al. E10 / E100"], _farina_rows(r["auc_table"])),
             "", *_decorrelated_note(r["models"]), "## Every signal", "",
             table(["signal", "model", "AUC", "E10", "E100"],
                   [[x["signal"], x["model"], x["auc"], x["e10"], x["e100"]] for x in r["auc_table"]]),
             "", *without_events_notes(r["signals_without_events"]), *([""] if r["signals_without_events"] else []),
             f"## Pairwise separation (cells of {n_cells} with AUC > {_SEPARATED})", "",
             table(["model", "scored, trained on the background", "trained on each sample"],
                   [[m, r["separation"][m]["separated"], r["pairwise"].get(m, {}).get("separated", "-")]
                    for m in r["models"]] + [[m, "-", v["separated"]] for m, v in r["pairwise"].items()
                                             if m not in r["models"]]),
             "", "## Mass sculpting (Jensen-Shannon divergence of the background jet mass after the cut)", "",
             table(["model", *(f"keep {k}" for k in next(iter(r["sculpting"].values()), {"js": {}})["js"])],
                   [[m, *s["js"].values()] for m, s in r["sculpting"].items()]),
             ""]
    if r.get("decorrelation"):
        keeps = list(next(iter(r["decorrelation"].values()))["js"])
        lines += ["## Decorrelation (the adversary on the jet mass): sculpting and sensitivity", "",
                  table(["model", *(f"JS keep {k}: without / with" for k in keeps),
                         "mean AUC over the signals: without / with"],
                        [[m, *(f"{d['js'][k]:.3f} / {d['js_adv'][k]:.3f}" for k in keeps),
                          f"{d['auc']:.3f} / {d['auc_adv']:.3f}" if d["auc"] is not None and d["auc_adv"] is not None
                          else "-"] for m, d in r["decorrelation"].items()]), ""]
    if r["latent"]:
        lines += ["## Latent space (k-means, one cluster per sample)", "",
                  table(["model", "k", "adjusted Rand index"],
                        [[m, v["k"], v["adjusted_rand_index"]] for m, v in r["latent"].items()]), ""]
    if "contamination" in r:
        c = r["contamination"]
        lines += [f"## Contamination with {c['signal']} ({c['model']})", "",
                  table(["fraction", "AUC", "E10", "E100"], [[x["fraction"], x["auc"], x["e10"], x["e100"]]
                                                               for x in c["rows"]]), ""]
    lines += skipped_section(r["skipped"])
    lines += ["## Figures", ""]
    figures = [*r["plots"].values(), *(v["plot"] for v in r["separation"].values()),
               *(v["plot"] for v in r["pairwise"].values()), *(v["plot"] for v in r["latent"].values())]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in figures]
    path.write_text("\n".join(lines) + "\n")
    return path
