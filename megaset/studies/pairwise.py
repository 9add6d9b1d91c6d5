"""grapa's pairwise matrix: every sample in turn is the background a model is trained on.

For each sample j of the staging area, the same staging area is mixed with ``store.background:
[j]`` into a store of its own (no second ingest), each model is trained on j's train group and
scores the store; cell (i, j) is the AUC of sample i (its ``signal/<i>`` group) against j's
test group. With 8 samples that is 56 off-diagonal comparisons per model; a cell is blue when i
is the more anomalous, white when the model cannot tell them apart, red when i looks *less*
anomalous than the sample trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megaset.config import Config
from megaset.progress import Progress, steps

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["pairwise", "pairwise_params"]


def pairwise_params(*, models: Sequence[str], workdir: str | Path, epochs: int | None) -> dict[str, Any]:
    """The arguments of a pairwise study, as its stage record holds them."""
    return {"kind": "pairwise", "models": list(models), "workdir": str(workdir), "epochs": epochs}


def _scores(group: Any, model: str) -> tuple[np.ndarray, np.ndarray]:
    from megaset.storage.scores import score_column

    column = score_column(model)
    parts = [v for _, v in group.iter_chunks((column, "weight"))]
    return np.concatenate([p[column] for p in parts]), np.concatenate([p["weight"] for p in parts])


def pairwise(cfg: Config, client: Client | None, *, models: Sequence[str], workdir: str | Path,
             epochs: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The train-on-each-sample AUC matrix of every model in ``models``; ``progress(done, total)``
    in steps: per sample trained on, its mix, then each model's training and scoring.

    Returns
    -------
    dict
        ``samples`` (names, in staging order), ``auc`` (model -> matrix, row = anomaly, column =
        the sample trained on; 0.5 on the diagonal), ``stores`` and ``stage`` (its record).
    """
    from megaset.report.metrics import auc
    from megaset.storage.mix import mix
    from megaset.storage.staging import staging_attrs
    from megaset.storage.store import open_store, remove_store
    from megaset.studies.common import study_record
    from megaset.training.score import score
    from megaset.training.trainer import train

    staged = staging_attrs(cfg.store.staging)
    record = study_record(cfg, pairwise_params(models=models, workdir=workdir, epochs=epochs),
                          {"ingest": (staged.get("stage") or {}).get("fingerprint")})
    names = [c["name"] for c in staged["channels"] if not c.get("data")]
    work = Path(workdir)
    matrices = {m: np.full((len(names), len(names)), 0.5) for m in models}
    stores = {}
    step = steps(progress, len(names) * (1 + 2 * len(models)))
    for j, trained_on in enumerate(names):
        base = work / trained_on
        derived = cfg.replace(
            store={"url": str(base / "store.zarr"), "staging_url": cfg.store.staging, "background": [trained_on],
                   "contamination": None},
            training={"output": str(base / "models"), **({"epochs": epochs} if epochs else {})},
        )
        remove_store(derived.store.url)  # mixed anew: an earlier one may come from another staging area
        mix(derived, client)
        step()
        for model in models:
            one = derived.replace(training={"model": model})
            train(one, client)
            step()
            score(one, client)
            step()
        store = open_store(derived.store.url)
        stores[trained_on] = derived.store.url
        for model in models:
            background, wb = _scores(store.group("test"), model)
            for i, anomaly in enumerate(names):
                if i != j:
                    values, w = _scores(store.group(f"signal/{anomaly}"), model)
                    matrices[model][i, j] = auc(background, values, wb, w)
    return {"samples": names, "auc": {m: v.tolist() for m, v in matrices.items()}, "stores": stores, "stage": record}
