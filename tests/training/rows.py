"""Helpers of the score-family tests: scaled rows of a store group, and events made anomalous by
destroying the background's correlations."""

from __future__ import annotations

import numpy as np

from megaset.config import Config


def scaled_rows(cfg: Config, group: str) -> np.ndarray:
    """The rows of a group of ``cfg``'s store, scaled as training scales them (min-max), float32."""
    from megaset.storage.store import open_store
    from megaset.training.scaling import Scaling

    store = open_store(cfg.store.url)
    scaling = Scaling.from_scaler(store.scaler)
    return np.concatenate([scaling(c["rmm"]) for _, c in store.group(group).iter_chunks(("rmm",))])


def decorrelated(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """Each feature of ``x`` permuted over the events on its own: every feature's distribution
    is kept, the correlations that make the background are gone. A score of the distance to
    the per-feature mean barely tells such events from ``x``; a model of the background should."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(x[:, f]) for f in range(x.shape[1])], axis=1)



def separations(cfg: Config, checkpoint: str) -> tuple[float, float]:
    """The AUCs with which the distance to the per-feature train mean and the score of the model
    of ``checkpoint`` tell the decorrelated validation events from the validation events."""
    from megaset.report.metrics import auc
    from megaset.training.checkpoint import load_model
    from megaset.training.score import reconstruction_errors

    val = scaled_rows(cfg, "val")
    mean = scaled_rows(cfg, "train").mean(0)
    off = decorrelated(val)
    model, _, _ = load_model(checkpoint)
    baseline = auc(*[((x - mean) ** 2).mean(1) for x in (val, off)])
    return baseline, auc(*[reconstruction_errors(model, x)["total"] for x in (val, off)])


def stored_and_rebuilt(cfg: Config, name: str, group: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the events of ``group``: the ``score/<name>`` column that scoring wrote, the score of
    the model rebuilt from its best checkpoint on their rows, and those rows scaled. Checks that
    scoring wrote no per-block column beside it."""
    import torch

    from megaset.storage.store import open_store
    from megaset.training.checkpoint import load_model

    model, scaling, _ = load_model(f"{cfg.training.output}/{name}/best.pt")
    g = open_store(cfg.store.url).group(group)
    assert not [c for c in g.columns() if c.startswith(f"score/{name}.")]
    values = [v for _, v in g.iter_chunks(("rmm", f"score/{name}"))]
    x = scaling(np.concatenate([v["rmm"] for v in values]))
    with torch.no_grad():
        direct = model.reconstruction_error(torch.from_numpy(x)).numpy()
    return np.concatenate([v[f"score/{name}"] for v in values]), direct, x
