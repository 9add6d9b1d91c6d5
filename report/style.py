"""One look for every figure of the reports and studies: a colour per process, the experiment
label, the y axis of histograms, PNG and PDF.

A process keeps its colour everywhere: channel ``i`` of the store (the order of
``inputs.channels``, or of the simulated channels for the demo) gets colour ``i`` of
:data:`PALETTE`, unless ``report.colors`` names another. A store derived from the same inputs
(channel removal, contamination) numbers its channels alike, so a channel left out of training
and drawn as a signal keeps the colour it had in the background stack.

>>> process_colours([{"id": 1, "name": "ttbar"}, {"id": 0, "name": "zeejets"}], {"ttbar": "black"})
{'ttbar': 'black', 'zeejets': '#3f90da'}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PALETTE", "DATA_COLOUR", "EVENTS_PER_BIN", "Style", "process_colours"]

#: Petroff's ten accessible colours (arXiv:2107.02270, matplotlib's ``petroff10``) with its two
#: greys moved last (grey is the MC uncertainty band's), ten more hues apart from them in between:
#: twenty processes before a colour repeats.
PALETTE = (
    "#3f90da", "#ffa90e", "#bd1f01", "#832db6", "#a96b59", "#e76300", "#b9ac70", "#92dadd",
    "#2ca02c", "#e377c2", "#1f3a93", "#17becf", "#bcbd22", "#ff9896", "#98df8a", "#c5b0d5", "#8c564b", "#ffd92f",
    "#94a4a2", "#717581",
)
#: Collision data, and every histogram's y axis.
DATA_COLOUR = "black"
EVENTS_PER_BIN = "Events / bin"


def process_colours(
    channels: Iterable[Mapping[str, Any]], overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Colour of every channel (``{"id", "name"}`` as in a store's ``channels``), by its id."""
    overrides = overrides or {}
    return {c["name"]: overrides.get(c["name"], PALETTE[int(c["id"]) % len(PALETTE)]) for c in channels}


@dataclass(frozen=True)
class Style:
    """What every figure of one report shares: the experiment label and the process colours.

    ``experiment`` is drawn in bold, ``label`` after it (e.g. "Simulation"), then the
    luminosity in fb^-1 and the centre-of-mass energy in TeV on the right.
    """

    experiment: str = "ATLAS-style"
    label: str = "Simulation"
    lumi_ifb: float | None = None
    sqrt_s_tev: float = 13.0
    colours: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, channels: Iterable[Mapping[str, Any]] = ()) -> Style:
        """The style of ``cfg.report`` at ``cfg.inputs.lumi_ifb``, with the colours of ``channels``."""
        rc = cfg.report
        return cls(rc.experiment, rc.label, cfg.inputs.lumi_ifb, rc.sqrt_s_tev, process_colours(channels, rc.colors))

    def colour(self, name: str, default: str | None = None) -> str | None:
        """The colour of process ``name``; ``default`` for a name that is not a process."""
        return self.colours.get(name, default)

    def label_axes(self, ax: Any) -> None:
        """The experiment label above ``ax``: ``experiment`` in bold, ``label`` in italics on the
        left, luminosity and centre-of-mass energy on the right, as mplhep's ``exp_label`` draws
        them. Placed by annotations anchored to the bold text, which need no drawing of the
        figure: ``exp_label`` draws the whole figure once per call to measure its text, and its
        14 labels took 53 of the 122 s of the demo's report (2-core CPU machine, shared)."""
        bold = ax.text(0.0, 1.01, self.experiment, transform=ax.transAxes, ha="left", va="bottom",
                       fontsize=13, fontweight="bold")
        ax.annotate(self.label, xy=(1.0, 0.0), xycoords=bold, xytext=(4, 0), textcoords="offset points",
                    ha="left", va="bottom", fontsize=11, fontstyle="italic")
        right = f"{self.lumi_ifb:g} fb$^{{-1}}$ " if self.lumi_ifb is not None else ""
        ax.text(1.0, 1.01, f"{right}({self.sqrt_s_tev:g} TeV)", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=11)


def save_figure(fig: Any, path: str | Path, *, dpi: int = 90) -> Path:
    """Save ``fig`` as ``path`` (PNG) and beside it as PDF; the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.savefig(path.with_suffix(".pdf"))
    return path
