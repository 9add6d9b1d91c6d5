"""``report``: plots, tables and significances of every scored model of a store.

For each model, on the axis ``report.axis`` (log10 of the error by default, as the thesis
plots it):

* the error distributions of the test group stacked by channel (expected yields, with the MC
  statistical band of their sum), each signal overlaid, data as points, every model side by
  side (``errors.png``);
* signal regions (thesis sec. 3.7): from the weighted median m of the *background* error on
  that axis, region i keeps the events with axis value >= m + i * step * |m|, i = 1 .. 3
  (step 1/5); MET and the mass variable (m_ll, or m_lll for a 3-lepton store) in each region
  (``regions_<model>.png``); in each region the significance of every signal against a
  threshold on MET: Z = s / sqrt(b), and the Asimov Z with the background's uncertainty
  sigma_b (its MC statistics sqrt(sum w^2), and ``report.background_systematic``), over the
  thresholds whose background rests on at least ``report.min_background_events`` effective MC
  events, N_eff = (sum w)^2 / sum w^2 (``significance_<model>.png``);
* ROC curves, AUC with its bootstrap uncertainty, E10, E100 and E1000 (signal efficiency at
  10 %, 1 % and 0.1 % background efficiency) and the best significance improvement
  eps_S / sqrt(eps_B), each with its uncertainty from the background's MC statistics and marked
  where its cut keeps fewer than ``report.min_background_events`` background MC events, per
  signal and model, Farina et al.'s Table I (``roc.png``);
* the mean mass variable in bins of the error (decorrelation check, Farina et al. fig. 10,
  ``decorrelation_<model>.png``);
* the pairwise separation matrix, the AUC of every sample as the anomaly against every other as
  the background (``separation_<model>.png``).

Every yield comes with its MC statistical uncertainty sqrt(sum w^2) and, per sample, the
effective number of MC events (sum w)^2 / sum w^2. Every figure is a PNG with a PDF beside it,
in the colours of :mod:`.style`. ``report.json`` holds every number; ``report.md`` the tables,
the figures, the cut flow of every channel, the training of each model (when given), the
configuration (``config.yaml`` beside it, with its digest) and the studies written into
``<output>/studies/`` (:func:`megaset.report.markdown.add_study`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from megaset.config import Config, ReportConfig
from megaset.errors import StoreError, StoreKeyError
from megaset.progress import Progress, steps
from megaset.report import metrics, plots
from megaset.report.anomaly import anomaly_table, signals_without_events
from megaset.report.markdown import finite, skipped_files, studies, write_markdown
from megaset.report.samples import BACKGROUND_GROUP, Sample, load_samples, mass_variable
from megaset.report.style import DATA_COLOUR, Style

__all__ = ["report", "error_axis", "axis_label", "cut_label"]

_TINY = 1e-12  # errors are clipped here before the logarithm (a perfect reconstruction is 0)


def error_axis(errors: np.ndarray, axis: str) -> np.ndarray:
    """The reconstruction error on the report's axis: ``log10`` (clipped at 1e-12) or ``linear``."""
    errors = np.asarray(errors, dtype=np.float64)
    return np.log10(np.maximum(errors, _TINY)) if axis == "log10" else errors


def axis_label(model: str, axis: str, combined_by: Mapping[str, str] | None = None) -> str:
    """The label of the score axis of ``model``: what its score measures
    (:func:`megaset.training.registry.score_quantity`; ``combined_by``: the combinations' methods).

    >>> axis_label("deep-svdd", "log10")
    'log10 squared distance to the centre (deep-svdd)'
    """
    from megaset.training.registry import score_quantity

    quantity = score_quantity(model, combined_by)
    return f"log10 {quantity} ({model})" if axis == "log10" else f"{quantity} ({model})"


