"""The thesis' pT-altering test (sec. 3.7, figs. 4.7-4.16): are harder leptons anomalous?

Events of a background group the model never trained on (``report.pt_group``, the validation
group as in the thesis) are read again from their ntuples, by the file index and entry stored
in their event id, and go through the store's own schema mapping and selection. The pT of the
leading signal electron and of the leading signal muon of each event is multiplied by k (eta,
phi and mass kept), and the RMM is rebuilt by :func:`megaset.pipeline.rmm.build_rmm`, so that
every cell that depends on them follows: their E_T (sqrt(m^2 + (k pT)^2)), the delta E_T of the
next object of the same type (eq. 3.8), their m_T with the MET, their invariant masses with
every other object, and (for a massive lepton) the rapidity cells. MET is kept as measured:
the altered lepton is the anomaly. The rebuilt k = 1 matrices are checked against the stored
ones first, so the test runs on exactly the events of the store.

The altered events are scored with the model and compared with the unaltered ones: AUC, E10
and E100 of "altered" against "original" for every k, and the error distributions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megaset.config import Config
from megaset.errors import StoreError
from megaset.pipeline.objects import Jagged
from megaset.progress import Progress, steps

__all__ = ["pt_altering", "altered_rmms", "scale_leading"]

#: The object sources whose leading object is altered.
ALTERED = ("electrons", "muons")


def scale_leading(objects: Jagged, factor: float) -> Jagged:
    """The same objects with the pT of each event's highest-pT object multiplied by ``factor``.

    >>> j = Jagged.from_counts(np.array([2, 0, 1]), {"pt": np.array([30.0, 50.0, 20.0])})
    >>> scale_leading(j, 3.0)["pt"].tolist()
    [30.0, 150.0, 60.0]
    """
    pt = np.asarray(objects["pt"], dtype=np.float64).copy()
    counts = objects.counts()
    order = np.lexsort((-pt, objects.event_index()))
    leading = order[objects.offsets[:-1][counts > 0]]
    pt[leading] *= factor
    return Jagged(objects.offsets, {**objects.columns, "pt": pt})


def _inputs(store_attrs: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(f["index"]): f for f in store_attrs.get("inputs", [])}


def _store_config(store_attrs: Mapping[str, Any]) -> Config:
    """The configuration the store's events were selected with (ingest's, else the mix's)."""
    resolved = (store_attrs.get("ingest") or {}).get("config") or store_attrs["config"]
    return Config.model_validate(resolved)


def _read_file(info: Mapping[str, Any], entries: np.ndarray, built: Config):
    """The selection of the events ``entries`` (sorted) of one input file."""
    import uproot

    from megaset.pipeline.schema import read_events
    from megaset.pipeline.selection import select

    path = info["path"]
    lo, hi = int(entries[0]), int(entries[-1]) + 1
    with uproot.open(path) as f:
        arrays = f[info["tree"]].arrays(built.schema.branches(), entry_start=lo, entry_stop=hi, how=dict)
    sel = select(read_events(arrays, built.schema, path, entry_start=lo), built.selection, path)
    pos = np.searchsorted(sel.entry, entries)
    found = (pos < len(sel.entry)) & (sel.entry[np.minimum(pos, len(sel.entry) - 1)] == entries)
    if not found.all():
        msg = (
            f"{path}: {int((~found).sum())} events of the store (entries such as "
            f"{int(entries[~found][0])}) do not pass the store's selection any more; the file changed "
            "since ingest, rebuild the store"
        )
        raise StoreError(msg)
    keep = np.zeros(len(sel.entry), dtype=bool)
    keep[pos] = True
    return sel, keep


def altered_rmms(built: Config, inputs: Mapping[int, Mapping[str, Any]], event_id: np.ndarray,
                 factors: Sequence[float], step: Callable[[], None] = lambda: None) -> dict[float, np.ndarray]:
    """The RMMs of the events ``event_id [N, 4]`` with the leading electron and muon pT times
    each factor (1.0 included: the unaltered rebuild), in the order of ``event_id``; ``step()``
    after each input file read."""
    from megaset.pipeline.rmm import build_rmm, rmm_inputs

    n_features = built.rmm.size ** 2
    out = {k: np.empty((len(event_id), n_features), dtype=np.float32) for k in (1.0, *factors)}
    for file_index in np.unique(event_id[:, 2]):
        rows = np.flatnonzero(event_id[:, 2] == file_index)
        rows = rows[np.argsort(event_id[rows, 3], kind="stable")]
        if int(file_index) not in inputs:
            msg = f"the store lists no input file with index {int(file_index)}; it cannot be read again"
            raise StoreError(msg)
        sel, keep = _read_file(inputs[int(file_index)], event_id[rows, 3], built)
        objects = {name: jag.select_events(keep) for name, jag in sel.objects.items()}
        met, met_phi = sel.aux["met"][keep], sel.aux["met_phi"][keep]
        for k in out:
            altered = {**objects, **{s: scale_leading(objects[s], k) for s in ALTERED if s in objects and k != 1.0}}
            out[k][rows] = build_rmm(rmm_inputs(altered, built.rmm), met, met_phi, built.rmm)
        step()
    return out


def _read_group(group, limit: int) -> dict[str, np.ndarray]:
    parts, n = [], 0
    for _, values in group.iter_chunks(("event_id", "weight", "rmm")):
        parts.append(values)
        n += len(values["weight"])
        if n >= limit:
            break
    if not parts:
        msg = f"group {group.name!r} of {group.url!r} is empty: the pT-altering test has no events"
        raise StoreError(msg)
    return {k: np.concatenate([p[k] for p in parts])[:limit] for k in parts[0]}


