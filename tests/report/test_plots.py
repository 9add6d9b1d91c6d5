from __future__ import annotations

import numpy as np
import pytest

from megaset.report import plots
from megaset.report.style import Style


def _axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def test_roc_random_reference_is_the_diagonal_everywhere_on_the_log_axis():
    _, ax = _axes()
    fpr = np.array([0.0, 1e-3, 0.1, 1.0])
    plots._draw_roc(ax, "sig", {"m": (fpr, np.array([0.0, 0.2, 0.7, 1.0]), 0.9, 0.01)}, Style())
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("random"))
    x, y = line.get_xdata(), line.get_ydata()
    lo, hi = ax.get_xlim()
    assert ax.get_xscale() == "log" and x.min() == pytest.approx(lo) and x.max() == pytest.approx(hi)
    np.testing.assert_allclose(y, x)
    # Between its points the line is drawn straight in display space, i.e. linearly in log10(x):
    # read it there as the eye does. The old two-point reference read 0.75 at eps_B = 0.1.
    probe = np.logspace(np.log10(lo), np.log10(hi), 5001)
    drawn = np.interp(np.log10(probe), np.log10(x), y)
    assert np.max(np.abs(drawn - probe)) < 2e-3
    assert np.interp(np.log10(0.1), np.log10(x), y) == pytest.approx(0.1, abs=1e-3)


def test_every_figure_is_a_png_and_a_pdf_with_the_label(tmp_path):
    style = Style(experiment="ATLAS-style", label="Simulation", lumi_ifb=139.0, colours={"a": "#123456"})
    edges = np.linspace(0.0, 1.0, 6)
    rng = np.random.default_rng(0)
    comp = plots.Component("a", rng.uniform(size=50), np.full(50, 2.0))
    panel = plots.Panel("title", "x", edges, [comp], [plots.Component("s", rng.uniform(size=10), np.ones(10))])
    path = plots.stacked_panels(tmp_path / "p.png", [panel], style=style)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_stack_carries_the_mc_statistical_band_and_events_per_bin():
    _, ax = _axes()
    edges = np.array([0.0, 1.0, 2.0])
    a = plots.Component("a", np.array([0.5, 0.5, 1.5]), np.array([2.0, 1.0, 3.0]))
    b = plots.Component("b", np.array([0.5]), np.array([4.0]))
    plots._draw_panel(ax, plots.Panel("t", "x", edges, [a, b]), Style(colours={"a": "#123456", "b": "#654321"}))
    assert ax.get_ylabel() == "Events / bin"
    band = next(p for p in ax.patches if p.get_label() == "MC stat. unc.")
    # Bin 1: sum 7, sqrt(4 + 1 + 16); bin 2: 3 +- 3.
    xy = band.get_path().vertices
    np.testing.assert_allclose(sorted(set(np.round(xy[:, 1], 9))),
                               sorted({7 - np.sqrt(21), 7 + np.sqrt(21), 0.0, 6.0}))
    filled = [p for p in ax.patches if p.get_label() in ("a", "b")]
    assert {tuple(np.round(p.get_facecolor()[:3], 3)) for p in filled} == {
        (0.071, 0.204, 0.337), (0.396, 0.263, 0.129)}


def test_curves_draw_each_series_in_its_colour_and_style_on_a_log_axis_when_asked():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    x = np.array([1.0, 2.0, 4.0])
    ys = {"ingest": np.array([1e5, 2e5, 4e5]), "score": np.array([1e4, 1.5e4, 3e4])}
    plots.curves.__wrapped__(fig, x, ys, style=Style(), xlabel="workers", ylabel="events / s", logy=True,
                             colours={"ingest": "#123456"}, linestyles={"score": "--"})
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    # errorbar labels its container; the container's first member is the data line
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    for name, y in ys.items():
        np.testing.assert_array_equal(lines[name].get_ydata(), y)
    assert lines["ingest"].get_color() == "#123456" and lines["score"].get_linestyle() == "--"
