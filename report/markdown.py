"""The Markdown page of a report: yields, Farina et al.'s Table I, signal regions, figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_markdown", "table"]


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


def _regions(model: str, section: Mapping[str, Any]) -> list[str]:
    out = [f"### {model}", "",
           f"Weighted median of the background error on the report axis: m = {section['median']:.4g}; "
           f"cuts at m + i |m| / 5: {', '.join(f'{c:.4g}' for c in section['cuts'])}.", ""]
    rows = []
    for entry in section["regions"]:
        for name, sig in entry["signals"].items():
            best = sig["best_met_cut"] or {}
            rows.append([f"SR{entry['region']}", entry["cut"], name, entry["background"], sig["yield"], sig["z"],
                         sig["z_asimov"], best.get("met_min"), best.get("z_asimov")])
        if not entry["signals"]:
            rows.append([f"SR{entry['region']}", entry["cut"], "-", entry["background"], *[None] * 5])
    out.append(table(["region", "cut", "signal", "b", "s", "s/sqrt(b)", "Z Asimov", "best MET cut [GeV]",
                      "Z Asimov there"], rows))
    out += ["", *(f"![{kind}]({Path(path).name})" for kind, path in section["plots"].items()), ""]
    return out


def write_markdown(path: str | Path, result: Mapping[str, Any]) -> Path:
    """Write ``report.md`` from what :func:`megaset.report.report.report` computed."""
    lines = [
        "# megaset report", "",
        f"Store `{result['store']}`; models {', '.join(f'`{m}`' for m in result['models'])}; "
        f"errors on the {result['axis']} axis; mass variable `{result['mass_variable']}`. Background: the "
        "test group; yields are expected events at the store's luminosity.", "",
        "## Yields", "",
        table(["sample", "kind", "events", "expected yield"],
              [[y["sample"], y["kind"], y["events"], y["yield"]] for y in result["yields"]]),
        "", "## Anomaly detection (Farina et al. Table I)", "",
        "E10 and E100: signal efficiency at 90 % and 99 % background rejection.", "",
        table(["signal", "model", "AUC", "E10", "E100"],
              [[r["signal"], r["model"], r["auc"], r["e10"], r["e100"]] for r in result["auc_table"]]),
        "", "## Reconstruction errors", "", "![errors](errors.png)", "",
    ]
    if "roc" in result["plots"]:
        lines += ["![roc](roc.png)", ""]
    lines += ["## Signal regions", ""]
    for model, section in result["sections"].items():
        lines += _regions(model, section)
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
