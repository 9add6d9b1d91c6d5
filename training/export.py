"""``export``: a trained model as a file that runs without megaset (ONNX or TorchScript).

The exported model takes the raw rows of the store's feature column, flattened and as stored
(``rows [N, F]`` float32: RMM cells in GeV, before any scaling), applies the checkpoint's own
scaling (the one training and scoring use) and returns the per-event reconstruction error
(``error [N]`` float32), the number ``megaset score`` writes to ``score/<model>``. ``N`` is free.

ONNX goes through ``torch.onnx.export(dynamo=True)``, which traces the model with
``torch.export`` and translates it with onnxscript (both come with ``pip install
'megaset[export]'``, as onnxruntime, which checks the file). TorchScript uses ``torch.jit.trace``:
torch deprecates TorchScript, but many C++ and older deployments still load it with
``torch.jit.load``. Either way the written file is run once on rows spread over the train range
and compared with the model in torch before it is reported as written.

>>> export_model("models/ae-deep/best.pt", "ae-deep.onnx", "onnx")   # doctest: +SKIP
{'path': 'ae-deep.onnx', 'format': 'onnx', 'input': 'rows', 'output': 'error', ...}
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from megaset.errors import CheckpointError, MissingExtraError

if TYPE_CHECKING:
    import torch

    from megaset.training.models import Autoencoder
    from megaset.training.scaling import Scaling

__all__ = ["FORMATS", "export_model", "scoring_module", "default_path"]

FORMATS = ("onnx", "torchscript")
#: Names of the exported graph's input and output.
INPUT, OUTPUT = "rows", "error"
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
_EXTRA = "pip install 'megaset[export]'"
# The self-check's tolerance: ONNX Runtime fuses and reorders the float32 sums of a layer.
_RTOL, _ATOL = 1e-4, 1e-7


def default_path(checkpoint: str | Path, fmt: Literal["onnx", "torchscript"]) -> Path:
    """Beside the checkpoint: ``<dir>/model.onnx`` or ``<dir>/model.torchscript.pt``.

    >>> str(default_path("models/ae-deep/best.pt", "onnx"))
    'models/ae-deep/model.onnx'
    """
    return Path(checkpoint).with_name(f"model{_SUFFIX[fmt]}")


def scoring_module(model: Autoencoder, scaling: Scaling) -> torch.nn.Module:
    """``rows [N, F] -> error [N]``: the checkpoint's scaling, then the model's error, in eval mode."""
    import torch

    class RawRowsScorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # Buffers, not constants: they travel with the weights into either format.
            self.register_buffer("offset", torch.from_numpy(scaling.offset.copy()))
            self.register_buffer("factor", torch.from_numpy(scaling.factor.copy()))

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            # The float32 subtraction and multiplication of Scaling.__call__, out of place.
            return self.model.reconstruction_error((rows - self.offset) * self.factor)

    return RawRowsScorer().eval()


def export_model(checkpoint: str | Path, output: str | Path | None = None,
                 fmt: Literal["onnx", "torchscript"] = "onnx") -> dict[str, Any]:
    """Write the model of ``checkpoint`` as ``fmt`` to ``output`` (default: :func:`default_path`).

    Returns
    -------
    dict
        ``path, format, model, input, output, n_features, feature_names, input_column,
        max_deviation`` (the largest relative difference to torch in the self-check).

    Raises
    ------
    MissingExtraError
        When the export libraries are missing (the ``[export]`` extra).
    CheckpointError
        When the checkpoint cannot be read, its model cannot be exported to ``fmt``, or the
        written file does not reproduce the torch model.
    """
    import torch

    from megaset.training.checkpoint import load_model

    if fmt not in FORMATS:
        msg = f"unknown export format {fmt!r}; give one of {', '.join(FORMATS)}"
        raise CheckpointError(msg)
    path = Path(output) if output is not None else default_path(checkpoint, fmt)
    model, scaling, meta = load_model(checkpoint)
    module = scoring_module(model, scaling)
    names = list(meta["feature_names"])
    example = torch.from_numpy(_probe_rows(scaling, 64))
    info = {"model": meta["model"], "input_column": meta.get("input_column", "rmm"), "feature_names": names,
            "input": INPUT, "output": OUTPUT, "checkpoint": str(checkpoint)}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run = (_onnx if fmt == "onnx" else _torchscript)(module, example, path, info)
    except (MissingExtraError, CheckpointError):
        raise
    except Exception as err:  # the exporters raise a dozen kinds for an operator they lack
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (f"cannot export model {meta['model']!r} of {str(checkpoint)!r} to {fmt}: {first}; "
               f"try the other format ({', '.join(f for f in FORMATS if f != fmt)})")
        raise CheckpointError(msg) from err
    deviation = _check(module, run, _probe_rows(scaling, 257, seed=1), path)
    return {"path": str(path), "format": fmt, **info, "n_features": len(names), "max_deviation": deviation}


def _probe_rows(scaling: Scaling, n: int, seed: int = 0) -> np.ndarray:
    """Rows spread over the train range of every feature (half of the cells zero, as in RMMs)."""
    rng = np.random.default_rng(seed)
    unit = rng.random((n, len(scaling.offset))) * (rng.random((n, len(scaling.offset))) < 0.5)
    return (scaling.offset + unit / scaling.factor).astype(np.float32)


#: Runs a written model on raw rows.
Runner = Callable[[np.ndarray], np.ndarray]


def _onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, info: dict[str, Any]) -> Runner:
    """Write ``module`` as ONNX; the function that runs the written file."""
    import torch

    try:
        import onnxruntime
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter imports it by itself
    except ImportError as err:
        msg = f"ONNX export needs onnxscript and onnxruntime: {_EXTRA} ({err.name} is not installed)"
        raise MissingExtraError(msg) from None
    # torch.onnx announces at WARNING every torchvision operator it cannot register: noise here.
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                module, (example,), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("events")},), external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
    program.model.metadata_props.update({"megaset": json.dumps(info)})
    # One self-contained file: a model of megaset's sizes is far below protobuf's 2 GB limit.
    program.save(str(path), external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda rows: np.asarray(session.run([OUTPUT], {INPUT: rows})[0])


def _torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, info: dict[str, Any]) -> Runner:
    """Write ``module`` as TorchScript; the function that runs the file read back."""
    import torch

    with warnings.catch_warnings():
        # TorchScript is deprecated in torch; the format is what is asked for here.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example, check_inputs=[(example[:5],)])
        torch.jit.save(traced, str(path), _extra_files={"megaset.json": json.dumps(info)})
        loaded = torch.jit.load(str(path))

    def run(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(rows)).numpy()

    return run


def _check(module: torch.nn.Module, run: Runner, rows: np.ndarray, path: Path) -> float:
    """The largest relative deviation of the written model from ``module`` on ``rows``."""
    import torch

    with torch.no_grad():
        expected = module(torch.from_numpy(rows)).numpy()
    got = np.asarray(run(rows))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=_RTOL, atol=_ATOL):
        worst = (float(np.max(np.abs(got - expected) / (np.abs(expected) + _ATOL)))
                 if got.shape == expected.shape else float("inf"))
        msg = (f"the exported model {str(path)!r} gives other errors than the torch model (shape {got.shape} "
               f"against {expected.shape}, largest relative difference {worst:.3g}); it is left there for "
               "inspection: do not use it, and report the model and format")
        raise CheckpointError(msg)
    return float(np.max(np.abs(got - expected) / (np.abs(expected) + _ATOL)))
