"""Tiny real stores for the training tests: staged with the staging API, mixed by ``mix``.

The features are a 4 x 4 "RMM" (16 cells, so the CNN can read it as an image) with the
structure of real ones: each background channel fills its own subset of cells from two latent
factors (a low-rank signal an autoencoder can learn), the other cells are zero, energies are
in GeV; weights are cross-section-like, a few of them negative.
"""

from __future__ import annotations

import numpy as np
import pytest

from megaset.config import CompressorConfig, Config
from megaset.storage.staging import finish_staging, init_staging, piece_key, write_piece

SIDE = 4
N_FEATURES = SIDE * SIDE
CHANNELS = [
    {"id": 0, "name": "zjets", "signal": False, "data": False},
    {"id": 1, "name": "ttbar", "signal": False, "data": False},
    {"id": 2, "name": "diboson", "signal": False, "data": False},
    {"id": 3, "name": "susy", "signal": True, "data": False},
]
#: Events per channel; with chunk_len 64 the train group has 12 chunks, val and test 4 each.
EVENTS = {"zjets": 640, "ttbar": 384, "diboson": 256, "susy": 128}


def _events(rng: np.random.Generator, channel_id: int, n: int) -> np.ndarray:
    cells = np.random.default_rng(100 + channel_id).random(N_FEATURES) < 0.6
    mixing = np.random.default_rng(200 + channel_id).normal(size=(2, N_FEATURES))
    z = rng.normal(size=(n, 2))
    x = np.log1p(np.exp(z @ mixing + 1.0)) * 40.0 * cells
    return (x + rng.normal(0, 1.0, size=x.shape) * cells).clip(0).astype(np.float32)


def make_store(tmp_path, *, chunk_len: int = 64, seed: int = 0, form: str = "dense", **training) -> Config:
    """Stage and mix a small store under ``tmp_path`` (its RMM column in ``form``); returns a
    config pointing at it."""
    from megaset.storage.mix import mix

    cfg = Config.model_validate({
        "store": {"url": str(tmp_path / "store.zarr"), "staging_url": str(tmp_path / "staging.zarr"),
                  "chunk_len": chunk_len, "seed": seed, "form": form},
        "training": {"output": str(tmp_path / "models"), **training},
    })
    rng = np.random.default_rng(seed)
    url = cfg.store.staging
    init_staging(url, [c["name"] for c in CHANNELS], {
        "schema_version": 2, "feature_names": [f"cell_{i}_{j}" for i in range(SIDE) for j in range(SIDE)],
        "rmm": {"objects": "synthetic"}, "channels": CHANNELS, "config": {"note": "synthetic"},
        "code_version": "test",
    })
    files = []
    for c in CHANNELS:
        n = EVENTS[c["name"]]
        weight = rng.lognormal(0.0, 0.5, n).astype(np.float32) * (1 + c["id"])
        weight[rng.random(n) < 0.05] *= -1
        entry = np.arange(n)
        cols = {
            "rmm": _events(rng, c["id"], n),
            "weight": weight,
            "channel": np.full(n, c["id"], dtype=np.int16),
            "event_id": np.stack([np.full(n, 284500), entry, np.full(n, c["id"]), entry], axis=1).astype(np.int64),
        }
        write_piece(url, c["name"], piece_key(f"uuid{c['id']}", 0, n), cols, {
            "filename": f"/data/{c['name']}.root", "file_index": c["id"], "fileuuid": f"uuid{c['id']}",
            "entrystart": 0, "entrystop": n, "n_read": n, "cutflow": [["all", n, float(n)]],
        }, CompressorConfig(codec="zstd", level=1))
        files.append({"index": c["id"], "channel": c["name"], "path": f"/data/{c['name']}.root",
                      "size": 1, "checksum": "adler32:0", "entries": n})
    finish_staging(url, {"files": files, "skipped": [],
                         "cutflow": {c["name"]: [["all", 1, 1.0]] for c in CHANNELS}})
    mix(cfg, None)
    return cfg


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Config:
    """One store shared by the tests that only read it (each writes its models elsewhere)."""
    return make_store(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests share a small machine with other processes: spinning intra-op threads cost 10x."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def csr_store(tmp_path_factory) -> Config:
    """The tiny store's events mixed with ``store.form: csr`` (the RMM kept as its cells)."""
    return make_store(tmp_path_factory.mktemp("csr"), form="csr")


@pytest.fixture(scope="session")
def one_chunk_store(tmp_path_factory) -> Config:
    """The tiny store's events in chunks of 1024: its train group (768 events) is one chunk."""
    return make_store(tmp_path_factory.mktemp("one-chunk"), chunk_len=1024)


@pytest.fixture(scope="module")
def private_store(tiny_store, tmp_path_factory) -> Config:
    """A copy of the tiny store that a test module may score into (``training.output`` inside it)."""
    import shutil

    root = tmp_path_factory.mktemp("private")
    shutil.copytree(tiny_store.store.url, root / "store.zarr")
    return tiny_store.replace(store={"url": str(root / "store.zarr")}, training={"output": str(root / "models")})
