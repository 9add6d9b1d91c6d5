"""Input scaling from the store's train-group statistics, applied to each chunk as it is read.

``minmax`` maps the train range of every feature onto [0, 1], ``standard`` subtracts the train
mean and divides by the standard deviation. A feature constant in train keeps unit scale (only
the offset is subtracted), as scikit-learn's scalers do, which the thesis used: a value that
never occurred in training is passed on, not hidden.

>>> s = Scaling.from_scaler({"min": np.array([0.0, 5.0]), "max": np.array([10.0, 5.0])})
>>> s(np.array([[5.0, 7.0]], dtype=np.float32)).tolist()
[[0.5, 2.0]]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from megaset.errors import StoreError

if TYPE_CHECKING:
    import torch

__all__ = ["Scaling", "DeviceScaling"]

_NEEDS = {"minmax": ("min", "max"), "standard": ("mean", "std")}


@dataclass(frozen=True)
class Scaling:
    """``x -> (x - offset) * factor`` per feature, in float32."""

    kind: Literal["minmax", "standard", "none"]
    offset: np.ndarray
    factor: np.ndarray

    @classmethod
    def identity(cls, n_features: int) -> Scaling:
        """Features passed as stored (``training.scaling: none``, or a column without statistics)."""
        return cls("none", np.zeros(n_features, dtype=np.float32), np.ones(n_features, dtype=np.float32))

    @classmethod
    def from_scaler(
        cls, scaler: Mapping[str, np.ndarray], kind: Literal["minmax", "standard", "none"] = "minmax"
    ) -> Scaling:
        """Build from ``Store.scaler`` (per-feature ``min``, ``max``, ``mean``, ``std`` of train)."""
        if kind == "none":
            return cls.identity(len(scaler["min"]))
        missing = [key for key in _NEEDS[kind] if key not in scaler]
        if missing:
            msg = (
                f"the store's scaler statistics lack {', '.join(missing)} needed by "
                f"training.scaling={kind!r} (present: {', '.join(sorted(scaler)) or 'none'}); "
                "rebuild the store with `megaset mix`"
            )
            raise StoreError(msg)
        if kind == "minmax":
            offset = np.asarray(scaler["min"], dtype=np.float64)
            spread = np.asarray(scaler["max"], dtype=np.float64) - offset
        else:
            offset = np.asarray(scaler["mean"], dtype=np.float64)
            spread = np.asarray(scaler["std"], dtype=np.float64)
        factor = 1.0 / np.where(spread > 0, spread, 1.0)
        return cls(kind, offset.astype(np.float32), factor.astype(np.float32))

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The scaled features; ``out=x`` scales a float32 array in place (no allocation)."""
        out = np.subtract(x, self.offset, dtype=np.float32, out=out)
        out *= self.factor
        return out

    def cells(self, values: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Scaled ``values`` of single cells in feature ``columns``: the same float32 subtraction
        and multiplication as :meth:`__call__` on their rows, so bit for bit its cells.

        >>> s = Scaling.from_scaler({"min": np.array([0.0, 5.0]), "max": np.array([10.0, 5.0])})
        >>> s.cells(np.array([7.0, 5.0], dtype=np.float32), np.array([1, 0])).tolist()
        [2.0, 0.5]
        """
        out = np.subtract(values, self.offset[columns], dtype=np.float32)
        out *= self.factor[columns]
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors, loadable with ``torch.load(weights_only=True)``."""
        import torch

        return {"kind": self.kind, "offset": torch.from_numpy(self.offset.copy()),
                "factor": torch.from_numpy(self.factor.copy())}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Scaling:
        """Inverse of :meth:`state_dict`, from tensors on any device (a checkpoint read with a
        ``map_location``): the scaling itself stays numpy, on the host."""
        return cls(state["kind"], state["offset"].detach().cpu().numpy().astype(np.float32),
                   state["factor"].detach().cpu().numpy().astype(np.float32))

    def on(self, device: str | torch.device) -> DeviceScaling:
        """The same scaling with its constants on ``device``, for tensors there."""
        import torch

        return DeviceScaling(torch.from_numpy(self.offset).to(device), torch.from_numpy(self.factor).to(device))


@dataclass(frozen=True)
class DeviceScaling:
    """:class:`Scaling` on one device: ``x -> (x - offset) * factor`` in place on float32 tensors.

    The same float32 subtraction and multiplication as ``Scaling.__call__``, so on the CPU the
    result is bit for bit the numpy one; on a GPU, two elementwise passes over rows that are
    already there.

    >>> s = Scaling.from_scaler({"min": np.array([0.0, 5.0]), "max": np.array([10.0, 5.0])}).on("cpu")
    >>> import torch; s(torch.tensor([[5.0, 7.0]])).tolist()
    [[0.5, 2.0]]
    """

    offset: torch.Tensor
    factor: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, F]`` (a view too) scaled in place; returns it."""
        return x.sub_(self.offset).mul_(self.factor)
