"""The training loop that every rank runs, alone or under ``torch.distributed``.

The rank and world size come from ``torch.distributed`` (initialised by the launcher in
:mod:`megaset.training.ddp`, or not at all for a single process). Each rank streams its own
chunks of the train group; DDP averages the gradients. The model is initialised with
``torch.manual_seed(training.seed)`` and the torch generator is reseeded from
``(seed, epoch, rank)`` at the start of every epoch, so that a run resumed from the checkpoint of
epoch e draws the same random numbers (VAE sampling) as an uninterrupted one.

Loss per batch: ``mean(w_i * l_i)`` with ``l_i`` the per-event objective (mean squared error
over features, plus the KL term of a VAE) and ``w_i`` the event weight after the
``negative_weights`` policy, normalised so that the train group's mean weight is 1 (the step
size does not depend on the cross-section units).

The policy's effect on the loss: with ``keep``, an event of negative weight (NLO generators)
*lowers* the loss by being reconstructed badly, so the gradient pushes its error up. In
expectation such events cancel positive ones of the same phase space, but a network that can
tell training events apart learns to mis-reconstruct the negative ones: the training loss falls
below the error of any event and can go negative (the demo's did from about epoch 10 at
batch 512). ``abs`` counts every event by |w| and ``zero`` leaves the negative ones out; neither
rewards a bad reconstruction.

Validation, over the whole val group and summed over ranks: ``val_loss``, the monitored metric
(early stopping, best checkpoint), is the objective weighted by |w|, ``sum |w_i| l_i /
sum |w_i|``, whatever the policy, so that no event can improve it by being reconstructed
badly; ``val_loss_weighted`` is the objective with the policy's weights (what the training
loss estimates) and ``val_error`` the |w|-weighted mean squared error alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from megaset.config import Config, TrainingConfig
from megaset.errors import CheckpointError, ConfigError
from megaset.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from megaset.training.ddp import local_rank, rank_device
from megaset.training.loader import ChunkDataset
from megaset.training.models import Autoencoder, per_event_loss
from megaset.training.registry import build_model, resolve_architecture
from megaset.training.scaling import Scaling

if TYPE_CHECKING:
    from megaset.storage.store import StoreGroup

__all__ = [
    "fit", "model_inputs", "train_epoch", "output_paths", "event_weights", "weight_norm", "evaluate", "check_resumable",
    "checkpoint_payload", "summary", "recorded_summary", "RESUME_KEYS", "train_record", "training_finished",
]

#: Settings a resumed run must share with the checkpoint it continues.
RESUME_KEYS = ("model", "seed", "batch_size", "learning_rate", "scaling", "weighted", "negative_weights")


def output_paths(cfg: TrainingConfig) -> dict[str, Path]:
    """Where the checkpoints and plots of the configured model go: ``<output>/<model>/``."""
    base = Path(cfg.output) / cfg.model
    return {"best": base / "best.pt", "last": base / "last.pt", "loss_curve": base / "loss.png",
            "scree": base / "scree.png"}


def event_weights(weight: torch.Tensor, cfg: TrainingConfig, policy: str | None = None) -> torch.Tensor:
    """Event weights as the loss uses them, before normalisation; ``policy`` in place of
    ``cfg.negative_weights`` (the validation metric uses ``abs``)."""
    policy = policy or cfg.negative_weights
    if not cfg.weighted:
        return torch.ones_like(weight)
    if policy == "abs":
        return weight.abs()
    if policy == "zero":
        return weight.clamp(min=0)
    return weight


def weight_norm(group: StoreGroup, cfg: TrainingConfig) -> float:
    """``n_events / sum of weights`` of the train group: makes the mean loss weight 1."""
    total, n = 0.0, 0
    for _, chunk in group.iter_chunks(columns=("weight",)):
        w = event_weights(torch.from_numpy(np.asarray(chunk["weight"], dtype=np.float64)), cfg)
        total += float(w.sum())
        n += len(w)
    if not total > 0:
        msg = (
            f"the event weights of group {group.name!r} sum to {total:g} with "
            f"training.negative_weights={cfg.negative_weights!r}; use 'abs' or 'zero', or "
            "training.weighted: false"
        )
        raise ConfigError(msg)
    return n / total


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    """This rank's device: its own GPU under nccl (or without DDP where there is one), else the CPU."""
    dist = torch.distributed
    on_gpu = torch.cuda.is_available() and (
        not (dist.is_available() and dist.is_initialized()) or dist.get_backend() == "nccl"
    )
    device = torch.device(rank_device(on_gpu, local_rank(), torch.cuda.device_count() if on_gpu else 0))
    if device.type == "cuda":
        # The current device too: pinned memory and nccl's own buffers open a context on it.
        torch.cuda.set_device(device)
    return device


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _rank_world()[1] > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def _all_sum_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` summed over the ranks (float64, on ``t``'s device)."""
    return torch.tensor(_all_sum(t.tolist(), device), dtype=torch.float64, device=t.device)


def _all_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows of ``t`` (on the host) of every rank, rank after rank."""
    if _rank_world()[1] == 1:
        return t
    parts: list[Any] = [None] * _rank_world()[1]
    torch.distributed.all_gather_object(parts, t.numpy())
    return torch.from_numpy(np.concatenate(parts))


def _rows(store: Any, tc: TrainingConfig, column: str, scaling: Scaling,
          device: torch.device) -> Iterable[torch.Tensor]:
    """This rank's scaled rows of the train group, unshuffled, on ``device``: read only when iterated."""
    for x, _ in datasets(store, tc, column, scaling, shuffle=False, device=device)[0]:
        yield x.to(device, non_blocking=True)


def evaluate(
    model: Autoencoder, dataset: ChunkDataset, cfg: TrainingConfig, device: torch.device
) -> dict[str, float]:
    """The validation metrics of a whole group (see the module documentation).

    Returns ``loss`` (the objective weighted by |w|, the monitored metric), ``loss_weighted``
    (weighted as the training loss is) and ``error`` (the |w|-weighted mean squared error).
    Every rank reads its shard; the sums are added over ranks, so all ranks get the same values.
    A model that calibrates its score (an ensemble) is calibrated on the whole group here, every
    rank's values gathered on every rank, so that each checkpoint holds the calibration of its
    own weights.
    """
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    values = []
    with torch.no_grad():
        for x, weight in dataset:
            x = x.to(device, non_blocking=True)
            weight = weight.to(device)
            w, a = event_weights(weight, cfg).double(), event_weights(weight, cfg, "abs").double()
            reconstruction, penalty = model(x)
            error = model.error(reconstruction, x).double()
            loss = error + penalty
            sums += torch.stack([(a * loss).sum(), (a * error).sum(), a.sum(), (w * loss).sum(), w.sum()])
            if model.calibrates:
                values.append(model.calibration_values(reconstruction, x).cpu())
    loss_sum, error_sum, a_sum, weighted_sum, w_sum = _all_sum(sums.tolist(), device)
    if model.calibrates:
        model.calibrate(_all_rows(torch.cat(values)).to(device))
    return {"loss": loss_sum / a_sum, "loss_weighted": weighted_sum / w_sum, "error": error_sum / a_sum}


def model_inputs(store: Any, tc: TrainingConfig) -> tuple[str, list[str], Scaling]:
    """The store column ``tc.model`` reads, the names of its features, and their scaling.

    The store's feature column is scaled by ``training.scaling`` from its train statistics;
    another column (a jet's constituents or N-subjettiness) has none and is read as stored.
    """
    from megaset.training.registry import input_column

    column = input_column(tc.model, store.feature_column)
    if column == store.feature_column:
        names = list(store.feature_names)
        return column, names, Scaling.from_scaler(store.scaler, tc.scaling)
    shape = store.group("train").column_info(column)["shape"][1:]
    names = [f"{column}_{k}" for k in range(int(np.prod(shape, dtype=np.int64)))]
    return column, names, Scaling.identity(len(names))


def datasets(store: Any, tc: TrainingConfig, column: str, scaling: Scaling,
             *, shuffle: bool = True, device: str | torch.device = "cpu") -> tuple[ChunkDataset, ChunkDataset]:
    """The train loader (shuffled, equal batches on every rank, unless not ``shuffle``: then
    read once in order, as for evaluation) and the val loader of ``tc``, handing their batches
    over on ``device``."""
    loader = {"read_ahead": tc.loader.read_ahead, "threads": tc.loader.threads,
              "shuffle_chunks": tc.loader.shuffle_chunks, "cache_mib": tc.loader.cache_mib, "column": column,
              "context": tc.adversary.column if tc.adversary else None, "device": device}
    train_data = ChunkDataset(store.group("train"), batch_size=tc.batch_size, scaling=scaling, seed=tc.seed,
                              shuffle=shuffle, equal_batches=shuffle, **loader)
    val_data = ChunkDataset(store.group("val"), batch_size=tc.batch_size, scaling=scaling, shuffle=False,
                            equal_batches=False, **loader)
    return train_data, val_data


def train_record(cfg: Config, mixed: str | None) -> dict[str, Any]:
    """The stage record (:mod:`megaset.provenance`) of training ``cfg.training`` on the store
    whose mix has the fingerprint ``mixed``."""
    from megaset.provenance import record

    return record("train", cfg, upstream={"mix": mixed})


def _mixed(store: Any) -> str | None:
    return (store.attrs.get("stage") or {}).get("fingerprint")


def training_finished(ckpt: dict[str, Any]) -> bool:
    """Whether the run that wrote ``ckpt`` has ended (all epochs, or early stopping); a fitted
    baseline (PCA, a cut) ends with its one checkpoint."""
    from megaset.training.registry import CUTS

    tc = ckpt["config"]["training"]
    if tc["model"] == "pca" or tc["model"] in CUTS:
        return True
    progress = ckpt["progress"]
    return bool(progress["epoch"] >= tc["epochs"] or progress["bad_epochs"] >= tc["early_stopping"]["patience"])


def check_resumable(
    ckpt: dict[str, Any], cfg: Config, arch: dict[str, Any], features: list[str], path: Path, store: Any = None,
) -> None:
    """Refuse to continue a checkpoint under settings that would change its result, or on a
    store rebuilt since (``store``: the one training reads)."""
    if store is not None and "stage" in ckpt:
        was = ckpt["stage"]["basis"]["upstream"].get("mix")
        now = _mixed(store)
        if was != now:
            msg = (
                f"cannot resume from {str(path)!r}: store {store.url!r} was rebuilt since it was written "
                f"(mix fingerprint {str(was)[:12]} there, {str(now)[:12]} now); train afresh without resume"
            )
            raise CheckpointError(msg)
    saved = ckpt["config"]["training"]
    wanted = cfg.training.model_dump(mode="json")
    found = [(k, saved[k], wanted[k]) for k in RESUME_KEYS if saved[k] != wanted[k]]
    if ckpt["architecture"] != arch:
        found.append(("architecture", ckpt["architecture"], arch))
    if ckpt["feature_names"] != features:
        found.append(("feature names", f"{len(ckpt['feature_names'])} features",
                      f"{len(features)} features"))
    if found:
        key, old, new = found[0]
        msg = (
            f"cannot resume from {str(path)!r}: training.{key} is {old!r} there, found {new!r} "
            "instead in this configuration; restore the setting, or train afresh without resume "
            "(or with another training.output)"
        )
        raise CheckpointError(msg)


def train_epoch(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainingConfig,
    norm: float, device: torch.device,
) -> tuple[float, int]:
    """One optimisation pass over ``data``'s batches of ``(x, raw weight)``.

    Returns the sum over batches of (batch loss x batch size) and the number of events seen.
    """
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = 0
    for x, weight in data:
        x = x.to(device, non_blocking=True)
        w = event_weights(weight.to(device, non_blocking=True), cfg) * norm
        loss = torch.mean(w * per_event_loss(net, net(x), x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: a .item() per step would synchronise a GPU every batch.
        loss_sum += loss.detach() * len(w)
        n_seen += len(w)
    return float(loss_sum), n_seen


def fit(cfg: Config, *, resume: bool = False, report: Callable[[dict[str, Any]], None] | None = None) -> dict:
    """Train ``cfg.training.model`` on this rank's share of the store; return a summary.

    Parameters
    ----------
    cfg
        The whole configuration (store URL, training settings; saved in the checkpoints).
    resume
        Continue from ``<output>/<model>/last.pt`` when it exists, exactly where it stopped.
    report
        Called on rank 0 after every epoch with ``epoch, loss, val_loss, val_loss_weighted,
        val_error, samples_per_s, seconds, improved``.

    Returns
    -------
    dict
        ``model, epochs, best_epoch, best_val_loss, samples_per_s, stopped_early, world_size,
        checkpoints, history`` (rank 0 writes the checkpoints).
    """
    from torch.nn.parallel import DistributedDataParallel

    from megaset.storage.store import open_store

    tc = cfg.training
    if tc.model == "pca":
        msg = "training.model 'pca' is fitted, not trained by gradient steps: call megaset.training.trainer.train"
        raise ConfigError(msg)
    rank, world = _rank_world()
    device = _device()
    store = open_store(cfg.store.url)
    column, features, scaling = model_inputs(store, tc)
    train_group = store.group("train")
    arch = resolve_architecture(tc.model, len(features), tc.architecture, tc.adversary)
    paths = output_paths(tc)

    torch.manual_seed(tc.seed)
    model = build_model(tc.model, len(features), arch).to(device)
    if column == store.feature_column:
        stats = store.scaler
        mean = scaling(stats["mean"][None, :].astype(np.float32))[0]
        rms = float(np.sqrt(np.mean((stats["std"] * scaling.factor) ** 2 + mean.astype(np.float64) ** 2)))
        model.start_from_train(torch.from_numpy(mean).to(device), rms)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.learning_rate)
    train_data, val_data = datasets(store, tc, column, scaling, device=device)

    progress = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0}
    history: list[dict[str, Any]] = []
    if resume and paths["last"].is_file():
        ckpt = load_checkpoint(paths["last"])  # on the CPU: RNG states must stay there
        check_resumable(ckpt, cfg, arch, features, paths["last"], store)
        model.load_state_dict(ckpt["state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        train_data.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        progress, history, norm = ckpt["progress"], ckpt["history"], ckpt["weight_norm"]
    else:
        norm = weight_norm(train_group, tc)
        model.start_from_pass(_rows(store, tc, column, scaling, device), lambda t: _all_sum_tensor(t, device))

    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    rates = []
    while progress["epoch"] < tc.epochs and progress["bad_epochs"] < tc.early_stopping.patience:
        epoch = progress["epoch"]
        torch.manual_seed(int(np.random.SeedSequence([tc.seed, epoch, rank]).generate_state(1)[0]))
        start = time.perf_counter()
        loss_sum, n_seen = train_epoch(net, optimizer, train_data, tc, norm, device)
        seconds = time.perf_counter() - start
        loss_total, n_total = _all_sum([loss_sum, n_seen], device)
        val = evaluate(model, val_data, tc, device)
        val_loss = val["loss"]
        improved = val_loss < progress["best_val_loss"] - tc.early_stopping.min_delta
        progress = {
            "epoch": epoch + 1,
            "best_val_loss": val_loss if improved else progress["best_val_loss"],
            "best_epoch": epoch + 1 if improved else progress["best_epoch"],
            "bad_epochs": 0 if improved else progress["bad_epochs"] + 1,
        }
        entry = {"epoch": epoch + 1, "loss": loss_total / n_total, "val_loss": val_loss,
                 "val_loss_weighted": val["loss_weighted"], "val_error": val["error"],
                 "samples_per_s": n_total / seconds, "seconds": seconds, "improved": bool(improved)}
        history.append(entry)
        rates.append(entry["samples_per_s"])
        if rank == 0:
            payload = checkpoint_payload(
                cfg, arch, features, model, scaling, progress, history, store=store, world_size=world,
                input_column=column,
                optimizer=optimizer.state_dict(), weight_norm=norm, loader=train_data.state_dict(),
            )
            if improved:
                save_checkpoint(paths["best"], payload)
            save_checkpoint(paths["last"], payload)
            if report is not None:
                report(entry)
        if world > 1:
            torch.distributed.barrier()

    if rank == 0 and history:
        from megaset.training.plots import loss_curve

        loss_curve(history, paths["loss_curve"], title=f"{tc.model} on {cfg.store.url}")
    return summary(cfg, progress, history, rates, world)


def checkpoint_payload(
    cfg: Config, arch: dict[str, Any], features: list[str], model: Autoencoder, scaling: Scaling,
    progress: dict[str, Any], history: list[dict[str, Any]], *, store: Any, **extra: Any,
) -> dict[str, Any]:
    """What every checkpoint holds; ``extra`` adds optimizer, loader and weight state. From the
    ``store`` trained on: the stage record (its mix fingerprint) and the store's kind and RMM
    settings, which scoring compares with the store it scores."""
    return {
        "model": cfg.training.model, "architecture": arch, "feature_names": features,
        "state": model.state_dict(), "rng": rng_state(), "scaling": scaling.state_dict(),
        "progress": progress, "history": history, "config": cfg.persisted(),
        "stage": train_record(cfg, _mixed(store)), "kind": store.kind, "rmm": store.attrs.get("rmm"), **extra,
    }


def recorded_summary(checkpoint: str | Path) -> dict[str, Any]:
    """What :func:`summary` said when the training of ``checkpoint`` finished, read back from the
    ``last.pt`` beside it (which holds every epoch), else from ``checkpoint`` itself.

    Raises
    ------
    CheckpointError
        When neither can be read.
    """
    path = Path(checkpoint)
    last = path.with_name("last.pt")
    ckpt = load_checkpoint(last if last.is_file() else path)
    # Only the training section: the rest of a saved configuration may predate this version.
    cfg = Config.model_validate({"training": ckpt["config"]["training"]})
    rates = [h["samples_per_s"] for h in ckpt["history"] if h.get("samples_per_s")]
    return summary(cfg, ckpt["progress"], ckpt["history"], rates, int(ckpt.get("world_size", 1)))


def summary(
    cfg: Config, progress: dict[str, Any], history: list[dict[str, Any]], rates: list[float], world: int
) -> dict[str, Any]:
    """The dict ``train`` returns: epochs, best val loss, samples/s, checkpoint paths, history."""
    paths = output_paths(cfg.training)
    return {
        "model": cfg.training.model,
        "epochs": progress["epoch"],
        "best_epoch": progress["best_epoch"],
        "best_val_loss": progress["best_val_loss"],
        "samples_per_s": float(np.mean(rates)) if rates else None,
        "stopped_early": progress["epoch"] < cfg.training.epochs,
        "world_size": world,
        "checkpoints": {"best": str(paths["best"]), "last": str(paths["last"])},
        "loss_curve": str(paths["loss_curve"]),
        "history": history,
    }
