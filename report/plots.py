"""The figures of the report: weighted histograms with ``hist`` drawn by ``mplhep``, and curves.

Every figure function takes the PNG's path first and returns it. Figures are drawn on
matplotlib's Agg canvas directly (no pyplot state, safe in any thread), inside mplhep's
ATLAS-like style. Values outside a histogram's range are put into its first or last bin, so
that no event disappears from a plot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Component", "Panel", "stacked_panels", "significance_curves", "roc_curves", "curves", "heatmap",
]


@dataclass(frozen=True)
class Component:
    """One histogrammed sample: its name, per-event values and weights."""

    name: str
    values: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class Panel:
    """One axes of stacked backgrounds (the first at the bottom), overlaid signals and data points.

    Give the components in the same order in every panel of a figure: colours follow the order.
    """

    title: str
    xlabel: str
    edges: np.ndarray
    background: Sequence[Component]
    signals: Sequence[Component] = ()
    data: Component | None = None
    cuts: Sequence[tuple[float, str]] = ()
    logy: bool = True


def _styled(draw: Callable[..., Any]) -> Callable[..., Path]:
    """Run a drawing function in mplhep's style on a fresh Agg figure; save it to ``path``."""

    @functools.wraps(draw)
    def wrapper(path: str | Path, *args: Any, **kwargs: Any) -> Path:
        import matplotlib
        import mplhep
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with matplotlib.style.context(mplhep.style.ATLAS):
            fig = Figure(layout="constrained")
            FigureCanvasAgg(fig)
            draw(fig, *args, **kwargs)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=90)
        return path

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


def _draw_panel(ax, panel: Panel) -> None:
    import mplhep

    edges = np.asarray(panel.edges, dtype=float)
    background = panel.background
    if background:
        mplhep.histplot([_hist(c, edges) for c in background], stack=True, histtype="fill",
                        label=[c.name for c in background], ax=ax)
    for c in panel.signals:
        mplhep.histplot(_hist(c, edges), histtype="step", linewidth=2, yerr=False, label=c.name, ax=ax)
    if panel.data is not None:
        mplhep.histplot(_hist(panel.data, edges), histtype="errorbar", color="black", label=panel.data.name, ax=ax)
    for x, label in panel.cuts:
        ax.axvline(x, color="grey", ls="--", lw=1)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -12),
                    textcoords="offset points", fontsize=10, color="grey")
    if panel.logy:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-3))
    ax.set_xlim(edges[0], edges[-1])
    ax.set(xlabel=panel.xlabel, ylabel="events", title=panel.title)
    ax.legend(fontsize=9, ncols=2)


@_styled
def stacked_panels(fig, panels: Sequence[Panel], *, ncols: int | None = None) -> None:
    """Panels side by side (``ncols`` per row): stacked backgrounds, overlaid signals and data."""
    for ax, panel in zip(_grid(fig, len(panels), ncols=ncols), panels, strict=True):
        _draw_panel(ax, panel)


@_styled
def significance_curves(fig, thresholds: np.ndarray, regions: Sequence[tuple[str, Mapping[str, tuple]]],
                        *, xlabel: str) -> None:
    """One panel per region: Z = s / sqrt(b) (dashed) and the Asimov Z (solid) of each signal
    against the threshold on ``xlabel``."""
    for ax, (title, per_signal) in zip(_grid(fig, len(regions)), regions, strict=True):
        for k, (name, (z, z_asimov)) in enumerate(per_signal.items()):
            color = f"C{k}"
            ax.plot(thresholds, z_asimov, color=color, label=f"{name} (Asimov)")
            ax.plot(thresholds, z, color=color, ls="--", label=f"{name} (s/√b)")
        ax.set(xlabel=xlabel, ylabel="significance Z", title=title)
        ax.legend(fontsize=9)


@_styled
def roc_curves(fig, per_signal: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, float]]]) -> None:
    """One panel per signal: signal against background efficiency of every model, with the
    working points of E10 and E100 marked."""
    for ax, (signal, per_model) in zip(_grid(fig, len(per_signal), ncols=min(len(per_signal), 3)),
                                       per_signal.items(), strict=True):
        for model, (fpr, tpr, area) in per_model.items():
            keep = fpr > 0
            ax.plot(fpr[keep], tpr[keep], label=f"{model} (AUC {area:.3f})")
        for x, label in ((0.1, "E10"), (0.01, "E100")):
            ax.axvline(x, color="grey", ls=":", lw=1)
            ax.annotate(label, (x, 0.02), xytext=(2, 0), textcoords="offset points", fontsize=9, color="grey")
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8, label="random")
        ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.02), xlabel="background efficiency",
               ylabel="signal efficiency", title=signal)
        ax.legend(fontsize=9, loc="upper left")


@_styled
def curves(fig, x: np.ndarray, ys: Mapping[str, np.ndarray], *, xlabel: str, ylabel: str, title: str = "",
           marker: str = "o", logx: bool = False, reference: float | None = None) -> None:
    """Lines (with markers) of several samples or models against a common x."""
    ax = fig.add_subplot()
    fig.set_size_inches(7.0, 4.8)
    for name, y in ys.items():
        ax.plot(x, y, marker=marker, label=name)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=9)


@_styled
def heatmap(fig, names: Sequence[str], matrix: np.ndarray, *, title: str) -> None:
    """The pairwise separation matrix: AUC of the row sample (anomaly) against the column sample
    (background); blue for a separation, white for none, red for the opposite ordering."""
    n = len(names)
    fig.set_size_inches(1.0 + 0.75 * n, 0.8 + 0.65 * n)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="RdBu", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(n), names, fontsize=9)
    for i in range(n):
        for j in range(n):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set(xlabel="as background", ylabel="as anomaly", title=title)
    ax.minorticks_off()
    fig.colorbar(image, ax=ax, label="AUC")
