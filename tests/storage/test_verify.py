from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from megaset.errors import StoreError
from megaset.storage.quotas import chunk_quotas
from megaset.storage.store import open_store
from megaset.storage.verify import verify


@pytest.fixture
def url(mixed_store, tmp_path):
    """A private copy of the mixed store, to tamper with."""
    copy = str(tmp_path / "store.zarr")
    shutil.copytree(mixed_store[0].store.url, copy)
    return copy


def column(url: str, path: str):
    return zarr.open_array(f"{url}/{path}", mode="r+")


def test_clean_store_passes(mixed_store):
    assert verify(mixed_store[0].store.url) == []


def test_missing_store_raises(tmp_path):
    with pytest.raises(StoreError, match="no megaset store at"):
        verify(str(tmp_path / "none.zarr"))


def test_incomplete_store_is_one_problem(url):
    zarr.open_group(url, mode="r+").attrs["complete"] = False
    assert verify(url) == [f"store {url!r} is incomplete: run `megaset mix` to finish it"]


def test_tampered_chunk_mixture_is_found(url):
    # Swap a whole zjets row of chunk 0 with a whole ttbar row of chunk 1: every event is still
    # there once, the group counts are unchanged, only the two chunks' mixtures break.
    group = zarr.open_group(f"{url}/train", mode="r+")
    channel = group["channel"][:]
    a = int(np.flatnonzero(channel[:256] == 0)[0])
    b = 256 + int(np.flatnonzero(channel[256:512] == 1)[0])
    for _, array in group.arrays():
        values = array[:]
        values[[a, b]] = values[[b, a]]
        array[:] = values
    quotas = chunk_quotas(open_store(url).group("train").attrs["counts"], 256)
    (z0, t0, d0), (z1, t1, d1) = quotas[0].tolist(), quotas[1].tolist()
    assert verify(url) == [
        (f"train chunk 0: mixture {{zjets={z0 - 1}, ttbar={t0 + 1}, diboson={d0}}} "
         f"differs from its quota {{zjets={z0}, ttbar={t0}, diboson={d0}}}"),
        (f"train chunk 1: mixture {{zjets={z1 + 1}, ttbar={t1 - 1}, diboson={d1}}} "
         f"differs from its quota {{zjets={z1}, ttbar={t1}, diboson={d1}}}"),
    ]


def test_duplicated_event_is_found(url):
    original = column(url, "train/event_id")[10]
    column(url, "data/event_id")[3] = original
    problems = verify(url)
    run, event, file_index, entry = original.tolist()
    assert problems == [
        (f"event (run {run}, event {event}, file {file_index}, entry {entry}) appears 2 times: "
         "train chunk 0, data chunk 0")
    ]


@pytest.mark.parametrize(("path", "row", "value", "expected"), [
    ("val/rmm", (300, 4), np.nan, "val chunk 1: 1 NaN/inf values in rmm"),
    ("test/weight", 5, np.inf, "test chunk 0: 1 NaN/inf values in weight"),
    ("signal/susy/met", 600, -np.inf, "signal/susy chunk 2: 1 NaN/inf values in met"),
])
def test_non_finite_values_are_found(url, path, row, value, expected):
    column(url, path)[row] = value
    problems = verify(url)
    assert expected in problems
    # A changed weight also no longer adds up to the recorded sum; nothing else is reported.
    assert all(p == expected or "weights of" in p for p in problems)


def test_changed_counts_metadata_is_found(url):
    group = zarr.open_group(f"{url}/val", mode="r+")
    group.attrs["counts"] = [489, 113, 18]
    problems = verify(url)
    assert "val: zjets has 489 events in the group metadata but 490 in the store's channel table" in problems
    assert any(p.startswith("val chunk 0: mixture") for p in problems)


def test_scores_must_be_aligned_and_finite(url, monkeypatch):
    import megaset.storage.store as store_module

    test = open_store(url).group("test")
    test.create_column("score/ae", "f4")
    test.write_chunks("score/ae", range(test.n_chunks), np.full(test.n_events, 0.5))
    assert verify(url) == []
    # An unwritten chunk reads as NaN (here the column's second chunk, the group's chunk 2).
    monkeypatch.setattr(store_module, "ADDED_CHUNK_EVENTS", 512)
    test.create_column("score/vae", "f4")
    test.write_chunks("score/vae", range(2), np.zeros(512))
    assert verify(url) == [
        "test chunk 2: 108 NaN/inf values in score/vae (unwritten score chunk? rerun `megaset score`)",
    ]
    # A column chunked unlike its group.
    zarr.open_group(f"{url}/test", mode="r+").create_array("score/vae", shape=(620,), chunks=(100,), dtype="f4",
                                                          fill_value=0.0, overwrite=True)
    assert verify(url) == [
        ("test/score/vae: 620 rows in chunks of 100, the group has 620 events in chunks of 256 "
         "(rerun the scoring with overwrite)")
    ]


def flip_byte(path) -> None:
    """Damage one stored chunk file as a disk or a copy would: one byte inverted in its middle."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_a_chunk_is_named_at_read_and_by_verify(url):
    from pathlib import Path

    from megaset.errors import DamagedChunkError

    rmm = Path(url) / "train" / "rmm" / "c" / "1" / "0"
    weight = Path(url) / "train" / "weight" / "c" / "3"
    flip_byte(rmm)
    flip_byte(weight)
    group = open_store(url).group("train")
    group.read_chunk(0)  # an intact chunk reads as before
    with pytest.raises(DamagedChunkError, match=rf"group 'train' of store '{url}': damaged chunk "
                                                rf"file://{rmm}: the bytes stored no longer match their crc32c "
                                                r"checksum .*run `megaset verify`"):
        group.read_chunk(1)
    assert verify(url) == [
        f"train chunk 1: damaged chunk file://{rmm} (crc32c checksum mismatch)",
        f"train chunk 3: damaged chunk file://{weight} (crc32c checksum mismatch)",
    ]
