from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megaset.config import ArchitectureConfig
from megaset.errors import CheckpointError
from megaset.training.checkpoint import load_checkpoint, load_model, rng_state, save_checkpoint, set_rng_state
from megaset.training.registry import build_model, resolve_architecture
from megaset.training.scaling import Scaling


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_load_model_rebuilds_the_model_without_the_config(tmp_path):
    torch.manual_seed(0)
    arch = resolve_architecture("ae-deep", 16, ArchitectureConfig(latent=3, hidden=[8], activations=["tanh"] * 4))
    model = build_model("ae-deep", 16, arch)
    scaling = Scaling("minmax", np.zeros(16, np.float32), np.full(16, 0.5, np.float32))
    save_checkpoint(tmp_path / "best.pt", {
        "model": "ae-deep", "architecture": arch, "feature_names": [f"f{i}" for i in range(16)],
        "state": model.state_dict(), "scaling": scaling.state_dict(), "history": [{"epoch": 1}],
    })
    loaded, loaded_scaling, meta = load_model(tmp_path / "best.pt")
    x = torch.rand(4, 16)
    assert not loaded.training
    assert torch.equal(loaded.reconstruction_error(x), model.eval().reconstruction_error(x))
    assert loaded_scaling.kind == "minmax" and meta["history"] == [{"epoch": 1}]


def _saved_model(tmp_path):
    torch.manual_seed(0)
    arch = resolve_architecture("ae-shallow", 16, ArchitectureConfig(latent=3))
    model = build_model("ae-shallow", 16, arch).eval()
    scaling = Scaling("minmax", np.linspace(0, 1, 16, dtype=np.float32), np.full(16, 0.5, np.float32))
    save_checkpoint(tmp_path / "best.pt", {
        "model": "ae-shallow", "architecture": arch, "feature_names": [f"f{i}" for i in range(16)],
        "state": model.state_dict(), "scaling": scaling.state_dict(),
    })
    return model, scaling


def _load_on(tmp_path, device):
    """Load with ``map_location=device`` and score a batch there; the model moved, the scaling on the host."""
    model, scaling = _saved_model(tmp_path)
    loaded, loaded_scaling, _ = load_model(tmp_path / "best.pt", map_location=device)
    assert {p.device.type for p in loaded.parameters()} == {torch.device(device).type}
    assert isinstance(loaded_scaling.offset, np.ndarray) and isinstance(loaded_scaling.factor, np.ndarray)
    np.testing.assert_array_equal(loaded_scaling.offset, scaling.offset)
    raw = np.random.default_rng(1).random((32, 16), dtype=np.float32) * 3
    with torch.no_grad():
        on_device = loaded.reconstruction_error(loaded_scaling.on(device)(torch.from_numpy(raw.copy()).to(device)))
        expected = model.reconstruction_error(torch.from_numpy(scaling(raw)))
    torch.testing.assert_close(on_device.cpu(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_load_model_with_a_map_location_moves_the_model_and_keeps_the_scaling_on_the_host(tmp_path, device):
    _load_on(tmp_path, device)


@pytest.mark.gpu
def test_load_model_onto_cuda_scores_there(tmp_path):
    # Reading the checkpoint straight onto the GPU made Scaling.from_state_dict fail with
    # "can't convert cuda:0 device type tensor to numpy".
    _load_on(tmp_path, "cuda")


def test_scaling_comes_back_from_tensors_on_any_device_or_with_grad():
    offset = torch.arange(4, dtype=torch.float32, requires_grad=True)
    back = Scaling.from_state_dict({"kind": "minmax", "offset": offset, "factor": torch.ones(4)})
    np.testing.assert_array_equal(back.offset, np.arange(4, dtype=np.float32))


class _Callable:
    """Unpickles into a call of ``print``: what a malicious checkpoint would smuggle in."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_checkpoint_holding_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "state": _Callable()}, path)
    with pytest.raises(CheckpointError,
                       match=r"evil.pt.*weights_only=True\): Unsupported global: GLOBAL print .*never loads"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing.pt.*training.output"):
        load_checkpoint(tmp_path / "nothing.pt")
    torch.save({"format": 0}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"found format 0 instead of 1"):
        load_checkpoint(tmp_path / "old.pt")


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path / "m" / "last.pt", {"x": torch.ones(2)})
    save_checkpoint(tmp_path / "m" / "last.pt", {"x": torch.zeros(2)})
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["last.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "m" / "last.pt")["x"], torch.zeros(2))
