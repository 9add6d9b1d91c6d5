"""The samples a report compares, read from a scored store with expected-yield weights.

The background is the ``test`` group (never trained on), split by channel; every
``signal/<name>`` group is a signal sample; the ``data`` group, when there is one, is the data.
Weights become expected yields at the store's luminosity: a channel's test events carry the
weight of the whole channel, multiplied by (its weight summed over every group) / (its weight in
the group read), so the fractions held out in train and val, or a signal's events injected
into train, do not lower the yields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from megaset.errors import StoreError, StoreKeyError
from megaset.storage.scores import score_column
from megaset.storage.store import Store, StoreGroup

__all__ = ["Sample", "mass_variable", "load_samples", "BACKGROUND_GROUP"]

#: The group the background is read from.
BACKGROUND_GROUP = "test"


@dataclass(frozen=True)
class Sample:
    """One sample: per-event expected-yield weights, MET, the mass variable and every score."""

    name: str
    kind: Literal["background", "signal", "data"]
    weight: np.ndarray
    met: np.ndarray
    mass: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def mass_variable(store: Store) -> str:
    """``jet_mass`` for a jet store, ``m_lll`` for a store selected in 3-lepton mode, else ``m_ll``."""
    if store.kind == "jets":
        return "jet_mass"
    mode = (store.attrs.get("config") or {}).get("selection", {}).get("mode", "2lep")
    return "m_lll" if mode == "3lep" else "m_ll"


def _read(group: StoreGroup, columns: Sequence[str]) -> dict[str, np.ndarray]:
    parts = [values for _, values in group.iter_chunks(columns)]
    if not parts:
        return {name: np.zeros(0, dtype=np.float32) for name in columns}
    return {name: np.concatenate([p[name] for p in parts]) for name in columns}


def load_samples(store: Store, models: Sequence[str], mass: str) -> list[Sample]:
    """Background channels of ``test``, then each signal, then ``data``, with the scores of ``models``.

    Raises
    ------
    StoreKeyError
        When a group lacks the score of a model (the message says which models it has).
    StoreError
        When some events of a group have no score yet (an interrupted scoring).
    """
    channels = {int(c["id"]): c for c in store.channels}
    samples: list[Sample] = []
    for name in store.group_names():
        kind = "background" if name == BACKGROUND_GROUP else "signal" if name.startswith("signal/") else (
            "data" if name == "data" else None)
        if kind is None:
            continue
        group = store.group(name)
        have = group.scored_models()
        missing = [m for m in models if m not in have]
        if missing:
            msg = (
                f"group {name!r} of {store.url!r} has no score of {', '.join(missing)} "
                f"(scored: {', '.join(have) or 'none'}); run `megaset score` for that model"
            )
            raise StoreKeyError(msg)
        # Jet stores have no MET: their samples carry zeros.
        met = ["met"] if group.has_column("met") else []
        cols = _read(group, ["weight", "channel", *met, mass, *(score_column(m) for m in models)])
        cols.setdefault("met", np.zeros(len(cols["weight"]), dtype=np.float32))
        for m in models:
            bad = int(np.count_nonzero(~np.isfinite(cols[score_column(m)])))
            if bad:
                msg = (
                    f"{bad} events of group {name!r} in {store.url!r} have no {score_column(m)}: the scoring "
                    "was interrupted; run `megaset score` again to finish it"
                )
                raise StoreError(msg)
        weight = store.yield_weight(name, cols["weight"], cols["channel"])
        ids = [int(c) for c in np.unique(cols["channel"])] if kind == "background" else [None]
        for cid in ids:
            sel = cols["channel"] == cid if cid is not None else slice(None)
            label = channels[cid]["name"] if cid is not None else name.removeprefix("signal/")
            samples.append(Sample(
                name=label, kind=kind,
                weight=weight[sel],
                met=cols["met"][sel].astype(np.float64),
                mass=cols[mass][sel].astype(np.float64),
                scores={m: cols[score_column(m)][sel].astype(np.float64) for m in models},
            ))
    return samples
