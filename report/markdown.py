"""The Markdown page of a report, and the studies listed on it.

``report.md`` holds the yields with their MC statistical uncertainty and effective number of
MC events, the cut flow of every channel, the input files the ingest skipped, Farina et al.'s
Table I with the AUC's uncertainty, the signal regions with their significances, the training of
each model, the configuration's digest and every study recorded into the report folder with :func:`add_study`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_markdown", "table", "family_table", "add_study", "studies", "study_records", "finite",
           "working_point_cell", "skipped_files", "skipped_section", "without_events_notes"]

#: Where a report folder keeps the summaries of the studies run against its store.
STUDIES = "studies"


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, in nested dicts and lists: strict JSON.

    >>> finite({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return "-" if value is None else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table.

    >>> print(table(["a", "b"], [[1, 0.5]]))
    | a | b |
    |---|---|
    | 1 | 0.5 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pm(value: float | None, error: float | None) -> str:
    """``value ± error``, to the precision of the error's two leading digits; large values with a
    common power of ten.

    >>> _pm(1234.5, 56.7), _pm(0.8766, 0.0123), _pm(1.016e8, 1.52e6), _pm(3.0, 0.0)
    ('1234 ± 57', '0.877 ± 0.012', '(1.016 ± 0.015)e8', '3 ± 0')
    """
    if value is None or error is None or not (math.isfinite(value) and math.isfinite(error)):
        return _cell(value)
    if error <= 0:
        return f"{value:.4g} ± 0"
    exponent = math.floor(math.log10(abs(value))) if abs(value) >= 1e5 else 0
    v, e = value / 10**exponent, error / 10**exponent
    digits = min(6, max(0, 1 - math.floor(math.log10(e))))
    text = f"{v:.{digits}f} ± {e:.{digits}f}"
    return f"({text})e{exponent}" if exponent else text


def working_point_cell(row: Mapping[str, Any], name: str) -> str:
    """A working point of an anomaly-table row: the efficiency with its background-MC
    uncertainty, marked when its cut keeps too few background MC events to be a measurement.

    >>> working_point_cell({"e1000": 0.21, "e1000_error": 0.034, "e1000_enough": False,
    ...                     "e1000_background_events": 3}, "e1000")
    '0.210 ± 0.034 (not enough background MC: 3 events)'
    """
    cell = _pm(row[name], row.get(f"{name}_error"))
    if row.get(f"{name}_enough", True):
        return cell
    return f"{cell} (not enough background MC: {row[f'{name}_background_events']} events)"


def family_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every model against every signal: ``AUC / E100 / E1000`` in each cell (E1000 with a
    dagger where its cut keeps too few background MC events).

    >>> print(family_table([{"signal": "s", "model": "m", "auc": 0.91, "e100": 0.5, "e1000": 0.2,
    ...                      "e1000_enough": False}]))
    | model | s |
    |---|---|
    | m | 0.910 / 0.500 / 0.200† |
    """
    signals = list(dict.fromkeys(r["signal"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells = {(r["model"], r["signal"]): f"{r['auc']:.3f} / {r['e100']:.3f} / {r['e1000']:.3f}"
             f"{'' if r.get('e1000_enough', True) else '†'}" for r in rows}
    return table(["model", *signals], [[m, *(cells.get((m, s), "-") for s in signals)] for m in models])


def _best_si_cell(best: Mapping[str, Any] | None) -> str:
    if not best:
        return "-"
    return (f"{_pm(best['significance_improvement'], best['significance_improvement_error'])} "
            f"at ε_B = {best['background_efficiency']:.2g}")


def without_events_notes(names: Sequence[str]) -> list[str]:
    """One line per signal that has no ROC curve, saying why it is in no table of the anomaly detection.

    >>> without_events_notes(["c1n2"])
    ['- signal c1n2: no selected event with a positive weight in the store: not in the table']
    """
    return [f"- signal {name}: no selected event with a positive weight in the store: not in the table"
            for name in names]


def _anomaly_tables(rows: Sequence[Mapping[str, Any]], without_events: Sequence[str]) -> list[str]:
    """Table I and the family table, then a note per signal left out of them; when every signal
    is left out, no table and the reason."""
    notes = [*without_events_notes(without_events), ""] if without_events else []
    if not rows and without_events:
        return ["No signal has a selected event with a positive weight in the store: there is no ROC "
                "curve, AUC or working point to show.", "", *notes]
    return [table(["signal", "model", "AUC", "E10", "E100", "E1000", "best ε_S/√ε_B"],
                  [[r["signal"], r["model"], _pm(r["auc"], r["auc_error"]),
                    *(working_point_cell(r, name) for name in ("e10", "e100", "e1000")),
                    _best_si_cell(r.get("best_si"))] for r in rows]), "", *notes,
            "Model families against signals (AUC / E100 / E1000; † marks an E1000 on too few background "
            "MC events):", "", family_table(rows), ""]


def _figure(path: str | Path, base: Path, name: str | None = None) -> str:
    """A figure linked relative to ``base``, with its PDF."""
    rel = Path(os.path.relpath(path, base))
    return f"![{name or rel.stem}]({rel.as_posix()}) ([PDF]({rel.with_suffix('.pdf').as_posix()}))"


def _regions(model: str, section: Mapping[str, Any], stats: Mapping[str, Any], base: Path) -> list[str]:
    systematic = stats["background_systematic"]
    out = [f"### {model}", "",
           f"Weighted median of the background error on the report axis: m = {section['median']:.4g}; "
           f"cuts at m + i |m| / 5: {', '.join(f'{c:.4g}' for c in section['cuts'])}. "
           f"b and s with their MC statistical uncertainty sqrt(sum w²); Z Asimov with σ_b = the MC "
           f"statistical uncertainty{f' and a {systematic:.0%} systematic' if systematic else ''}. "
           f"MET cuts whose background rests on fewer than {stats['min_background_events']} effective MC events "
           "(N_eff = (sum w)² / sum w², which weights of both signs lower) are refused.", ""]
    rows, notes = [], []
    for entry in section["regions"]:
        name = f"SR{entry['region']}"
        b = _pm(entry["background"], entry["background_error"])
        for signal, sig in entry["signals"].items():
            best = sig["best_met_cut"] or {}
            rows.append([name, entry["cut"], signal, b, entry["background_events"], entry["background_n_eff"],
                         _pm(sig["yield"], sig["yield_error"]), sig["z"], sig["z_asimov"], best.get("met_min"),
                         best.get("z_asimov"), best.get("background_events")])
        if not entry["signals"]:
            rows.append([name, entry["cut"], "-", b, entry["background_events"], entry["background_n_eff"],
                         *[None] * 6])
        if entry["few_mc_events"]:
            notes.append(f"{name} itself keeps {entry['background_events']} background MC events worth "
                         f"{entry['background_n_eff']:.3g} effective ones: its background is a fluctuation, "
                         "not an estimate.")
        elif entry["met_refused_from"] is not None:
            notes.append(f"{name}: MET cuts from {entry['met_refused_from']:g} GeV up are refused.")
    out.append(table(["region", "cut", "signal", "b", "b MC events", "b N_eff", "s", "s/sqrt(b)", "Z Asimov (σ_b)",
                      "best MET cut [GeV]", "Z Asimov there", "b MC events there"], rows))
    out += ["", *(f"- {n}" for n in notes), "" if notes else None]
    out += [*(_figure(path, base, kind) for kind, path in section["plots"].items()), ""]
    return [line for line in out if line is not None]


def _cutflow(cutflow: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    if not cutflow:
        return ["The store records no cut flow.", ""]
    cuts = list(dict.fromkeys(step["cut"] for steps in cutflow.values() for step in steps))

    def rows(key: str) -> list[list[Any]]:
        out = []
        for name, steps in cutflow.items():
            by_cut = {step["cut"]: step[key] for step in steps}
            out.append([name, *(by_cut.get(cut) for cut in cuts)])
        return out

    return ["MC events after each cut:", "", table(["channel", *cuts], rows("events")), "",
            "Expected events after each cut:", "", table(["channel", *cuts], rows("yield")), ""]


def skipped_files(store_attrs: Mapping[str, Any]) -> list[dict[str, str]]:
    """The input files the ingest skipped (``inputs.on_bad_file: skip``), each with its reason,
    as the store records them."""
    return [{"file": str(e["file"]), "reason": str(e["reason"])} for e in store_attrs.get("skipped") or []]


def skipped_section(skipped: Sequence[Mapping[str, str]]) -> list[str]:
    """The report's section of skipped input files: their events are in no yield of the report."""
    if not skipped:
        return ["## Input files skipped", "", "None: every input file was read.", ""]
    return [f"## Input files skipped ({len(skipped)})", "",
            "Skipped by `inputs.on_bad_file: skip`; their events are in no cut flow, yield or score of this report.",
            "", table(["file", "reason"], [[e["file"], e["reason"]] for e in skipped]), ""]


def _training(training: Mapping[str, Mapping[str, Any]], base: Path) -> list[str]:
    if not training:
        return ["No training record was given with this report (`megaset report` and `megaset run` read it "
                "from the checkpoints).", ""]
    out = [table(["model", "epochs", "best epoch", "best val loss", "early stopping"],
                 [[m, t.get("epochs"), t.get("best_epoch"), t.get("best_val_loss"),
                   "yes" if t.get("stopped_early") else "no"] for m, t in training.items()]), ""]
    for model, t in training.items():
        history = t.get("history") or []
        if history:
            out += [f"{model}, per epoch:", "",
                    table(["epoch", "train loss", "val loss (|w|)", "val loss (training weights)"],
                          [[h["epoch"], h["loss"], h["val_loss"], h.get("val_loss_weighted")] for h in history]), ""]
        if t.get("loss_curve"):
            out += [f"![loss curve {model}]({Path(os.path.relpath(t['loss_curve'], base)).as_posix()})", ""]
    return out


def _studies(entries: Sequence[Mapping[str, Any]], base: Path) -> list[str]:
    if not entries:
        return ["No study has been run on this store yet (`megaset study ...`).", ""]
    out = []
    for study in entries:
        out += [f"### {study['title']}", "", table(study["header"], study["rows"]), ""]
        out += [*(_figure(path, base) for path in study["plots"]), ""]
        out += [f"[{name}]({Path(os.path.relpath(link, base)).as_posix()})" for name, link in
                study.get("links", {}).items()]
        out += [""] if study.get("links") else []
    return out


def _headline(headline: Mapping[str, Sequence[str]], methods: Mapping[str, str]) -> list[str]:
    """The paragraph naming the headline scores, the combinations, and what each combines how
    (``methods``: the ``scoring.combine`` method of each; rank-mean where a report predates them).

    >>> print(_headline({"ae-svdd": ["ae-shallow", "deep-svdd"]}, {})[0])  # doctest: +ELLIPSIS
    Headline score: `ae-svdd`, the rank mean of `ae-shallow` and `deep-svdd` (scoring.combine); the single ...
    >>> print(_headline({"c": ["a", "b", "d"], "e": ["a", "c"]}, {"e": "min-p"})[0])  # doctest: +ELLIPSIS
    Headline scores: `c`, the rank mean of `a`, `b` and `d`; `e`, the smallest background p-value (Šidák...
    """
    from megaset.training.combine import METHODS

    if not headline:
        return []

    def listed(models: Sequence[str]) -> str:
        names = [f"`{m}`" for m in models]
        return f"{', '.join(names[:-1])} and {names[-1]}"

    named = "; ".join(f"`{name}`, {METHODS[methods.get(name, 'rank-mean')][1]} of {listed(models)}"
                      for name, models in headline.items())
    many = len(headline) > 1
    return [f"Headline score{'s' if many else ''}: {named} (scoring.combine); the single models are shown "
            f"beside {'them' if many else 'it'}.", ""]


def write_markdown(path: str | Path, result: Mapping[str, Any]) -> Path:
    """Write ``report.md`` from what :func:`megaset.report.report.report` computed."""
    path = Path(path)
    base = path.parent
    config = result["config"]
    lines = [
        "# megaset report", "",
        f"Store `{result['store']}`; models {', '.join(f'`{m}`' for m in result['models'])}; "
        f"errors on the {result['axis']} axis; mass variable `{result['mass_variable']}`. Background: the "
        "test group; yields are expected events at the store's luminosity, ± their MC statistical "
        "uncertainty sqrt(sum w²); N_eff = (sum w)² / sum w² is the number of unweighted MC events "
        "with the same relative uncertainty.", "",
        *_headline(result.get("headline") or {}, result.get("combined_by") or {}),
        f"Configuration: [{Path(config['file']).name}]({Path(os.path.relpath(config['file'], base)).as_posix()}), "
        f"SHA-256 `{config['sha256']}`.", "",
        "## Yields", "",
        table(["sample", "kind", "MC events", "expected yield", "N_eff"],
              [[y["sample"], y["kind"], y["events"], _pm(y["yield"], y["error"]), y["n_eff"]]
               for y in result["yields"]]),
        "", "## Cut flow", "", *_cutflow(result.get("cutflow") or {}), *skipped_section(result.get("skipped") or []),
        "## Anomaly detection (Farina et al. Table I)", "",
        "E10, E100 and E1000: signal efficiency at 90 %, 99 % and 99.9 % background rejection; best "
        "ε_S/√ε_B: the largest significance improvement over the cuts that keep at least "
        f"{result['statistics']['min_background_events']} background MC events. Their uncertainties "
        "come from the background's MC statistics (the cut's background efficiency known to within "
        "its weighted binomial error, sums of w²); a working point whose cut keeps fewer background MC "
        "events than that is marked. The AUC's uncertainty "
        f"is the spread of {result['statistics']['auc_replicas']} bootstrap replicas.", "",
        *_anomaly_tables(result["auc_table"], result.get("signals_without_events") or []),
        "## Reconstruction errors", "", _figure(result["plots"]["errors"], base, "errors"), "",
    ]
    if "roc" in result["plots"]:
        lines += [_figure(result["plots"]["roc"], base, "roc"), ""]
    lines += ["## Signal regions", ""]
    for model, section in result["sections"].items():
        lines += _regions(model, section, result["statistics"], base)
    lines += ["## Training", "", *_training(result.get("training") or {}, base)]
    lines += ["## Studies", "", *_studies(result.get("studies") or [], base)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _entries(folder: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder, STUDIES).glob("*.json"))]


def studies(folder: str | Path) -> list[dict[str, Any]]:
    """The study summaries recorded in the report folder ``folder``, by name (without their
    stage records)."""
    return [{k: v for k, v in entry.items() if k != "stage"} for entry in _entries(folder)]


def study_records(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Key -> stage record of every study in the report folder ``folder`` that has one."""
    return {entry["key"]: entry["stage"] for entry in _entries(folder) if entry.get("stage")}


def add_study(folder: str | Path, key: str, *, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
              plots: Sequence[str | Path] = (), links: Mapping[str, str | Path] | None = None,
              stage: Mapping[str, Any] | None = None) -> Path:
    """Record a study's table, figures, links and stage record (:mod:`megaset.provenance`) in the
    report folder ``folder``; when the report of an event store is there, add the study to its
    ``report.json`` and ``report.md``. Returns the study's file.

    A study run again under the same ``key`` replaces its entry.
    """
    folder = Path(folder)
    entry = {"key": key, "title": title, "header": list(header), "rows": [list(r) for r in rows],
             "plots": [str(p) for p in plots], "links": {k: str(v) for k, v in (links or {}).items()},
             **({"stage": dict(stage)} if stage else {})}
    path = folder / STUDIES / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(entry), indent=1, allow_nan=False))
    summary = folder / "report.json"
    if summary.is_file():
        result = json.loads(summary.read_text())
        if "studies" not in result:
            return path  # a jet report: it shows its studies when it is written
        result["studies"] = studies(folder)
        summary.write_text(json.dumps(result, indent=1, allow_nan=False))
        write_markdown(folder / "report.md", result)
    return path
