"""Synthetic staging areas written with the real staging API (tests build them directly)."""

from __future__ import annotations

import numpy as np

from megaset.config import CompressorConfig, Config
from megaset.storage.staging import finish_staging, init_staging, piece_key, write_piece

CHANNELS = [
    {"id": 0, "name": "zjets", "signal": False, "data": False},
    {"id": 1, "name": "ttbar", "signal": False, "data": False},
    {"id": 2, "name": "diboson", "signal": False, "data": False},
    {"id": 3, "name": "susy", "signal": True, "data": False},
    {"id": 4, "name": "data15", "signal": False, "data": True},
]
#: Rows per staging piece, per channel: uneven, one empty piece, some longer than a staging block.
PIECES = {"zjets": [700, 1300, 0, 450], "ttbar": [300, 260], "diboson": [90], "susy": [500, 240], "data15": [333]}
N_FEATURES = 9
AUX_FLOAT = ("met", "met_phi", "m_ll", "m_lll", "ht")
AUX_INT = ("n_jets", "n_light_jets", "n_b_jets", "n_electrons", "n_muons")


def piece_columns(rng: np.random.Generator, n: int, channel_id: int, file_index: int, first_entry: int,
                  n_features: int) -> dict[str, np.ndarray]:
    """Plausible staged columns: sparse RMM rows (about 80 % zeros), weights, ids, aux."""
    rmm = rng.exponential(50.0, size=(n, n_features)).astype(np.float32)
    rmm[rng.random((n, n_features)) < 0.8] = 0.0
    entry = first_entry + np.arange(n)
    cols = {
        "rmm": rmm,
        "weight": rng.normal(1.0, 0.3, n).astype(np.float32),
        "channel": np.full(n, channel_id, dtype=np.int16),
        "event_id": np.stack([np.full(n, 284500), 1000 * file_index + entry, np.full(n, file_index), entry],
                             axis=1).astype(np.int64),
    }
    for name in AUX_FLOAT:
        cols[name] = rng.exponential(40.0, n).astype(np.float32) if name != "m_lll" else np.zeros(n, np.float32)
    for name in AUX_INT:
        cols[name] = rng.integers(0, 6, n).astype(np.int16)
    return cols


def make_staging(url: str, pieces: dict[str, list[int]] = PIECES, *, n_features: int = N_FEATURES,
                 skipped: tuple[str, ...] = (), channels: list[dict] = CHANNELS, seed: int = 0,
                 finish: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Write a staging area; returns every staged column per channel (skipped files included)."""
    from scipy.sparse import csr_array

    rng = np.random.default_rng(seed)
    features = [f"f{i}" for i in range(n_features)]
    init_staging(url, [c["name"] for c in channels], {
        "schema_version": 2, "feature_names": features, "rmm": {"objects": "synthetic"},
        "channels": channels, "config": {"note": "synthetic"}, "code_version": "test",
    })
    staged, files = {}, []
    for c in channels:
        parts = []
        for p, n in enumerate(pieces.get(c["name"], [])):
            index = len(files)
            path = f"/data/{c['name']}_{p}.root"
            files.append({"index": index, "channel": c["name"], "path": path, "size": 1000 + index,
                          "checksum": f"adler32:{index:08x}", "entries": 2 * n})
            cols = piece_columns(rng, n, c["id"], index, 0, n_features)
            # staged sparse, as the ingest stages the RMM
            key = piece_key(f"uuid{index:03d}", 0, 2 * n)
            write_piece(url, c["name"], key, {**cols, "rmm": csr_array(cols["rmm"])}, {
                "filename": path, "file_index": index, "fileuuid": f"uuid{index:03d}", "entrystart": 0,
                "entrystop": 2 * n, "n_read": 2 * n, "cutflow": [["all", 2 * n, 2.0 * n], ["2lep", n, float(n)]],
            }, CompressorConfig(codec="blosc-lz4", level=5))
            parts.append(cols)
        if parts:
            staged[c["name"]] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if finish:
        finish_staging(url, {
            "files": [f for f in files if f["path"] not in skipped],
            "skipped": [{"file": f, "reason": "unreadable basket"} for f in skipped],
            "cutflow": {c["name"]: [["all", 1, 1.0]] for c in channels},
        })
    return staged


def make_config(tmp_path, url: str | None = None, **store) -> Config:
    """A config whose store and staging live under ``tmp_path`` (store settings overridable)."""
    return Config.model_validate({"store": {
        "url": url or str(tmp_path / "store.zarr"), "staging_url": str(tmp_path / "staging.zarr"),
        "chunk_len": 256, **store,
    }})


def event_keys(event_id: np.ndarray) -> np.ndarray:
    """(file_index, entry) packed into one integer per event, for set comparisons."""
    return event_id[:, 2] * 1_000_000 + event_id[:, 3]
