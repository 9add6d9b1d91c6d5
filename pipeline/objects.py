"""Flat, numba-friendly event data: one jagged collection is an offsets array plus columns.

Awkward arrays are the interface to the files; inside the pipeline, selection and the RMM
kernel work on plain numpy buffers (content + offsets), which numba compiles against directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Jagged", "EventArrays"]


@dataclass(frozen=True)
class Jagged:
    """Objects of one collection for a batch of events.

    ``columns`` holds flat arrays (one entry per object), the objects of event ``i`` being
    ``offsets[i]:offsets[i + 1]``. Kinematic columns are ``pt``, ``eta``, ``phi``, ``mass``
    (GeV); other columns carry roles such as ``btag``, ``flavor``, ``charge``, ``tight``,
    ``iso``, ``d0sig``.

    >>> j = Jagged.from_counts(np.array([2, 0, 1]), {"pt": np.array([30.0, 50.0, 20.0])})
    >>> j.counts().tolist()
    [2, 0, 1]
    >>> j.select_events(np.array([True, False, True]))["pt"].tolist()
    [30.0, 50.0, 20.0]
    >>> j.select_objects(np.array([False, True, True])).counts().tolist()
    [1, 0, 1]
    """

    offsets: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_obj = int(self.offsets[-1]) if len(self.offsets) else 0
        for name, col in self.columns.items():
            if len(col) != n_obj:
                msg = f"column {name!r} has {len(col)} entries, offsets say {n_obj} objects"
                raise ValueError(msg)

    @classmethod
    def from_counts(cls, counts: np.ndarray, columns: Mapping[str, np.ndarray]) -> Jagged:
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, dict(columns))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def event_index(self) -> np.ndarray:
        """The event each object belongs to (one entry per object)."""
        return np.repeat(np.arange(self.n_events), self.counts())

    def select_objects(self, mask: np.ndarray) -> Jagged:
        """Keep the objects where ``mask`` (one entry per object) is true."""
        kept = np.zeros(len(mask) + 1, dtype=np.int64)
        np.cumsum(mask, out=kept[1:])
        return Jagged(kept[self.offsets], {k: v[mask] for k, v in self.columns.items()})

    def select_events(self, mask: np.ndarray) -> Jagged:
        """Keep the events where ``mask`` (one entry per event) is true."""
        counts = self.counts()[mask]
        obj_mask = np.repeat(mask, self.counts())
        return Jagged.from_counts(counts, {k: v[obj_mask] for k, v in self.columns.items()})


@dataclass(frozen=True)
class EventArrays:
    """Everything read from one input chunk, mapped onto the schema's roles.

    ``collections`` maps a schema collection name (``jet``, ``lepton``, ...) to its objects;
    ``met_et`` / ``met_phi`` in GeV / rad; ``weight`` per event (float64); ``run`` and
    ``event`` numbers (int64); ``entry`` is the entry number of each event in its file.
    ``branches`` names where each float column came from, for messages: column key
    (``"jet.pt"``, ``"met_et"``, ``"weight"``) -> branch name, or a description such as
    ``"jet.pt from jetPx, jetPy"`` for a column computed from several branches.
    """

    collections: Mapping[str, Jagged]
    met_et: np.ndarray
    met_phi: np.ndarray
    weight: np.ndarray
    run: np.ndarray
    event: np.ndarray
    entry: np.ndarray
    branches: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return len(self.met_et)
