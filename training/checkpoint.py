"""Checkpoints as tensors and plain data only, read back with ``torch.load(weights_only=True)``.

A checkpoint holds everything a run needs to continue exactly and everything scoring needs to
rebuild the model without the configuration: model name and resolved architecture, feature
names, parameters, optimizer state, epoch, RNG states (torch, numpy, python), input scaling,
weight normalisation, early-stopping state, loss history, loader state and the resolved config.
No code is pickled, so loading one cannot execute anything.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from megaset.errors import CheckpointError

if TYPE_CHECKING:
    from megaset.training.models import Autoencoder
    from megaset.training.scaling import Scaling

__all__ = ["FORMAT", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "load_model"]

#: Bumped when the layout of a checkpoint changes incompatibly.
FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The torch, numpy (legacy global) and python random states, as tensors and tuples."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically: a run killed while saving leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything but data.

    Raises
    ------
    CheckpointError
        If the file is missing, holds code or other objects than tensors and plain data, or
        was written in another checkpoint format.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"no checkpoint at {str(path)!r}: train first (megaset train), or check training.output"
        raise CheckpointError(msg)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError and more here
        # torch's message advises weights_only=False; keep only the reason, never that advice.
        found = re.search(r"WeightsUnpickler error: ([^.]*)", str(err))
        reason = found.group(1) if found else str(err).splitlines()[0] if str(err) else type(err).__name__
        msg = (
            f"cannot read checkpoint {str(path)!r} with torch.load(weights_only=True): {reason}; "
            "it is damaged or holds more than tensors and plain data, which megaset never loads"
        )
        raise CheckpointError(msg) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        msg = (
            f"checkpoint {str(path)!r}: found format {found!r} instead of {FORMAT}; retrain with "
            "this version of megaset"
        )
        raise CheckpointError(msg)
    return ckpt


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Autoencoder, Scaling, dict[str, Any]]:
    """The trained model (in eval mode) on ``map_location``, its input scaling (numpy, on the
    host) and the checkpoint's metadata (on the host).

    The checkpoint is always read onto the CPU and only the model is moved: its scaling and
    metadata are host data, and a tensor read straight onto a GPU cannot become numpy.

    >>> model, scaling, meta = load_model("megaset-demo/models/ae-shallow/best.pt", "cuda")  # doctest: +SKIP
    >>> errors = model.reconstruction_error(scaling.on("cuda")(torch.from_numpy(rmm).cuda()))  # doctest: +SKIP
    """
    from megaset.training.registry import build_model
    from megaset.training.scaling import Scaling

    ckpt = load_checkpoint(path, "cpu")
    model = build_model(ckpt["model"], len(ckpt["feature_names"]), ckpt["architecture"])
    model.load_state_dict(ckpt["state"])
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("state", "optimizer", "rng")}
    return model.to(map_location), Scaling.from_state_dict(ckpt["scaling"]), meta
