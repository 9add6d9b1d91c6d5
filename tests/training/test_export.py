from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from megaset.errors import CheckpointError
from megaset.storage.store import open_store
from megaset.training.checkpoint import load_model
from megaset.training.export import export_model
from megaset.training.score import score
from megaset.training.trainer import train

#: A dense autoencoder, a VAE (scored on its mean), the CNN (rows read as an image), PCA, Deep SVDD
#: (a distance to its centre), an ensemble (its members' standardised errors) and a flow (its NLL).
MODELS = {
    "ae-shallow": {"epochs": 1},
    "vae-shallow": {"epochs": 1, "architecture": {"kl_weight": 0.1}},
    "cnn": {"epochs": 1, "batch_size": 32, "architecture": {"cnn_channels": [4, 4], "cnn_dense": 16}},
    "pca": {"architecture": {"pca_variance": 0.95}},
    "deep-svdd": {"epochs": 1},
    "ae-ensemble": {"epochs": 1, "architecture": {"ensemble_members": 3}},
    "flow": {"epochs": 1, "architecture": {"flow_layers": 2, "flow_hidden": 16}},
}


@pytest.fixture(scope="module")
def scored_models(tiny_store, tmp_path_factory):
    """``name -> config``: the model trained on the tiny store and scored into a private copy of
    it, on first use."""
    import functools
    import shutil

    root = tmp_path_factory.mktemp("export")
    url = str(root / "store.zarr")
    shutil.copytree(tiny_store.store.url, url)

    @functools.cache
    def trained(name: str):
        settings = MODELS[name]
        arch = {"latent": 4, **settings.get("architecture", {})}
        cfg = tiny_store.replace(store={"url": url}, training={
            "output": str(root / "models"), "model": name, "batch_size": settings.get("batch_size", 64),
            "learning_rate": 1e-2, "epochs": settings.get("epochs", 1), "architecture": arch})
        train(cfg)
        score(cfg)
        return cfg

    return trained


def _chunk(cfg, name: str, group: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The raw rows of a store chunk and the errors `megaset score` wrote for them."""
    values = open_store(cfg.store.url).group(group).read_chunk(0, ("rmm", f"score/{name}"))
    return values["rmm"], values[f"score/{name}"]


def _torch_errors(cfg, name: str, rows: np.ndarray) -> np.ndarray:
    """The errors of the torch model on rows scaled with the checkpoint's scaling, in numpy."""
    model, scaling, _ = load_model(f"{cfg.training.output}/{name}/best.pt")
    with torch.no_grad():
        return model.reconstruction_error(torch.from_numpy(scaling(rows))).numpy()


@pytest.mark.parametrize("name", ["ae-shallow", *(pytest.param(m, marks=pytest.mark.slow) for m in list(MODELS)[1:])])
def test_onnx_export_scores_raw_store_rows_like_torch(scored_models, tmp_path, name):
    import onnx
    import onnxruntime

    cfg = scored_models(name)
    out = export_model(f"{cfg.training.output}/{name}/best.pt", tmp_path / f"{name}.onnx", "onnx")
    rows, stored = _chunk(cfg, name)
    session = onnxruntime.InferenceSession(out["path"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rows"] and [o.name for o in session.get_outputs()] == ["error"]
    got = session.run(None, {"rows": rows})[0]
    assert got.shape == (len(rows),) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_errors(cfg, name, rows), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got, stored, rtol=1e-4, atol=1e-7)
    # Any number of events: one, and a signal group's chunk.
    signal_rows, signal_stored = _chunk(cfg, name, "signal/susy")
    np.testing.assert_allclose(session.run(None, {"rows": signal_rows[:1]})[0], signal_stored[:1], rtol=1e-4)
    meta = json.loads({p.key: p.value for p in onnx.load(out["path"]).metadata_props}["megaset"])
    assert meta["model"] == name and meta["feature_names"] == open_store(cfg.store.url).feature_names


@pytest.mark.parametrize(
    "name", ["ae-shallow", *(pytest.param(m, marks=pytest.mark.slow) for m in ("cnn", "ae-ensemble"))])
def test_torchscript_export_loads_with_torch_jit(scored_models, tmp_path, name):
    cfg = scored_models(name)
    out = export_model(f"{cfg.training.output}/{name}/best.pt", tmp_path / "model.pt", "torchscript")
    rows, stored = _chunk(cfg, name)
    extra = {"megaset.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(out["path"], _extra_files=extra)
    with torch.no_grad():
        got = loaded(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, stored, rtol=1e-5, atol=1e-8)
    assert json.loads(extra["megaset.json"])["input_column"] == "rmm"


def test_cli_export_writes_beside_the_checkpoint(scored_models, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from megaset.cli import app

    cfg = scored_models("ae-shallow")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.resolved()))
    result = CliRunner().invoke(app, ["export", "ae-shallow", "-c", str(path), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    written = f"{cfg.training.output}/ae-shallow/model.onnx"
    assert f"wrote {written} (onnx)" in result.output
    bad = CliRunner().invoke(app, ["export", "ae-shallow", "-c", str(path), "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*train first"):
        export_model(tmp_path / "ae-deep" / "best.pt", fmt="onnx")
