"""The coffea processor of jet inputs: one chunk of jets in, one staging piece out.

The same processor shell as the event-level one (:class:`megaset.pipeline.processor.RMMProcessor`:
pieces keyed by input chunk, resumed when finished, errors returned to the driver); only what
a chunk becomes differs. Each entry is one jet given by its constituents (``jets.schema``:
flat or jagged branches, polar or Cartesian); the jet is the four-vector sum of its
constituents. The jet-level selection (``jets.selection``) keeps jets with enough finite
constituents inside the pT window and |eta| range; the staged columns of a kept jet are:

=================  =========================  =============================================
``image``          [1600] float32, sparse     the preprocessed jet image, 40 x 40 flattened
``constituents``   [K, 4] float32             leading K constituents (pT, deta, dphi, E)
``tau``            [N] float32                N-subjettiness tau_1 .. tau_N
``jet_pt`` ...     float32                    jet pT, eta, phi, mass; tau21, tau32
``n_constituents`` int16                      constituents of the jet
=================  =========================  =============================================

plus ``weight``, ``channel`` and ``event_id`` as for events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megaset.config import JetsConfig, SchemaConfig
from megaset.errors import NonFiniteInputError
from megaset.pipeline.processor import RMMProcessor, base_columns

__all__ = ["JetProcessor", "jet_columns", "feature_names", "jet_selection"]


def feature_names(jets: JetsConfig) -> list[str]:
    """Names of the features of the store's feature column (``jets.feature``).

    >>> feature_names(JetsConfig())[:2], len(feature_names(JetsConfig()))
    (['pix_00_00', 'pix_00_01'], 1600)
    """
    if jets.feature == "image":
        side = jets.image.padded
        return [f"pix_{r:02d}_{c:02d}" for r in range(side) for c in range(side)]
    if jets.feature == "constituents":
        return [f"c{k}_{f}" for k in range(jets.constituents) for f in ("pt", "deta", "dphi", "e")]
    return [f"tau{n}" for n in range(1, jets.subjettiness + 1)]


def jet_selection(kin: dict[str, np.ndarray], counts: np.ndarray, bad: np.ndarray, jets: JetsConfig,
                  filename: str) -> tuple[np.ndarray, list[list[Any]]]:
    """The kept jets and the cut flow ``[step, raw, weighted]`` (unit weights)."""
    sc = jets.selection
    if bad.any() and sc.on_nonfinite == "fail":
        msg = (f"{int(bad.sum())} jets with NaN or inf constituents; set jets.selection.on_nonfinite: drop "
               "to count and drop them")
        raise NonFiniteInputError(filename, msg)
    steps = [
        ("finite", ~bad),
        (f"n_constituents >= {sc.min_constituents}", counts >= sc.min_constituents),
        (f"{sc.pt_min:g} <= pT < {sc.pt_max:g}", (kin["pt"] >= sc.pt_min) & (kin["pt"] < sc.pt_max)),
        (f"|eta| < {sc.abs_eta_max:g}", np.abs(kin["eta"]) < sc.abs_eta_max),
    ]
    keep = np.ones(len(counts), dtype=bool)
    cutflow = [["all", len(counts), float(len(counts))]]
    for name, mask in steps:
        keep &= mask
        cutflow.append([name, int(keep.sum()), float(keep.sum())])
    return keep, cutflow


def jet_columns(pt, eta, phi, energy, offsets, jets: JetsConfig) -> dict[str, Any]:
    """The feature and aux columns of the jets given by their constituents (see the module docstring)."""
    from megaset.pipeline.jet_features import jet_images, jet_kinematics, leading_constituents, nsubjettiness

    kin = jet_kinematics(pt, eta, phi, energy, offsets)
    taus, axes = nsubjettiness(pt, eta, phi, energy, offsets, jets.subjettiness)
    image = jet_images(pt, eta, phi, offsets, pixels=jets.image.pixels, padded=jets.image.padded,
                       extent=jets.image.extent, center=jets.image.center, axes=axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau21 = np.where(taus[:, 0] > 0, taus[:, 1] / taus[:, 0], 0.0)
        tau32 = np.where(taus[:, 1] > 0, taus[:, 2] / taus[:, 1], 0.0)
    return {
        "image": image,
        "constituents": leading_constituents(pt, eta, phi, energy, offsets, kin["eta"], kin["phi"], jets.constituents),
        "tau": taus,
        **{f"jet_{k}": v.astype(np.float32) for k, v in kin.items()},
        "tau21": tau21.astype(np.float32),
        "tau32": tau32.astype(np.float32),
        "n_constituents": np.diff(offsets).astype(np.int16),
    }


class JetProcessor(RMMProcessor):
    """Turns chunks of jet constituents into staging pieces (parameters as :class:`RMMProcessor`)."""

    @property
    def schema(self) -> SchemaConfig:
        return self.cfg.jets.schema

    def build(self, source, channel: str, filename: str, start: int) -> tuple[dict[str, Any], list, dict[str, int]]:
        from megaset.pipeline.jet_features import jet_kinematics
        from megaset.pipeline.schema import nonfinite_events

        jets = self.cfg.jets
        ev = self.events(source, channel, filename, start)
        bad, nonfinite = nonfinite_events(ev)
        const = ev.collections[jets.collection]
        pt, eta, phi, mass = (np.asarray(const[c], dtype=np.float64) for c in ("pt", "eta", "phi", "mass"))
        energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
        clean = {k: np.nan_to_num(v) for k, v in (("pt", pt), ("eta", eta), ("phi", phi), ("e", energy))}
        kin = jet_kinematics(clean["pt"], clean["eta"], clean["phi"], clean["e"], const.offsets)
        keep, cutflow = jet_selection(kin, const.counts(), bad, jets, filename)
        kept = const.select_events(keep)
        take = np.repeat(keep, const.counts())
        columns = jet_columns(pt[take], eta[take], phi[take], energy[take], kept.offsets, jets)
        ids = base_columns(ev.weight[keep], ev.run[keep], ev.event[keep], ev.entry[keep],
                           self.channel_ids[channel], self.file_index[filename],
                           self.weight_scale[filename])
        return {**columns, **ids}, cutflow, nonfinite
