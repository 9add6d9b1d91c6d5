"""The figures of the report: weighted histograms with ``hist`` drawn by ``mplhep``, and curves.

Every figure function takes the PNG's path first, writes a PDF beside it and returns the PNG's
path. Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, safe in any
thread), inside mplhep's ATLAS-like style, with the experiment label and the process colours of
a :class:`~megaset.report.style.Style`. Histograms keep the sum of weights squared (``hist``'s
``Weight`` storage): stacks carry the MC statistical band of their total. Values outside a
histogram's range are put into its first or last bin, so that no event disappears from a plot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megaset.report.style import DATA_COLOUR, EVENTS_PER_BIN, Style, save_figure

__all__ = [
    "Component", "Panel", "stacked_panels", "significance_curves", "roc_curves", "random_reference", "curves",
    "heatmap",
]


@dataclass(frozen=True)
class Component:
    """One histogrammed sample: its name, per-event values and weights; its colour, else the
    process colour of its name."""

    name: str
    values: np.ndarray
    weights: np.ndarray
    colour: str | None = None


@dataclass(frozen=True)
class Panel:
    """One axes of stacked backgrounds (the first at the bottom) with the MC statistical band of
    their sum, overlaid signals and data points. The title heads the legend."""

    title: str
    xlabel: str
    edges: np.ndarray
    background: Sequence[Component]
    signals: Sequence[Component] = ()
    data: Component | None = None
    cuts: Sequence[tuple[float, str]] = ()
    logy: bool = True


def _styled(draw: Callable[..., Any]) -> Callable[..., Path]:
    """Run a drawing function in mplhep's style on a fresh Agg figure; save it to ``path`` (PNG)
    and beside it as PDF. The drawing function gets the ``style`` keyword (default: the
    experiment label without luminosity, no process colours)."""

    @functools.wraps(draw)
    def wrapper(path: str | Path, *args: Any, style: Style | None = None, **kwargs: Any) -> Path:
        import matplotlib
        import mplhep
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with matplotlib.style.context(mplhep.style.ATLAS):
            fig = Figure(layout="constrained")
            FigureCanvasAgg(fig)
            draw(fig, *args, style=style or Style(), **kwargs)
            return save_figure(fig, path)

    return wrapper


def _hist(component: Component, edges: np.ndarray):
    import hist

    h = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
    inside = np.clip(component.values, edges[0], np.nextafter(edges[-1], edges[0]))
    h.fill(inside, weight=component.weights)
    return h


def _grid(fig, n: int, *, ncols: int | None = None, width: float = 6.0, height: float = 4.6):
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig.set_size_inches(width * ncols, height * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _colour(component: Component, style: Style) -> str | None:
    return component.colour or style.colour(component.name)


def _stat_band(ax, hists: Sequence[Any], edges: np.ndarray) -> None:
    """The total of stacked histograms +- sqrt(sum of w^2), hatched."""
    total = sum(hists[1:], hists[0])
    values, error = total.values(), np.sqrt(total.variances())
    ax.stairs(values + error, edges, baseline=values - error, fill=True, facecolor="none", edgecolor="0.35",
              hatch="////", linewidth=0, label="MC stat. unc.")


def _draw_panel(ax, panel: Panel, style: Style) -> None:
    import mplhep

    edges = np.asarray(panel.edges, dtype=float)
    background = panel.background
    if background:
        hists = [_hist(c, edges) for c in background]
        mplhep.histplot(hists, stack=True, histtype="fill", label=[c.name for c in background],
                        color=[_colour(c, style) for c in background], ax=ax)
        _stat_band(ax, hists, edges)
    for c in panel.signals:
        mplhep.histplot(_hist(c, edges), histtype="step", linewidth=2, yerr=False, label=c.name,
                        color=_colour(c, style), ax=ax)
    if panel.data is not None:
        mplhep.histplot(_hist(panel.data, edges), histtype="errorbar", color=DATA_COLOUR, label=panel.data.name,
                        ax=ax)
    for x, label in panel.cuts:
        ax.axvline(x, color="grey", ls="--", lw=1)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -12),
                    textcoords="offset points", fontsize=10, color="grey")
    if panel.logy:
        ax.set_yscale("log")
        low = max(ax.get_ylim()[0], 1e-3)
        # Head room for the legend above the tallest bin.
        ax.set_ylim(low, low * (ax.get_ylim()[1] / low) ** 1.4)
    ax.set_xlim(edges[0], edges[-1])
    ax.set(xlabel=panel.xlabel, ylabel=EVENTS_PER_BIN)
    ax.legend(fontsize=8, ncols=3, title=panel.title, title_fontsize=9, loc="upper right")
    style.label_axes(ax)


@_styled
def stacked_panels(fig, panels: Sequence[Panel], *, style: Style, ncols: int | None = None) -> None:
    """Panels side by side (``ncols`` per row): stacked backgrounds with their MC statistical
    band, overlaid signals and data."""
    for ax, panel in zip(_grid(fig, len(panels), ncols=ncols), panels, strict=True):
        _draw_panel(ax, panel, style)


@_styled
def significance_curves(fig, thresholds: np.ndarray, regions: Sequence[tuple[str, Mapping[str, tuple], float | None]],
                        *, style: Style, xlabel: str, min_events: int) -> None:
    """One panel per region: the Asimov Z with the background uncertainty (solid) and s / sqrt(b)
    (dashed) of each signal against the threshold on ``xlabel``. Each region gives its title,
    ``{signal: (z, z_asimov)}`` and the first threshold that leaves fewer than ``min_events``
    background MC events (shaded, no curve drawn there), or ``None``."""
    for ax, (title, per_signal, refused_from) in zip(_grid(fig, len(regions)), regions, strict=True):
        for j, (name, (z, z_asimov)) in enumerate(per_signal.items()):
            colour = style.colour(name, f"C{j}")
            ax.plot(thresholds, z_asimov, color=colour, label=f"{name} (Asimov, $\\sigma_b$)")
            ax.plot(thresholds, z, color=colour, ls="--", label=f"{name} (s/√b)")
        if refused_from is not None:
            ax.axvspan(refused_from, thresholds[-1], color="0.85", zorder=0,
                       label=f"< {min_events} background MC events: refused")
            if refused_from <= thresholds[0]:
                ax.text(0.5, 0.5, f"every cut leaves fewer than\n{min_events} background MC events",
                        transform=ax.transAxes, ha="center", va="center", fontsize=11)
        ax.set(xlabel=xlabel, ylabel="significance Z", xlim=(thresholds[0], thresholds[-1]))
        ax.legend(fontsize=8, title=title, title_fontsize=9, loc="upper right")
        style.label_axes(ax)


def random_reference(low: float, high: float = 1.0, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of a random classifier, signal efficiency = background efficiency, at
    ``points`` logarithmically spaced efficiencies from ``low`` to ``high``: drawn on a log x axis
    it stays on the diagonal (two points would draw a straight segment in log x, far from it)."""
    x = np.logspace(np.log10(low), np.log10(high), points)
    return x, x.copy()


