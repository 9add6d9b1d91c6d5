"""``train``: the public entry point of the training stage.

One function for every way of running it:

* ``train(cfg)``: one process (a GPU if there is one);
* ``train(cfg, client)``: DDP ranks as tasks on the workers of a Dask cluster, one per worker
  (``training.ddp.world_size`` limits them);
* under ``torchrun``: each process calls ``train(cfg)`` and becomes the rank torchrun gave it
  (``python -m megaset.training`` does that);
* ``training.model: pca``: fitted with dask-ml over the chunks of the train group (on the
  client's cluster when one is active), with its scree plot.

Rank 0 writes ``<training.output>/<model>/{best,last}.pt`` and ``loss.png``; with ranks on a
cluster, ``training.output`` must be a folder the workers share (every rank reads ``last.pt``
when resuming), and ``store.url`` a store they can all read.

>>> summary = train(cfg, client, progress=lambda e: print(e["epoch"], e["val_loss"]))  # doctest: +SKIP
>>> summary["checkpoints"]["best"]                                                      # doctest: +SKIP
'megaset-demo/models/ae-shallow/best.pt'
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from megaset.config import Config

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["train"]

Progress = Callable[[dict[str, Any]], None]
_FARINA_LATENT = 6


def train(
    cfg: Config, client: Client | None = None, *, resume: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Train ``cfg.training.model`` on the store ``cfg.store.url``.

    Parameters
    ----------
    cfg
        The whole configuration; it is saved in every checkpoint.
    client
        A Dask client: ranks run on its workers. ``None``: this process (or torchrun's ranks).
    resume
        Continue from ``<training.output>/<model>/last.pt`` when it exists; the result is the
        same as that of an uninterrupted run with the same seed.
    progress
        Called after every epoch with ``epoch, loss, val_loss`` (weighted by |w|, the metric
        early stopping and the best checkpoint follow), ``val_loss_weighted`` (weighted as the
        training loss), ``val_error, samples_per_s, seconds, improved``.

    Returns
    -------
    dict
        ``model, epochs, best_epoch, best_val_loss, samples_per_s, stopped_early, world_size,
        checkpoints {best, last}, loss_curve, history``; for ``pca`` also ``latent`` and
        ``scree_plot``.

    Raises
    ------
    TrainingError
        When a rank fails or dies (the others are stopped; ``resume=True`` continues).
    CheckpointError
        When ``resume`` finds a checkpoint trained with other settings.
    """
    from megaset.training.ddp import choose_backend, process_group, run_on_dask
    from megaset.training.loop import fit
    from megaset.training.registry import CUTS

    tc = cfg.training
    if tc.model == "pca" or tc.model in CUTS:
        # dask-ml fits on the current client's cluster: this one, not another the process holds.
        with client.as_current() if client is not None else contextlib.nullcontext():
            return _fit_fixed(cfg, resume=resume, progress=progress)
    if client is not None:
        results = run_on_dask(
            client, _fit_rank, cfg.resolved(), resume, world_size=tc.ddp.world_size,
            backend=tc.ddp.backend, timeout_s=tc.ddp.timeout_s, progress=progress,
        )
        return results[0]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch

        rank = int(os.environ["RANK"])
        backend = choose_backend(tc.ddp.backend, torch.cuda.is_available())
        with process_group(backend, rank=rank, world_size=world, init_method="env://",
                           timeout_s=tc.ddp.timeout_s):
            return fit(cfg, resume=resume, report=progress if rank == 0 else None)
    return fit(cfg, resume=resume, report=progress)


def _fit_rank(resolved: dict[str, Any], resume: bool, *, report: Progress | None) -> dict[str, Any]:
    from megaset.training.loop import fit

    return fit(Config.model_validate(resolved), resume=resume, report=report)


def _fit_fixed(cfg: Config, *, resume: bool, progress: Progress | None) -> dict[str, Any]:
    """Fit (or, resuming, reload) the PCA baseline, or set up a cut baseline (tau32, tau21) that
    has nothing to fit; validation (and for PCA the scree plot) as for the networks."""
    import torch

    from megaset.storage.store import open_store
    from megaset.training.checkpoint import load_checkpoint, save_checkpoint
    from megaset.training.loop import (
        check_resumable,
        checkpoint_payload,
        datasets,
        evaluate,
        model_inputs,
        output_paths,
        summary,
    )
    from megaset.training.pca import fit_pca
    from megaset.training.plots import loss_curve, scree_plot
    from megaset.training.registry import build_model, resolve_architecture

    tc = cfg.training
    pca = tc.model == "pca"
    paths = output_paths(tc)
    store = open_store(cfg.store.url)
    column, features, scaling = model_inputs(store, tc)
    arch = resolve_architecture(tc.model, len(features), tc.architecture)
    if resume and paths["last"].is_file():
        ckpt = load_checkpoint(paths["last"])
        # The fitted latent size is only known after the fit: compare the rest.
        check_resumable(ckpt, cfg, {**arch, "latent": ckpt["architecture"]["latent"]}, features, paths["last"],
                        store)
        out = summary(cfg, ckpt["progress"], ckpt["history"], [], 1)
        return {**out, "latent": ckpt["architecture"]["latent"], **({"scree_plot": str(paths["scree"])} if pca else {})}

    start = time.perf_counter()
    if pca:
        # Jet images: Farina et al.'s k = 6 unless configured (the scree plot is drawn all the same).
        latent = tc.architecture.latent or (_FARINA_LATENT if store.kind == "jets" else None)
        model = fit_pca(cfg.store.url, "train", scaling, latent=latent,
                        variance=tc.architecture.pca_variance, max_events=tc.architecture.pca_max_events,
                        column=column)
        arch["latent"] = int(model.components.shape[0])
        n_fitted = model.n_fitted
    else:
        model, n_fitted = build_model(tc.model, len(features), arch), store.group("train").n_events
    seconds = max(time.perf_counter() - start, 1e-9)
    device = torch.device("cpu")
    train_data, val_data = datasets(store, tc.model_copy(update={"adversary": None}), column, scaling, shuffle=False)
    loss = evaluate(model, train_data, tc, device)["loss_weighted"]
    val = evaluate(model, val_data, tc, device)
    val_loss = val["loss"]
    entry = {"epoch": 1, "loss": loss, "val_loss": val_loss, "val_loss_weighted": val["loss_weighted"],
             "val_error": val["error"], "samples_per_s": n_fitted / seconds, "seconds": seconds, "improved": True}
    state = {"epoch": 1, "best_val_loss": val_loss, "best_epoch": 1, "bad_epochs": 0}
    payload = checkpoint_payload(cfg, arch, features, model, scaling, state, [entry], store=store, world_size=1,
                                 input_column=column)
    save_checkpoint(paths["best"], payload)
    save_checkpoint(paths["last"], payload)
    out = summary(cfg, state, [entry], [entry["samples_per_s"]], 1)
    if pca:
        scree_plot(model.explained_variance_ratio.numpy(), arch["latent"], tc.architecture.pca_variance,
                   paths["scree"])
        out |= {"latent": arch["latent"], "scree_plot": str(paths["scree"])}
    loss_curve([entry], paths["loss_curve"], title=f"{tc.model} on {cfg.store.url}")
    if progress is not None:
        progress(entry)
    return out
