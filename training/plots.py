"""Training plots: the loss curve saved next to the checkpoints, and the PCA scree plot.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot's global state, so that
plotting is safe from any thread and leaves the caller's backend alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["loss_curve", "scree_plot"]


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def loss_curve(history: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Train loss, the monitored validation loss (weights |w|) and the validation loss weighted as
    the training loss, per epoch, the best epoch marked; a PNG at ``path``. Log scale unless a
    loss is not positive (negative weights kept)."""
    fig = _figure()
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    curves = {"train": [h["loss"] for h in history], "validation, |w| (monitored)": [h["val_loss"] for h in history]}
    if all("val_loss_weighted" in h for h in history):
        curves["validation, training weights"] = [h["val_loss_weighted"] for h in history]
    for (label, values), marker in zip(curves.items(), ("o-", "s-", "^:"), strict=False):
        ax.plot(epochs, values, marker, label=label)
    best = min(history, key=lambda h: h["val_loss"])
    ax.axvline(best["epoch"], color="grey", ls=":", label=f"best (epoch {best['epoch']})")
    positive = all(v > 0 for values in curves.values() for v in values)
    ax.set(xlabel="epoch", ylabel="weighted mean loss per event", yscale="log" if positive else "linear",
           title=title)
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def scree_plot(explained_variance_ratio: np.ndarray, latent: int, variance: float, path: str | Path) -> Path:
    """Explained variance per principal component and cumulated, with the suggested latent size."""
    ratio = np.asarray(explained_variance_ratio, dtype=float)
    shown = ratio[ratio > 0]
    k = np.arange(1, len(shown) + 1)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(k, shown, ".-", label="per component")
    ax.set(xlabel="principal component", ylabel="fraction of variance explained", yscale="log",
           title="PCA scree plot (train group, scaled features)")
    cum = ax.twinx()
    cum.plot(k, np.cumsum(shown), color="tab:orange", label="cumulative")
    cum.axhline(variance, color="tab:orange", ls=":", lw=1)
    cum.set(ylabel="cumulative fraction", ylim=(0, 1.02))
    ax.axvline(latent, color="grey", ls="--", label=f"suggested latent size {latent}")
    lines = ax.get_legend_handles_labels()
    more = cum.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