#: The smallest background efficiency on the ROC axes.
ROC_XMIN = 1e-4


def _draw_roc(ax, signal: str, per_model: Mapping[str, tuple], style: Style) -> None:
    for model, (fpr, tpr, area, area_error) in per_model.items():
        keep = fpr > 0
        error = f" ± {area_error:.3f}" if area_error is not None else ""
        ax.plot(fpr[keep], tpr[keep], label=f"{model} (AUC {area:.3f}{error})")
    for x, label in ((0.1, "E10"), (0.01, "E100")):
        ax.axvline(x, color="grey", ls=":", lw=1)
        ax.annotate(label, (x, 0.02), xytext=(2, 0), textcoords="offset points", fontsize=9, color="grey")
    ax.plot(*random_reference(ROC_XMIN), color="grey", lw=0.8, label=r"random ($\varepsilon_S = \varepsilon_B$)")
    ax.set(xscale="log", xlim=(ROC_XMIN, 1), ylim=(0, 1.1), xlabel=r"background efficiency $\varepsilon_B$",
           ylabel=r"signal efficiency $\varepsilon_S$")
    ax.legend(fontsize=9, loc="upper left", title=f"signal: {signal}", title_fontsize=9)
    style.label_axes(ax)


@_styled
def roc_curves(fig, per_signal: Mapping[str, Mapping[str, tuple]], *, style: Style) -> None:
    """One panel per signal: signal against background efficiency of every model
    (``{signal: {model: (fpr, tpr, auc, auc_error)}}``), the working points of E10 and E100
    marked, and the random classifier."""
    for ax, (signal, per_model) in zip(_grid(fig, len(per_signal), ncols=min(len(per_signal), 3)),
                                       per_signal.items(), strict=True):
        _draw_roc(ax, signal, per_model, style)


@_styled
def curves(fig, x: np.ndarray, ys: Mapping[str, np.ndarray], *, style: Style, xlabel: str, ylabel: str,
           title: str = "", marker: str = "o", logx: bool = False, logy: bool = False,
           reference: float | None = None, errors: Mapping[str, np.ndarray] | None = None,
           colours: Mapping[str, str] | None = None, linestyles: Mapping[str, str] | None = None) -> None:
    """Lines (with markers and, where given, error bars) of several samples or metrics against a
    common x; a line named after a process takes its colour unless ``colours`` names one. ``logy``
    for values spanning decades (rates of different stages)."""
    ax = fig.add_subplot()
    fig.set_size_inches(7.0, 4.8)
    for j, (name, y) in enumerate(ys.items()):
        colour = (colours or {}).get(name) or style.colour(name, f"C{j}")
        ax.errorbar(x, y, yerr=(errors or {}).get(name), marker=marker, color=colour, capsize=2,
                    ls=(linestyles or {}).get(name, "-"), label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=9, title=title or None, title_fontsize=9)
    style.label_axes(ax)


@_styled
def heatmap(fig, names: Sequence[str], matrix: np.ndarray, *, style: Style, title: str) -> None:
    """The pairwise separation matrix: AUC of the row sample (anomaly) against the column sample
    (background); blue for a separation, white for none, red for the opposite ordering."""
    n = len(names)
    # Wide enough for the experiment label above a matrix of few samples.
    fig.set_size_inches(max(6.5, 1.5 + 0.75 * n), max(4.8, 1.2 + 0.65 * n))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="RdBu", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(n), names, fontsize=9)
    for i in range(n):
        for j in range(n):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set(xlabel="as background", ylabel="as anomaly")
    fig.suptitle(title, fontsize=10)
    ax.minorticks_off()
    fig.colorbar(image, ax=ax, label="AUC")
    style.label_axes(ax)