def cut_label(model: str, axis: str, cut: float) -> str:
    """A cut on the error axis, in words that say which axis.

    >>> cut_label("ae-deep", "log10", -2.5)
    'log10 error (ae-deep) >= -2.5'
    """
    return f"{'log10 error' if axis == 'log10' else 'error'} ({model}) >= {cut:.3g}"


def _edges(values: Sequence[np.ndarray], bins: int) -> np.ndarray:
    x = np.concatenate([v for v in values if len(v)])
    lo, hi = np.quantile(x, [0.001, 0.999])
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return np.linspace(lo - pad, hi + pad, bins + 1)


def _components(samples: Sequence[Sample], values: dict[str, np.ndarray], mask: dict[str, np.ndarray] | None = None):
    out = []
    for s in samples:
        keep = mask[s.name] if mask is not None else slice(None)
        out.append(plots.Component(s.name, values[s.name][keep], s.weight[keep]))
    return out


def _scan(values: np.ndarray, weights: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Yield, sum of w^2, MC events and their effective number at or above every threshold."""
    scan = {"yield": metrics.threshold_scan(values, weights, thresholds),
            "sumw2": metrics.threshold_scan(values, weights * weights, thresholds),
            "events": metrics.threshold_scan(values, np.ones_like(weights), thresholds)}
    return {**scan, "n_eff": metrics.effective_events(scan["yield"], scan["sumw2"])}


def _regions(model: str, rc: ReportConfig, x: dict[str, np.ndarray], background: Sequence[Sample],
             signals: Sequence[Sample], thresholds: np.ndarray) -> tuple[dict, list]:
    """Signal-region cuts, yields with their MC uncertainty, significances with the background's
    uncertainty, and the MET scan in each region (cuts whose background rests on too few effective
    MC events refused)."""
    xb = np.concatenate([x[s.name] for s in background])
    wb = np.concatenate([s.weight for s in background])
    median = metrics.weighted_median(xb, wb)
    cuts = metrics.region_cuts(median, rc.regions, rc.region_step)
    regions, scans = [], []
    for i, cut in enumerate(cuts, 1):
        inside = {s.name: x[s.name] >= cut for s in (*background, *signals)}
        met_b = np.concatenate([s.met[inside[s.name]] for s in background])
        w_b = np.concatenate([s.weight[inside[s.name]] for s in background])
        b = metrics.yield_summary(w_b)
        sigma_b = float(metrics.background_uncertainty(b["error"] ** 2, b["yield"], rc.background_systematic))
        b_scan = _scan(met_b, w_b, thresholds)
        sigma_scan = metrics.background_uncertainty(b_scan["sumw2"], b_scan["yield"], rc.background_systematic)
        refused = np.flatnonzero(b_scan["n_eff"] < rc.min_background_events)
        refused_from = float(thresholds[refused[0]]) if len(refused) else None
        entry: dict[str, Any] = {
            "region": i, "cut": cut, "background": b["yield"], "background_error": b["error"],
            "background_events": b["events"], "background_n_eff": b["n_eff"], "sigma_b": sigma_b,
            "few_mc_events": b["n_eff"] < rc.min_background_events, "met_refused_from": refused_from,
            "signals": {},
        }
        curves = {}
        for sig in signals:
            keep = inside[sig.name]
            s = metrics.yield_summary(sig.weight[keep])
            s_scan = metrics.threshold_scan(sig.met[keep], sig.weight[keep], thresholds)
            z = metrics.significance(s_scan, b_scan["yield"])
            za = metrics.asimov_significance(s_scan, b_scan["yield"], sigma_scan)
            best = metrics.best_cut(za, b_scan["n_eff"], rc.min_background_events)
            entry["signals"][sig.name] = {
                "yield": s["yield"], "yield_error": s["error"],
                "z": float(metrics.significance(s["yield"], b["yield"])),
                "z_asimov": float(metrics.asimov_significance(s["yield"], b["yield"], sigma_b)),
                "best_met_cut": None if best is None else {
                    "met_min": float(thresholds[best]), "signal": float(s_scan[best]),
                    "background": float(b_scan["yield"][best]),
                    "background_error": float(np.sqrt(b_scan["sumw2"][best])),
                    "background_events": int(b_scan["events"][best]),
                    "background_n_eff": float(b_scan["n_eff"][best]), "sigma_b": float(sigma_scan[best]),
                    "z": float(z[best]), "z_asimov": float(za[best])},
            }
            allowed = b_scan["n_eff"] >= rc.min_background_events
            curves[sig.name] = (np.where(allowed, z, np.nan), np.where(allowed, za, np.nan))
        regions.append(entry)
        scans.append((f"SR{i}: {cut_label(model, rc.axis, cut)}", curves, refused_from))
    return {"median": median, "cuts": cuts, "regions": regions}, scans


def _region_panels(model: str, rc: ReportConfig, x: dict[str, np.ndarray], regions: Sequence[dict], mass: str,
                   background: Sequence[Sample], signals: Sequence[Sample]) -> list[plots.Panel]:
    """MET (first row) and the mass variable (second row) inside each signal region."""
    panels = []
    for variable, top, xlabel in (("met", rc.met_max, "MET [GeV]"), ("mass", rc.mass_max, f"{mass} [GeV]")):
        edges = np.linspace(0.0, top, rc.bins + 1)
        values = {s.name: getattr(s, variable) for s in (*background, *signals)}
        for entry in regions:
            inside = {name: x[name] >= entry["cut"] for name in values}
            panels.append(plots.Panel(f"SR{entry['region']}: {cut_label(model, rc.axis, entry['cut'])}", xlabel, edges,
                                      _components(background, values, inside), _components(signals, values, inside)))
    return panels


def _decorrelation(x: dict[str, np.ndarray], edges: np.ndarray, background: Sequence[Sample],
                   signals: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Mean of the mass variable in bins of the error: the whole background, then each signal."""
    profiles = {"background": metrics.binned_mean(
        np.concatenate([x[s.name] for s in background]), np.concatenate([s.mass for s in background]),
        np.concatenate([s.weight for s in background]), edges)}
    return profiles | {s.name: metrics.binned_mean(x[s.name], s.mass, s.weight, edges) for s in signals}


def _model_section(model: str, rc: ReportConfig, samples: list[Sample], mass: str, out: Path,
                   style: Style, combined_by: Mapping[str, str] | None = None) -> tuple[dict, plots.Panel]:
    """Regions, significances, decorrelation and separation of one model, with their figures;
    and the model's panel of the score distributions (``combined_by``: the combinations' methods)."""
    # Smallest yield at the bottom of the stacks, in every panel.
    background = sorted((s for s in samples if s.kind == "background"), key=lambda s: float(s.weight.sum()))
    signals = [s for s in samples if s.kind == "signal"]
    data = next((s for s in samples if s.kind == "data"), None)
    x = {s.name: error_axis(s.scores[model], rc.axis) for s in samples}
    label = axis_label(model, rc.axis, combined_by)
    edges = _edges(list(x.values()), rc.bins)
    thresholds = np.linspace(0.0, rc.met_max, rc.bins + 1)
    regions, scans = _regions(model, rc, x, background, signals, thresholds)
    error_panel = plots.Panel(
        model, label, edges, _components(background, x), _components(signals, x),
        _components([data], x)[0] if data is not None else None,
        [(c, f"SR{i}") for i, c in enumerate(regions["cuts"], 1)])

    region_panels = _region_panels(model, rc, x, regions["regions"], mass, background, signals)
    files = {"regions": plots.stacked_panels(out / f"regions_{model}.png", region_panels,
                                             ncols=len(regions["regions"]), style=style)}
    if signals:
        files["significance"] = plots.significance_curves(
            out / f"significance_{model}.png", thresholds, scans, xlabel="MET threshold [GeV]",
            min_events=rc.min_background_events, style=style)
    profiles = _decorrelation(x, edges, background, signals)
    centres = 0.5 * (edges[1:] + edges[:-1])
    files["decorrelation"] = plots.curves(out / f"decorrelation_{model}.png", centres, profiles, xlabel=label,
                                          ylabel=f"mean {mass} [GeV]", title=f"{mass} against the error ({model})",
                                          style=style)
    names = [s.name for s in samples]
    matrix = metrics.separation_matrix([s.scores[model] for s in samples], [s.weight for s in samples])
    files["separation"] = plots.heatmap(out / f"separation_{model}.png", names, matrix,
                                        title=f"pairwise separation, {model}", style=style)
    section = {
        "model": model, **regions,
        "decorrelation": {"centres": centres.tolist(), "mean": {k: v.tolist() for k, v in profiles.items()}},
        "separation": {"samples": names, "auc": matrix.tolist()},
        "plots": {k: str(v) for k, v in files.items()},
    }
    return section, error_panel


def _cutflow(store_attrs: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per channel, every cut with the MC events and the expected events after it."""
    return {name: [{"cut": cut, "events": int(raw), "yield": float(weighted)} for cut, raw, weighted in steps]
            for name, steps in (store_attrs.get("cutflow") or {}).items()}


def _write_config(cfg: Config, out: Path) -> dict[str, str]:
    """``config.yaml``: the resolved configuration; its SHA-256 digest."""
    text = yaml.safe_dump(cfg.persisted(), sort_keys=False)
    path = out / "config.yaml"
    path.write_text(text)
    return {"file": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _headline_first(models: Sequence[str], combinations: Mapping[str, Any]) -> list[str]:
    """``models`` with the combinations of ``scoring.combine`` among them first, in the order
    configured: the headline scores, then the single families.

    >>> _headline_first(["ae-shallow", "ae-svdd", "deep-svdd"], {"ae-svdd": None})
    ['ae-svdd', 'ae-shallow', 'deep-svdd']
    """
    return [m for m in combinations if m in models] + [m for m in models if m not in combinations]


def report(cfg: Config, *, out_dir: str | Path | None = None, models: Sequence[str] | None = None,
           training: Mapping[str, Mapping[str, Any]] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Write the report of the scored store ``cfg.store.url`` into ``out_dir``.

    Parameters
    ----------
    cfg
        The configuration; ``report`` sets binning, axis, regions, ranges, the statistical
        treatment and the figure label.
    out_dir
        Folder of the figures, ``report.md``, ``report.json`` and ``config.yaml``; default
        ``report.output``.
    models
        Scored models to report; default ``report.models``, else every model scored in ``test``.
    training
        Per model, the summary of its training (``epochs, best_epoch, best_val_loss,
        stopped_early, loss_curve, history``), shown in the training section.
    progress
        Called as ``progress(done, total)`` in steps: the samples read, each model's section,
        the summary figures and tables (jet stores: the samples read, the jet report).

    Returns
    -------
    dict
        What ``report.json`` holds: ``store, models`` (the combinations of ``scoring.combine``
        first unless ``models`` or ``report.models`` says otherwise), ``headline`` (the reported
        combinations, each with the models it combines), ``axis, mass_variable``, ``yields`` (per
        sample ``events, yield, error, n_eff``), ``cutflow``, ``skipped`` (the input files the
        ingest skipped, with their reasons), ``auc_table`` (rows of signal,
        model, auc, auc_error and the working points e10, e100, e1000 with their uncertainties,
        significance improvements and background MC events, best_si; see
        :func:`~megaset.report.anomaly.anomaly_table`), ``signals_without_events`` (the signals
        the selection kept no event of positive weight of: in no row of ``auc_table`` nor in the
        ROC figure), ``sections`` per model (median, cuts, regions with
        yields, uncertainties and significances, decorrelation profiles, separation matrix, plot
        paths), ``training``, ``config`` (file and digest), ``colours``, ``statistics`` (the
        settings of the statistical treatment), ``studies``, ``plots`` and the paths of
        ``markdown`` and ``json``.

    Raises
    ------
    StoreKeyError
        A requested model is not scored (the scored ones are listed).
    StoreError
        No model is scored, or a scoring was interrupted.
    """
    from megaset.storage.store import open_store

    rc = cfg.report
    store = open_store(cfg.store.url)
    available = store.group(BACKGROUND_GROUP).scored_models()
    wanted = list(models or rc.models or _headline_first(available, cfg.scoring.combine))
    if not wanted:
        msg = f"store {store.url!r} has no scores to report: run `megaset score` first"
        raise StoreError(msg)
    unknown = [m for m in wanted if m not in available]
    if unknown:
        msg = (
            f"model(s) {', '.join(unknown)} are not scored in {store.url!r}; scored: "
            f"{', '.join(available) or 'none'} (run `megaset score` for the others, or set report.models)"
        )
        raise StoreKeyError(msg)
    step = steps(progress, 2 if store.kind == "jets" else len(wanted) + 2)
    mass = mass_variable(store)
    samples = load_samples(store, wanted, mass)
    step()
    out = Path(out_dir if out_dir is not None else rc.output)
    out.mkdir(parents=True, exist_ok=True)
    if store.kind == "jets":
        from megaset.report.jets import jet_report

        result = jet_report(cfg, store, samples, wanted, out)
        Path(result["json"]).write_text(json.dumps(finite(result), indent=1, allow_nan=False))
        step()
        return result
    style = Style.from_config(cfg, store.channels)
    background = [s for s in samples if s.kind == "background"]
    signals = [s for s in samples if s.kind == "signal"]

    result: dict[str, Any] = {
        "store": store.url, "models": wanted, "axis": rc.axis, "mass_variable": mass,
        "yields": [{"sample": s.name, "kind": s.kind, **metrics.yield_summary(s.weight)} for s in samples],
        "cutflow": _cutflow(store.attrs), "skipped": skipped_files(store.attrs),
        "statistics": {"min_background_events": rc.min_background_events,
                       "background_systematic": rc.background_systematic, "auc_replicas": rc.auc_replicas},
        "headline": {m: list(cfg.scoring.combine[m].models) for m in wanted if m in cfg.scoring.combine},
        "combined_by": {m: cfg.scoring.combine[m].method for m in wanted if m in cfg.scoring.combine},
        "auc_table": [], "signals_without_events": signals_without_events(signals), "sections": {}, "plots": {},
        "training": {m: dict(training[m]) for m in wanted if training and m in training},
        "config": _write_config(cfg, out),
        "colours": {s.name: DATA_COLOUR if s.kind == "data" else style.colour(s.name) for s in samples},
    }
    error_panels, rocs = [], {}
    for model in wanted:
        section, panel = _model_section(model, rc, samples, mass, out, style, result["combined_by"])
        rows, model_rocs = (anomaly_table(model, background, signals, replicas=rc.auc_replicas,
                                          min_background_events=rc.min_background_events)
                            if signals else ([], {}))
        result["auc_table"] += rows
        for name, curve in model_rocs.items():
            rocs.setdefault(name, {})[model] = curve
        result["sections"][model] = section
        error_panels.append(panel)
        step()
    result["plots"]["errors"] = str(plots.stacked_panels(out / "errors.png", error_panels, style=style))
    if rocs:
        result["plots"]["roc"] = str(plots.roc_curves(out / "roc.png", rocs, style=style))
    result["studies"] = studies(out)
    result["json"] = str(out / "report.json")
    result["markdown"] = str(write_markdown(out / "report.md", result))
    Path(result["json"]).write_text(json.dumps(finite(result), indent=1, allow_nan=False))
    step()
    return result
