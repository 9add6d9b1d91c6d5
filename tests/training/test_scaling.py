from __future__ import annotations

import numpy as np
import pytest
import torch

from megaset.errors import StoreError
from megaset.training.scaling import Scaling

SCALER = {
    "min": np.array([0.0, 10.0, 3.0]),
    "max": np.array([200.0, 30.0, 3.0]),
    "mean": np.array([50.0, 20.0, 3.0]),
    "std": np.array([25.0, 4.0, 0.0]),
}
X = np.array([[100.0, 15.0, 3.0], [0.0, 30.0, 7.0]], dtype=np.float32)


def test_minmax_maps_the_train_range_onto_unit_interval():
    out = Scaling.from_scaler(SCALER, "minmax")(X)
    # (x - min) / (max - min); the constant third feature keeps unit scale: x - 3.
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.5, 0.25, 0.0], [0.0, 1.0, 4.0]])


def test_standard_uses_mean_and_std():
    out = Scaling.from_scaler(SCALER, "standard")(X)
    np.testing.assert_allclose(out, [[2.0, -1.25, 0.0], [-2.0, 2.5, 4.0]])


def test_missing_statistics_name_the_keys():
    with pytest.raises(StoreError, match=r"lack max needed by training.scaling='minmax' \(present: mean, min, std\)"):
        Scaling.from_scaler({k: v for k, v in SCALER.items() if k != "max"}, "minmax")


def test_state_dict_round_trip_through_torch_load(tmp_path):
    scaling = Scaling.from_scaler(SCALER, "standard")
    torch.save(scaling.state_dict(), tmp_path / "s.pt")
    back = Scaling.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back.kind == "standard"
    np.testing.assert_array_equal(back(X), scaling(X))


@pytest.mark.parametrize("kind", ["minmax", "standard"])
def test_scaling_a_tensor_in_place_gives_the_numpy_bits(kind):
    scaling = Scaling.from_scaler(SCALER, kind)
    x = torch.from_numpy(np.asarray(X, dtype=np.float32).copy())
    out = scaling.on("cpu")(x)
    assert out.data_ptr() == x.data_ptr()
    np.testing.assert_array_equal(out.numpy(), scaling(np.asarray(X, dtype=np.float32)))


@pytest.mark.parametrize("kind", ["minmax", "standard"])
def test_scaling_single_cells_gives_the_bits_of_their_scaled_rows(kind):
    scaling = Scaling.from_scaler(SCALER, kind)
    rows, columns = np.nonzero(X)
    np.testing.assert_array_equal(scaling.cells(X[rows, columns], columns), scaling(X)[rows, columns])