def pt_altering(cfg: Config, *, model: str | None = None, checkpoint: str | Path | None = None,
                out_dir: str | Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the pT-altering test of ``model`` on the store ``cfg.store.url``.

    Parameters
    ----------
    cfg
        The configuration; ``report.pt_factors``, ``pt_group``, ``pt_events``, ``axis`` and
        ``bins`` apply. The input files listed in the store must still be readable.
    model, checkpoint
        As for :func:`megaset.training.score.score`.
    out_dir
        Where ``pt_altering_<model>.png`` and ``pt_altering_auc_<model>.png`` (and their PDFs)
        go; default ``report.output``. The table and the figures are added to the report in
        ``report.output``.
    progress
        Called as ``progress(done, total)`` in steps: each input file read again, the scoring of
        each factor (and of the original events), the figures.

    Returns
    -------
    dict
        ``model, group, events, rows`` (per factor: ``factor, auc, auc_error, e10, e100,
        mean_error``), ``original_mean_error``, ``plots``.

    Raises
    ------
    StoreError
        When the input files no longer give the stored events (checked cell by cell at k = 1).
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    from megaset.report import metrics, plots
    from megaset.report.markdown import add_study
    from megaset.report.report import axis_label, error_axis
    from megaset.report.style import Style
    from megaset.storage.store import open_store
    from megaset.studies.common import auc_cell, score_fingerprint, study_record
    from megaset.training.checkpoint import load_model
    from megaset.training.score import checkpoint_path, reconstruction_errors

    rc = cfg.report
    label = model or cfg.training.model
    params = {"kind": "pt-altering", "model": label, "checkpoint": None if checkpoint is None else str(checkpoint),
              "out_dir": None if out_dir is None else str(out_dir)}
    record = study_record(cfg, params, {"score": score_fingerprint(cfg, label)})
    store = open_store(cfg.store.url)
    values = _read_group(store.group(rc.pt_group), rc.pt_events)
    step = steps(progress, len(np.unique(values["event_id"][:, 2])) + len({1.0, *rc.pt_factors}) + 1)
    rmms = altered_rmms(_store_config(store.attrs), _inputs(store.attrs), values["event_id"], rc.pt_factors, step)
    if not np.array_equal(rmms[1.0], values["rmm"]):
        bad = int(np.count_nonzero(np.any(rmms[1.0] != values["rmm"], axis=1)))
        msg = (
            f"{bad} events of group {rc.pt_group!r} rebuilt from their ntuples differ from the stored RMMs "
            f"of {store.url!r}; the input files or the rmm code changed since ingest: rebuild the store"
        )
        raise StoreError(msg)
    net, scaling, _ = load_model(Path(checkpoint) if checkpoint else checkpoint_path(cfg, label))
    errors = {}
    for k, x in rmms.items():
        errors[k] = reconstruction_errors(net, scaling(x))["total"].astype(np.float64)
        step()
    weight = values["weight"].astype(np.float64)
    rows = []
    for k in rc.pt_factors:
        fpr, tpr, _ = metrics.roc_curve(errors[1.0], errors[k], weight, weight)
        rows.append({"factor": k, "auc": float(np.trapezoid(tpr, fpr)),
                     "auc_error": metrics.auc_error(errors[1.0], errors[k], weight, weight,
                                                    replicas=rc.auc_replicas),
                     "e10": metrics.signal_efficiency(fpr, tpr, 0.1),
                     "e100": metrics.signal_efficiency(fpr, tpr, 0.01),
                     "mean_error": float(np.average(errors[k], weights=np.abs(weight)))})
    out = Path(out_dir if out_dir is not None else rc.output)
    axis = {k: error_axis(e, rc.axis) for k, e in errors.items()}
    x_all = np.concatenate(list(axis.values()))
    edges = np.linspace(x_all.min(), x_all.max() + 1e-9, rc.bins + 1)
    # The altered samples are no processes: the original in grey, the factors along one colour map.
    ramp = colormaps["viridis"](np.linspace(0.0, 0.85, len(rc.pt_factors)))
    panel = plots.Panel(
        f"pT altering, {rc.pt_group} group", axis_label(label, rc.axis), edges,
        [plots.Component("original", axis[1.0], weight, colour="grey")],
        [plots.Component(f"leading e, mu pT x {k:g}", axis[k], weight, colour=to_hex(c))
         for k, c in zip(rc.pt_factors, ramp, strict=True)])
    style = Style.from_config(cfg, store.channels)
    files = {
        "errors": plots.stacked_panels(out / f"pt_altering_{label}.png", [panel], style=style),
        "auc": plots.curves(out / f"pt_altering_auc_{label}.png", np.asarray(rc.pt_factors),
                            {name: np.array([r[name] for r in rows]) for name in ("auc", "e10", "e100")},
                            errors={"auc": np.array([r["auc_error"] for r in rows])},
                            xlabel="pT factor k", ylabel="altered vs original", title=f"pT altering ({label})",
                            reference=0.5, style=style),
    }
    add_study(rc.output, f"pt-altering-{label}", title=f"pT altering ({label}, {len(weight):,} {rc.pt_group} events)",
              header=["factor k", "AUC", "E10", "E100", "mean error"],
              rows=[[r["factor"], auc_cell(r), r["e10"], r["e100"], r["mean_error"]] for r in rows],
              plots=list(files.values()), stage=record)
    step()
    return {"model": label, "group": rc.pt_group, "events": len(weight), "rows": rows,
            "original_mean_error": float(np.average(errors[1.0], weights=np.abs(weight))),
            "plots": {k: str(v) for k, v in files.items()}}
